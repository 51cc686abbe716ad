"""Sliding-window rate limits: for LLM calls (``goatclaw.llm``) and for side effects.

A :class:`SlidingWindow` admits at most ``limit`` events (and, optionally, ``weight_limit``
of their summed weight, e.g. tokens) in any ``window`` seconds; a caller over the limit
waits until the oldest event leaves the window. It is thread-safe and shared: every
limit with the same name and numbers is one object per process, so concurrent tasks
and concurrent runs in the process share it.

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
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "LIMITS", "SideEffectLimits", "SlidingWindow", "shared_window"]

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
        waits = [0.0]
        if self.limit is not None and len(self._calls) >= self.limit:
            waits.append(self._calls[len(self._calls) - self.limit][0] + self.window - now)
        if self.weight_limit is not None and self._calls:
            used = sum(w for _, w in self._calls)
            for when, spent in self._calls:  # the oldest events leave the window first
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


_SHARED: dict[tuple[Any, ...], SlidingWindow] = {}
_SHARED_LOCK = threading.Lock()


def shared_window(name: str, limit: int | None, weight_limit: int | None = None, *,
                  window: float = 60.0) -> SlidingWindow:
    """The process-wide window for ``name`` with these numbers (created on first use)."""
    key = (name, limit, weight_limit, window)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = SlidingWindow(limit, weight_limit, window=window)
        return found


@dataclass(frozen=True)
class SideEffectLimits:
    """Per-minute limits on side effects by kind (``http`` per host, ``process``, ``file`` writes)."""

    per_minute: Mapping[str, int] = field(default_factory=dict)
    window: float = 60.0

    @classmethod
    def from_settings(cls, settings: Any, *, window: float = 60.0) -> SideEffectLimits | None:
        """From ``rate_limits.side_effects`` (already schema-checked); ``None`` when nothing is limited."""
        if not isinstance(settings, Mapping):
            return None
        limits = {KINDS[k]: int(v) for k, v in settings.items() if k in KINDS and v}
        return cls(limits, window) if limits else None

    def window_for(self, kind: str, key: str | None = None) -> SlidingWindow | None:
        """The shared window limiting ``kind`` (for ``key``, e.g. a host), or ``None`` if unlimited."""
        limit = self.per_minute.get(kind)
        if limit is None:
            return None
        return shared_window(f"side_effect:{kind}:{key or ''}", limit, window=self.window)


#: The side-effect limits of the running run (set by the engine); ``None``: unlimited.
LIMITS: ContextVar[SideEffectLimits | None] = ContextVar("goatclaw_side_effect_limits", default=None)
