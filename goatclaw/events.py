"""Events and the bus that carries them: wildcard topics, subscribers that cannot break a run.

Topics are dotted: ``run.started``, ``task.started``, ``task.succeeded``, ``task.failed``,
``task.retrying``, ``task.progress`` … A subscription pattern may use ``*`` wildcards
(``task.*``, ``*.failed``, ``*``). The library never prints: renderers (the CLI's live
view, reports) subscribe here. A subscriber that raises is unsubscribed from nothing and
breaks nothing: the error is kept in :attr:`Bus.errors` and logged.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Bus", "Event", "Handler"]

log = logging.getLogger("goatclaw.events")


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in a run."""

    topic: str
    run_id: str
    seq: int
    ts: float
    task: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Event], None]


class Bus:
    """Synchronous publish/subscribe with wildcard topics."""

    def __init__(self) -> None:
        self._subs: list[tuple[str, Handler]] = []
        self._cache: dict[str, tuple[Handler, ...]] = {}
        self.errors: list[tuple[Event, BaseException]] = []

    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every event whose topic matches ``pattern``; returns an unsubscribe."""
        entry = (pattern, handler)
        self._subs.append(entry)
        self._cache.clear()

        def unsubscribe() -> None:
            if entry in self._subs:
                self._subs.remove(entry)
                self._cache.clear()

        return unsubscribe

    def handlers(self, topic: str) -> tuple[Handler, ...]:
        """The handlers subscribed to ``topic`` (cached per topic)."""
        found = self._cache.get(topic)
        if found is None:
            found = tuple(h for p, h in self._subs if p == topic or fnmatch.fnmatchcase(topic, p))
            self._cache[topic] = found
        return found

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to its subscribers; a failing subscriber is recorded, not raised."""
        for handler in self.handlers(event.topic):
            try:
                handler(event)
            except Exception as exc:
                self.errors.append((event, exc))
                log.warning("event subscriber %r failed on %s: %s", handler, event.topic, exc)
