"""The task cache of one run: which outputs may be reused, under which key, and the lookups.

A key hashes the plugin (name, package, version), the task's ``uses``, its ``cache.key``,
the rendered ``with:`` as canonical JSON, the task's ``validate:`` rules as written (an
output stored under other rules is not reused) and, for tasks with ``inputs:``, the
digest of the files those globs match (docs/watch.md). A hit is checked again against
the rules that depend on the run (``expr`` over ``vars``, say) before it is reused: see
``OutputChecks._cached_output_holds``. Tasks whose ``with:`` is constant are keyed
once and looked up together in one batched read when the run opens; the others look up
their key when they run. The recorder never stores an output that holds a secret.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from goatclaw.engine.inputs import InputGlobs
from goatclaw.engine.recorder import Recorder
from goatclaw.errors import TemplateError
from goatclaw.jsontext import plain
from goatclaw.registry import Plugin
from goatclaw.spec.model import Task
from goatclaw.template import Compiled

__all__ = ["TaskCache", "may_cache"]


def may_cache(task: Task, plugin: Plugin) -> bool:
    """Whether ``task``'s outputs may be reused at all (``cache: false`` and ``--no-cache`` aside).

    A pure plugin's may; any other's only when the task asks (``cache: true``) and names the
    files its result follows (``inputs:``), whose contents then join the key (docs/watch.md).
    """
    return plugin.spec.cacheable or (task.cache.requested and bool(task.inputs))


class TaskCache:
    """Keys, the prefetched batch and lookups of one run's task cache (the rows live in the store)."""

    def __init__(self, recorder: Recorder, workspace: Path) -> None:
        self.recorder = recorder
        self.workspace = workspace
        self.keys: dict[str, str] = {}  # task id -> key, for tasks whose inputs are constant
        self.prefetched: dict[str, tuple[str, float]] = {}  # their cached (output JSON, created_at)
        self.digests: dict[str, str] = {}  # task id -> digest of the files its inputs: globs match
        self.rules: dict[str, str] = {}  # task id -> its validate: rules as canonical JSON

    def prefetch(self, constant: Iterable[tuple[Task, Plugin, Compiled]], context: Mapping[str, Any]) -> None:
        """Key tasks whose ``with:`` is constant and read their cached outputs in one query."""
        for task, plugin, compiled in constant:
            self.key(task, plugin, compiled, context, None)
        self.prefetched = self.recorder.cached_many(list(self.keys.values()))

    def key(self, task: Task, plugin: Plugin, compiled: Compiled, context: Mapping[str, Any],
            index: int | None) -> str | None:
        """The key of one call of ``task`` (an item of a fan-out with ``index``).

        Inputs that do not render or encode give no key (the attempt reports the problem).
        A task whose ``with:`` is constant is hashed once per run.
        """
        constant = compiled.is_constant and index is None
        if constant and task.id in self.keys:
            return self.keys[task.id]
        try:
            kwargs = key_text(compiled.render(context))
        except (TemplateError, TypeError, ValueError):
            return None
        raw = f"{plugin.name}\0{plugin.package}\0{plugin.version}\0{task.uses}\0{task.cache.key}\0{kwargs}"
        if task.validate:
            raw += "\0" + self._rules(task)
        if task.inputs:
            raw += "\0" + self._digest(task)
        key = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()  # a lone surrogate too
        if constant:
            self.keys[task.id] = key
        return key

    def lookup(self, task: Task, key: str) -> str | None:
        """A cached output's JSON for ``key`` (younger than the task's ``cache.ttl``), else ``None``."""
        if self.keys.get(task.id) != key:
            return self.recorder.cached(key, task.cache.ttl)
        hit = self.prefetched.get(key)
        if hit is None or (task.cache.ttl is not None and hit[1] < time.time() - task.cache.ttl):
            return None
        return hit[0]

    def put(self, key: str, plugin: Plugin, output_json: str) -> None:
        """Keep an output under its key (committed with the task's row)."""
        self.recorder.cache_put(key, plugin.name, output_json)

    def _rules(self, task: Task) -> str:
        """``task``'s ``validate:`` rules (kind, argument, message, severity, options) as key text, once a run."""
        text = self.rules.get(task.id)
        if text is None:
            text = self.rules[task.id] = key_text([[r.kind, r.arg, r.message, r.severity, dict(r.options)]
                                                    for r in task.validate])
        return text

    def _digest(self, task: Task) -> str:
        """The digest of the files ``task``'s ``inputs:`` globs match (paths and contents), read once a run."""
        if task.id not in self.digests:
            self.digests[task.id] = InputGlobs(task.inputs, self.workspace).digest()
        return self.digests[task.id]


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=plain)


def key_text(value: Any) -> str:
    """``value`` as canonical JSON text (keys sorted) for a cache key: orjson, else the stdlib.

    What orjson refuses (non-string keys, integers over 64 bits) is encoded by the
    stdlib; a given value always takes the same way, so its key is stable.
    """
    try:
        return orjson.dumps(value, default=plain, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return _KEY_ENCODER.encode(value)
