"""Watch mode: run pipelines again whenever the files they follow change (``goatclaw watch``).

::

    stop = asyncio.Event()
    bus = goatclaw.Bus()
    bus.subscribe("watch.*", lambda ev: print(ev.topic, ev.data))
    summary = await goatclaw.watch("pipelines/x.yaml", bus=bus, stop=stop)   # until stop.set()

A pipeline follows its own file, the project file (``goatclaw.yaml``), the files its tasks'
``inputs:`` globs match, and the constant ``path`` of its ``file.read`` tasks. The loader has
no includes, so there is nothing else to follow. Saves are grouped (``debounce``: the quiet
time after the last change), and a pipeline runs again only when the contents of what it
follows differ from when its last run started: a save that changes nothing, or a task
rewriting a followed file with the same bytes, runs nothing.

Each run is an ordinary run (recorded in the store, events on ``bus``), so the task cache
decides what runs: a task whose definition, rendered inputs or ``inputs:`` files changed
runs again, the others end ``cached`` (see docs/watch.md).

An invalid pipeline is reported (``watch.invalid`` with the located problems) and the
watcher waits for the next save. A change while a run is in flight cancels that run (it is
recorded as cancelled) and starts it again; with ``once_per_change`` the run finishes and
the changes that came meanwhile give one more run after it. Setting ``stop`` cancels the
run in flight (recorded as cancelled) and returns.

Events, published on ``bus`` with an empty run id: ``watch.ready`` (watching; the
pipelines, files and folders), ``watch.changed`` (what changed and the pipelines it
concerns), ``watch.invalid``, ``watch.run`` (a run is about to start: its id and why),
``watch.finished`` (its status, the tasks that ran and those from the cache, the
:class:`RunResult`), ``watch.error`` (the run could not start) and ``watch.stopped``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goatclaw import api
from goatclaw.engine.inputs import InputGlobs, file_digest
from goatclaw.engine.runner import new_run_id
from goatclaw.engine.state import RunResult, RunStatus, TaskState
from goatclaw.errors import GoatclawError
from goatclaw.events import Bus, Event
from goatclaw.spec.model import Pipeline
from goatclaw.spec.project import PROJECT_FILE, find_project_file

__all__ = ["WatchSummary", "Watcher", "pipelines_in", "watch"]

#: A steady stream of changes still gives a batch this often (watchfiles' ``debounce``), in seconds.
MAX_BATCH = 1.6
_SUFFIXES = (".yaml", ".yml")
log = logging.getLogger("goatclaw.watch")


@dataclass
class WatchSummary:
    """How a watch session went: its runs (oldest first) and whether stopping cancelled one."""

    runs: list[RunResult] = field(default_factory=list)
    cancelled: str | None = None  # the id of the run that stopping cancelled, if one was in flight

    @property
    def last(self) -> RunResult | None:
        """The last run that finished (not the one stopping cancelled)."""
        return self.runs[-1] if self.runs else None


async def watch(target: str | os.PathLike[str], *, bus: Bus | None = None, stop: asyncio.Event | None = None,
                debounce: float = 0.05, once_per_change: bool = False, force_polling: bool | None = None,
                **run_options: Any) -> WatchSummary:
    """Watch ``target`` (a pipeline file, or a folder of them) and run it on every change until ``stop`` is set.

    ``debounce`` is the quiet time in seconds that ends a batch of changes; ``run_options``
    go to :func:`goatclaw.arun` for every run (``vars``, ``store``, ``concurrency``,
    ``only``, ``cache``, ``llm`` …). See the module docstring for the events on ``bus``.
    """
    watcher = Watcher(target, bus=bus, debounce=debounce, once_per_change=once_per_change,
                      force_polling=force_polling, run_options=run_options)
    return await watcher.run(stop or asyncio.Event())


def pipelines_in(folder: Path) -> list[Path]:
    """The pipeline files directly in ``folder``: YAML files, not the project file nor ``*.test.yaml``."""
    return sorted(p.resolve() for p in folder.iterdir()
                  if p.suffix in _SUFFIXES and p.is_file() and p.name not in (PROJECT_FILE, "goatclaw.yml")
                  and not p.name.endswith((".test.yaml", ".test.yml")))


@dataclass
class _Followed:
    """What one pipeline follows, and the contents of those files when its last run started."""

    file: Path
    root: Path
    exact: set[Path] = field(default_factory=set)
    globs: InputGlobs | None = None
    fingerprint: dict[Path, bytes] | None = None  # followed file -> digest of its contents

    def patterns(self) -> list[str]:
        return [g.pattern for g in self.globs.globs] if self.globs is not None else []

    def concerns(self, path: Path) -> bool:
        return path in self.exact or (self.globs is not None and self.globs.matches(path))

    def folders(self) -> set[Path]:
        found = {p.parent for p in self.exact} | {self.root}
        if self.globs is not None:
            found |= self.globs.folders()
        return {_existing(f) for f in found}

    def current_fingerprint(self) -> dict[Path, bytes]:
        found = {path: file_digest(path) for path in self.exact}
        if self.globs is not None:
            found.update(self.globs.file_digests())
        return found

    def changed(self) -> list[Path]:
        """The followed files whose contents differ from when the last run started (added and removed ones too)."""
        if self.fingerprint is None:
            return [self.file]
        now = self.current_fingerprint()
        return sorted(p for p in now.keys() | self.fingerprint.keys() if now.get(p) != self.fingerprint.get(p))


class _StopWhen:
    """The stop event given to watchfiles: the session's ``stop``, or this watcher's own (to re-watch)."""

    def __init__(self, outer: asyncio.Event) -> None:
        self.outer = outer
        self.own = False

    def is_set(self) -> bool:
        return self.own or self.outer.is_set()

    def set(self) -> None:
        self.own = True


class Watcher:
    """One watch session: the followed files, the runs waiting, the run in flight. Use :func:`watch`."""

    def __init__(self, target: str | os.PathLike[str], *, bus: Bus | None = None, debounce: float = 0.05,
                 once_per_change: bool = False, force_polling: bool | None = None,
                 run_options: Mapping[str, Any] | None = None) -> None:
        self.target = Path(target).resolve()
        if not self.target.exists():
            raise GoatclawError(f"{target}: no such file or folder")
        self.bus = bus or Bus()
        self.debounce = debounce
        self.once_per_change = once_per_change
        self.force_polling = force_polling
        self.run_options = dict(run_options or {})
        self.followed: dict[Path, _Followed] = {}
        self.pending: dict[Path, list[str]] = {}  # pipeline file -> the changed paths it runs for (in order)
        self.current: tuple[Path, list[str], str] | None = None  # the run in flight: file, reasons, run id
        self.worker: asyncio.Task[None] | None = None
        self.summary = WatchSummary()
        self._seq = itertools.count(1)

    # -- the recipe ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> WatchSummary:
        """Run every pipeline once, then again on each change, until ``stop`` is set."""
        for file in self._targets():  # learn each pipeline's inputs, so the first watch covers their folders
            self._follow(file, api.check(_shown(file))[0])
        first = True
        try:
            while not stop.is_set():
                await self._watch(stop, first)
                first = False
        finally:
            await self._stop_worker()
            self._emit("watch.stopped", cancelled=self.summary.cancelled, runs=len(self.summary.runs))
        return self.summary

    async def _watch(self, stop: asyncio.Event, first: bool) -> None:
        """One watchfiles session over the current folders; returns when stopping or when the folders change."""
        from watchfiles import awatch  # imported here: `import goatclaw` and other commands never pay for it

        folders = self._folders()
        until = _StopWhen(stop)
        batches = awatch(*sorted(folders), watch_filter=None, debounce=int(MAX_BATCH * 1000),
                         step=max(1, int(self.debounce * 1000)), stop_event=until, recursive=False,
                         force_polling=self.force_polling)
        upcoming = asyncio.ensure_future(_next(batches))
        await asyncio.sleep(0)  # its first step starts the notifier: from here on no change is missed
        self._emit("watch.ready", pipelines=[str(_shown(f)) for f in self.followed],
                   folders=sorted(str(_shown(f)) for f in folders),
                   files=sorted({str(_shown(p)) for f in self.followed.values() for p in f.exact}),
                   inputs=sorted({g for f in self.followed.values() for g in f.patterns()}))
        if first:
            self._queue({file: ["(start)"] for file in self.followed})
        else:
            await self._consider(list(self.followed))  # what changed while no notifier was watching
        try:
            while True:
                try:
                    changes = await upcoming
                except StopAsyncIteration:
                    return
                except FileNotFoundError:  # a watched folder went away as the notifier started: watch again
                    await asyncio.sleep(self.debounce)
                    return
                await self._on_changes({(int(kind), Path(p)) for kind, p in changes})
                if self._folders() != folders:
                    until.set()  # watch again over the new folders (and look at what changed in the gap)
                upcoming = asyncio.ensure_future(_next(batches))
        finally:
            until.set()
            if not upcoming.done():
                await asyncio.wait([upcoming])
            await batches.aclose()

    async def _on_changes(self, changes: set[tuple[int, Path]]) -> None:
        """Map a batch of changes to the pipelines they concern; queue them, cancelling a stale run."""
        if self.target.is_dir():
            for file in self._targets():
                if file not in self.followed:
                    self._follow(file, None)
            for gone in [f for f in self.followed if not f.exists() and f.parent == self.target]:
                del self.followed[gone]
                self.pending.pop(gone, None)
        paths = {p for _, p in changes}
        await self._consider([file for file, f in self.followed.items() if any(f.concerns(p) for p in paths)])

    async def _consider(self, files: list[Path]) -> None:
        """Queue those of ``files`` whose followed contents changed since their last run started.

        A run in flight of one of them is cancelled first (unless ``once_per_change``).
        """
        changed = {file: [str(_shown(p)) for p in self.followed[file].changed()] for file in files}
        changed = {file: why for file, why in changed.items() if why}
        if not changed:
            return
        self._emit("watch.changed", paths=sorted({p for why in changed.values() for p in why}),
                   pipelines=[str(_shown(f)) for f in changed])
        if self.current is not None and self.current[0] in changed and not self.once_per_change:
            await self._cancel_current()
        self._queue(changed)

    # -- runs ------------------------------------------------------------------------

    def _queue(self, reasons: Mapping[Path, list[str]]) -> None:
        """Add pipelines to run (each at most once, with every reason), and start the worker if it is idle."""
        for file, more in reasons.items():
            self.pending[file] = list(dict.fromkeys([*self.pending.get(file, []), *more]))
        if self.pending and (self.worker is None or self.worker.done()):
            self.worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        """Run the waiting pipelines one after the other."""
        while self.pending:
            file = next(iter(self.pending))
            reasons = self.pending.pop(file)
            await self._run_one(file, reasons)

    async def _run_one(self, file: Path, reasons: list[str]) -> None:
        """Check ``file`` (an invalid one is reported and waits for the next save), then run it."""
        checked = self._check(file)
        if checked is None:
            return
        pipeline, warnings = checked
        run_id = new_run_id()
        shown = str(_shown(file))
        self.current = (file, reasons, run_id)
        self._emit("watch.run", file=shown, pipeline=pipeline.name, run_id=run_id, reasons=reasons, warnings=warnings)
        try:
            result = await api.arun(pipeline, bus=self.bus, run_id=run_id, **{"trigger": "watch", **self.run_options})
        except asyncio.CancelledError:
            self._emit("watch.finished", file=shown, run_id=run_id, status=RunStatus.CANCELLED.value, ran=[],
                       cached=[], result=None)
            raise
        except GoatclawError as exc:  # the run could not start (an LLM mode without a cassette, a bad store …)
            self._emit("watch.error", file=shown, run_id=run_id, message=str(exc))
            return
        except Exception as exc:  # a bug must not end the session: say it, and wait for the next save
            log.exception("watch: the run of %s failed", file)
            self._emit("watch.error", file=shown, run_id=run_id, message=f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.current = None
        self.summary.runs.append(result)
        order = [t for t in pipeline.tasks if t in result.tasks]  # file order, then on_failure and finally
        order += [t for t in result.tasks if t not in pipeline.tasks]
        self._emit("watch.finished", file=shown, run_id=run_id, status=result.status.value,
                   ran=[t for t in order if result.tasks[t].status is not TaskState.CACHED],
                   cached=[t for t in order if result.tasks[t].status is TaskState.CACHED], result=result)

    def _check(self, file: Path) -> tuple[Pipeline, list[str]] | None:
        """The checked pipeline and its warnings; ``None`` (reported as ``watch.invalid``) when it has errors.

        The fingerprint is taken before the file is read, so a save during the check is a change.
        """
        followed = self.followed.get(file)
        if followed is None:
            return None
        followed.fingerprint = followed.current_fingerprint()
        pipeline, problems = api.check(_shown(file))
        before = (followed.patterns(), set(followed.exact))
        self._follow(file, pipeline)
        if (followed.patterns(), followed.exact) != before:  # it follows other files now: fingerprint those
            followed.fingerprint = followed.current_fingerprint()
        errors = [p for p in problems if p.severity == "error"]
        if pipeline is None or errors:
            self._emit("watch.invalid", file=str(_shown(file)), problems=[str(p) for p in errors or problems])
            return None
        return pipeline, [str(p) for p in problems]

    async def _cancel_current(self) -> None:
        """Cancel the run in flight (the engine records it as cancelled) and queue its pipeline again first."""
        assert self.worker is not None and self.current is not None
        file, reasons, _ = self.current
        self.worker.cancel()
        await asyncio.wait([self.worker])
        self.pending = {file: reasons, **self.pending}

    async def _stop_worker(self) -> None:
        if self.worker is None or self.worker.done():
            return
        if self.current is not None:
            self.summary.cancelled = self.current[2]
        self.pending.clear()
        self.worker.cancel()
        await asyncio.wait([self.worker])

    # -- what is followed ------------------------------------------------------------

    def _targets(self) -> list[Path]:
        return pipelines_in(self.target) if self.target.is_dir() else [self.target]

    def _follow(self, file: Path, pipeline: Pipeline | None) -> None:
        """Learn what ``file`` follows: always itself and its project file; its inputs once it is valid."""
        followed = self.followed.setdefault(file, _Followed(file, file.parent))
        project = find_project_file(file.parent, Path.cwd())
        followed.root = (project.parent if project is not None else Path.cwd()).resolve()
        followed.exact = {file} | ({project.resolve()} if project is not None else set())
        if pipeline is None:
            return  # invalid: keep the inputs it had
        tasks = [*pipeline.tasks.values(), *pipeline.on_failure.values(), *pipeline.finally_.values()]
        patterns = list(dict.fromkeys(p for t in tasks for p in t.inputs))
        followed.globs = InputGlobs(patterns, followed.root) if patterns else None
        followed.exact |= {(followed.root / t.with_["path"]).resolve() for t in tasks
                           if t.uses == "file.read" and isinstance(t.with_.get("path"), str)
                           and "${{" not in t.with_["path"]}

    def _folders(self) -> set[Path]:
        found = {f for followed in self.followed.values() for f in followed.folders()}
        if self.target.is_dir():
            found.add(self.target)
        return found

    def _emit(self, topic: str, **data: Any) -> None:
        self.bus.publish(Event(topic, "", next(self._seq), time.time(), None, data))


async def _next(batches: AsyncIterator[set[tuple[Any, str]]]) -> set[tuple[Any, str]]:
    return await anext(batches)


def _shown(path: Path) -> Path:
    """``path`` relative to the current folder when it is inside it (as messages show files), else absolute."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _existing(folder: Path) -> Path:
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


