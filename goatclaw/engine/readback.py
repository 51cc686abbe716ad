"""Untrusted data that comes back: files an untrusted flow wrote, memories stored from it.

The static analysis (:mod:`goatclaw.security.taint`) sees what templates read; it cannot
see that ``save`` (a ``file.write`` of an ``http`` output) and ``load`` (a ``file.read``
of the same path, maybe in a later run) are one flow. This module closes that gap:

* every file a task writes (the ``file.written`` audit detail: path and sha256) is
  recorded in the store with the untrusted origins the task's inputs carried (``[]`` for a
  clean write; an append keeps the origins the file had), and the task itself when the
  detail says ``from_output`` (the content is the task's own output: the ``code`` task's
  files are its model's answer);
* a plugin reading a file says so (``ctx.read_back``); the output of that task then carries
  the origins of the file's last recorded write, and when the file changed since (copied
  over, edited by a shell task) those of every untrusted write of the same content too;
* a plugin can say outright that its output is untrusted (``ctx.untrusted``: the
  ``memory`` task for a search hit stored from untrusted data).

What a finished task carries at run time is kept as a ``task.untrusted`` event, so a
resumed run knows it for the tasks it does not run again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from goatclaw.plugin import AUDIT_PREFIX, READ_BACK, UNTRUSTED
from goatclaw.security.taint import RuntimeTaint
from goatclaw.store import Store

__all__ = ["UNTRUSTED_EVENT", "ReadBack"]

#: The stored event that says what a finished task's output carries at run time.
UNTRUSTED_EVENT = "task.untrusted"
_WRITTEN = AUDIT_PREFIX + "file.written"


class ReadBack:
    """The run's bookkeeping of files written and read back (see the module docstring)."""

    def __init__(self, runtime: RuntimeTaint, workspace: Path, store: Store | None, run_id: str,
                 carried: Callable[[str], frozenset[str]],
                 record: Callable[[list[tuple[Any, ...]]], None] | None = None) -> None:
        self.runtime = runtime
        self.workspace = Path(workspace).resolve()
        self.store = store  # read: what earlier runs wrote
        self.run_id = run_id
        self.record = record  # where this run's writes go (the recorder: committed with the task's row)
        self.carried = carried  # task id -> what its inputs carry (static and run-time)
        self._lock = threading.Lock()  # plugins running in threads report through here
        self._reads: dict[str, list[tuple[str, str]]] = {}
        self._writes: dict[str, list[tuple[str, str | None, str, bool]]] = {}
        self._files: dict[str, tuple[str | None, frozenset[str]]] = {}  # this run's writes: path -> (sha, origins)
        #: Whether a task reported a read or a write yet (most runs' tasks never do: then nothing is ever settled).
        self.heard_any = False

    def heard(self, topic: str, data: dict[str, Any]) -> None:
        """A task's event (from its plugin, maybe in a thread): note reads, writes and untrusted outputs."""
        task = data.get("task")
        if not isinstance(task, str):
            return
        if topic == READ_BACK:
            self.heard_any = True
            with self._lock:
                self._reads.setdefault(task, []).append((str(data.get("path")), str(data.get("sha256"))))
        elif topic == _WRITTEN and isinstance(data.get("path"), str):
            sha = data.get("sha256") if data.get("mode", "overwrite") == "overwrite" else None
            self.heard_any = True
            with self._lock:
                self._writes.setdefault(task, []).append((self._real(data["path"]), sha, str(data.get("mode")),
                                                          bool(data.get("from_output"))))
        elif topic == UNTRUSTED:
            with self._lock:  # items of a fan-out mark the same task from several threads
                self.runtime.mark(task, data.get("origins") or (), str(data.get("how") or ""))

    def quiet(self, task_id: str) -> bool:
        """Whether :meth:`settle` has nothing to do for ``task_id`` (no reads, writes or marks: most tasks).

        Read without the lock: the task's own reports came before it finished, and other
        tasks' only ever add entries of their own.
        """
        return task_id not in self._reads and task_id not in self._writes and not self.runtime

    def settle(self, task_id: str, also: Iterable[str] = ()) -> frozenset[str]:
        """``task_id`` finished: record its writes, resolve its reads; what its output carries at run time."""
        with self._lock:
            reads = self._reads.pop(task_id, [])
            writes = self._writes.pop(task_id, [])
        for path, sha in reads:
            found = self._lookup(path, sha)
            if found is not None and found[0]:
                origins, unchanged = found
                how = f"read back from {self._shown(path)}, which " + (
                    "an untrusted flow wrote" if unchanged else "holds what an untrusted flow wrote")
                with self._lock:
                    self.runtime.mark(task_id, origins, how)
        if writes:
            self._record(task_id, writes)
        return self.runtime.settle(task_id, also)

    def restore(self, stored: dict[str, tuple[list[str], str]], tasks: Iterable[str]) -> None:
        """A resumed run: what the tasks it keeps carried when they ran (their ``task.untrusted`` events)."""
        for tid in tasks:
            if tid in stored:
                origins, how = stored[tid]
                self.runtime.mark(tid, origins, how)
            self.runtime.settle(tid)

    # -- files -----------------------------------------------------------------------

    def _record(self, task_id: str, writes: list[tuple[str, str | None, str, bool]]) -> None:
        carried = self.carried(task_id)
        rows = []
        now = time.time()
        for path, sha, mode, from_output in writes:
            origins = carried | {task_id} if from_output else carried  # the task's own output: it is the origin
            if mode == "append":  # what the file held before stays in it
                before = self._lookup(path, "")
                origins = origins | (before[0] if before is not None else frozenset())
            self._files[path] = (sha, origins)
            rows.append((path, sha, json.dumps(sorted(origins)), self.run_id, task_id, now))
        if self.record is not None:
            self.record(rows)
        elif self.store is not None:
            self.store.record_file_origins(rows)

    def _lookup(self, path: str, sha: str) -> tuple[frozenset[str], bool] | None:
        """The origins of a file's content (and whether it is unchanged since goatclaw wrote it)."""
        mine = self._files.get(path)
        if mine is not None and mine[0] == sha:
            return mine[1], True
        stored = self.store.file_origins(path, sha) if self.store is not None else None
        if mine is None:
            return stored
        same = frozenset().union(*(o for s, o in self._files.values() if s == sha))
        return mine[1] | same | (stored[0] if stored is not None else frozenset()), False

    def _real(self, path: str) -> str:
        """A ``file.written`` path (workspace-relative, already resolved) as the real path."""
        given = Path(path)
        return str(given if given.is_absolute() else self.workspace / given)

    def _shown(self, path: str) -> str:
        real = Path(path)
        return real.relative_to(self.workspace).as_posix() if real.is_relative_to(self.workspace) else path
