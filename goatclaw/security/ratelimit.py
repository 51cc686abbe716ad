"""Sliding-window rate limits: for LLM calls (``goatclaw.llm``) and for side effects.

A :class:`SlidingWindow` admits at most ``limit`` events (and, optionally, ``weight_limit``
of their summed weight, e.g. tokens) in any ``window`` seconds; a caller over the limit
waits until the oldest event leaves the window. It is thread-safe and shared: every
limit with the same name and numbers is one object per process, so concurrent tasks
and concurrent runs in the process share it.

A run with a store shares its limits with every process using that store: a
:class:`StoreWindow` keeps the window's events in the store (``Store.rate_window``, one
``BEGIN IMMEDIATE`` transaction per admission, wall-clock times), so two processes with
``rpm: 2`` make two calls a minute between them, not four.

Side-effect limits come from ``goatclaw.yaml``::

    rate_limits:
      side_effects:
        http_per_host_per_minute: 60    # requests (each redirect hop) to one host
        processes_per_minute: 120       # programs started by shell tasks

The engine makes them current for a run (:data:`LIMITS`); built-in tasks wait through
:meth:`goatclaw.plugin.TaskContext.throttle`, which emits ``ratelimit.wait`` when a task
had to wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "LIMITS", "SideEffectLimits", "SlidingWindow", "StoreWindow", "shared_window"]

#: ``rate_limits.side_effects`` settings and the kind of side effect each limits.
KINDS = {"http_per_host_per_minute": "http", "processes_per_minute": "process", "file_writes_per_minute": "file"}


class SlidingWindow:
    """At most ``limit`` events and ``weight_limit`` total weight in any ``window`` seconds.

    ``acquire(weight)`` waits until one more event of that weight fits both limits (an
    event heavier than ``weight_limit`` goes alone in a window).
    """

    def __init__(self, limit: int | None = None, weight_limit: int | None = None, *, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.weight_limit, self.window, self.clock = limit, weight_limit, window, clock
        self._calls: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def _wait_time(self, weight: int) -> float:
        """Seconds until one more event of ``weight`` fits (0: now). Call with the lock held."""
        now = self.clock()
        while self._calls and self._calls[0][0] <= now - self.window:
            self._calls.popleft()
        return self.wait_in(self._calls, now, weight)

    def wait_in(self, calls: Sequence[tuple[float, int]], now: float, weight: int) -> float:
        """Seconds until one more event of ``weight`` fits among ``calls`` (``(time, weight)``, oldest first)."""
        waits = [0.0]
        if self.limit is not None and len(calls) >= self.limit:
            waits.append(calls[len(calls) - self.limit][0] + self.window - now)
        if self.weight_limit is not None and calls:
            used = sum(w for _, w in calls)
            for when, spent in calls:  # the oldest events leave the window first
                if used + weight <= self.weight_limit:
                    break
                used -= spent
                waits.append(when + self.window - now)
        return max(waits)

    def try_acquire(self, weight: int = 0) -> float:
        """Take room now if there is some (returns 0), else the seconds to wait before trying again."""
        with self._lock:
            wait = self._wait_time(weight)
            if wait <= 0:
                self._calls.append((self.clock(), weight))
        return wait

    async def acquire(self, weight: int = 0) -> float:
        """Wait for room, then take it; the seconds waited."""
        waited = 0.0
        while (wait := self.try_acquire(weight)) > 0:
            wait = min(wait, self.window)
            await asyncio.sleep(wait)
            waited += wait
        return waited

    def acquire_blocking(self, weight: int = 0) -> float:
        """:meth:`acquire` for a blocking caller (a thread); the seconds waited."""
        waited = 0.0
        while (wait := self.try_acquire(weight)) > 0:
            wait = min(wait, self.window)
            time.sleep(wait)
            waited += wait
        return waited


class StoreWindow(SlidingWindow):
    """A :class:`SlidingWindow` whose events live in a store, shared by every process that opens it.

    ``store()`` gives an object with ``rate_window(name, window, decide, weight)`` (the
    :class:`goatclaw.store.Store`): in one ``BEGIN IMMEDIATE`` transaction it drops the
    events that left the window, asks ``decide(events, now)`` for the wait and records the
    event when the wait is 0. Times are wall-clock (``time.time``), the one clock processes share.
    """

    def __init__(self, name: str, limit: int | None, weight_limit: int | None, *, window: float,
                 store: Callable[[], Any]) -> None:
        super().__init__(limit, weight_limit, window=window, clock=time.time)
        self.name, self._store = name, store

    def try_acquire(self, weight: int = 0) -> float:
        """Take room now if the store's window has some (0), else the seconds to wait."""
        with self._lock:  # one connection per store and process: one admission at a time
            return float(self._store().rate_window(self.name, self.window,
                                                   lambda calls, now: self.wait_in(calls, now, weight), weight))

    async def acquire(self, weight: int = 0) -> float:
        """Wait for room, then take it (each look at the store in a thread: a locked store never blocks the loop)."""
        waited = 0.0
        while (wait := await asyncio.to_thread(self.try_acquire, weight)) > 0:
            wait = min(wait, self.window)
            await asyncio.sleep(wait)
            waited += wait
        return waited


_SHARED: dict[tuple[Any, ...], SlidingWindow] = {}
_SHARED_LOCK = threading.Lock()
_STORES: dict[Path, Any] = {}


def shared_window(name: str, limit: int | None, weight_limit: int | None = None, *,
                  window: float = 60.0, store: Path | None = None,
                  opener: Callable[[Path], Any] | None = None) -> SlidingWindow:
    """The window for ``name`` with these numbers (created on first use).

    Without ``store`` it is process-wide, in memory; with a store path and its ``opener``
    (``Store.open``) it is a :class:`StoreWindow` shared by every process using that store.
    """
    key = (name, limit, weight_limit, window, store)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            if store is not None and opener is not None:
                found = StoreWindow(name, limit, weight_limit, window=window, store=lambda: _store(store, opener))
            else:
                found = SlidingWindow(limit, weight_limit, window=window)
            _SHARED[key] = found
        return found


def _store(path: Path, opener: Callable[[Path], Any]) -> Any:
    """The process's connection to the store at ``path`` for rate windows (opened once, kept)."""
    with _SHARED_LOCK:
        found = _STORES.get(path)
        if found is None:
            found = _STORES[path] = opener(path)
        return found


@dataclass(frozen=True)
class SideEffectLimits:
    """Per-minute limits on side effects by kind (``http`` per host, ``process``, ``file`` writes)."""

    per_minute: Mapping[str, int] = field(default_factory=dict)
    window: float = 60.0
    #: The run's store and how to open it: the windows are then shared by every process using it.
    store: Path | None = None
    opener: Callable[[Path], Any] | None = None

    @classmethod
    def from_settings(cls, settings: Any, *, window: float = 60.0, store: Path | None = None,
                      opener: Callable[[Path], Any] | None = None) -> SideEffectLimits | None:
        """From ``rate_limits.side_effects`` (already schema-checked); ``None`` when nothing is limited."""
        if not isinstance(settings, Mapping):
            return None
        limits = {KINDS[k]: int(v) for k, v in settings.items() if k in KINDS and v}
        return cls(limits, window, store, opener) if limits else None

    def window_for(self, kind: str, key: str | None = None) -> SlidingWindow | None:
        """The shared window limiting ``kind`` (for ``key``, e.g. a host), or ``None`` if unlimited."""
        limit = self.per_minute.get(kind)
        if limit is None:
            return None
        return shared_window(f"side_effect:{kind}:{key or ''}", limit, window=self.window, store=self.store,
                             opener=self.opener)


#: The side-effect limits of the running run (set by the engine); ``None``: unlimited.
LIMITS: ContextVar[SideEffectLimits | None] = ContextVar("goatclaw_side_effect_limits", default=None)
