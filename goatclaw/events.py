"""Events and the bus that carries them: wildcard topics, priorities, back-pressure, answers.

Topics are dotted: ``run.started``, ``task.started``, ``task.succeeded``, ``task.failed``,
``task.retrying``, ``task.progress`` … A subscription pattern may use ``*`` wildcards
(``task.*``, ``*.failed``, ``*``). The library never prints: renderers (the CLI's live
view, reports) subscribe here.

Three kinds of subscriber:

* **inline** (:meth:`Bus.subscribe`): a plain function called at once, in the
  publisher's turn, higher ``priority`` first. The live view is one: it must see every
  event immediately and costs microseconds.
* **queued** (:meth:`Bus.subscribe_async`): a coroutine function fed from its own bounded
  mailbox by a consumer task. Events wait in the mailbox by urgency (:func:`urgency`:
  failures, breakers, threats and run events first, progress and logs last), so a
  handler for urgent events is never stuck behind a flood of progress events. A full
  mailbox applies back-pressure: with ``overflow="wait"`` the engine starts no new task
  until the subscriber catches up (:meth:`Bus.wait_ready`); with ``"drop"`` the least
  urgent, oldest event is dropped and counted.
* **responders** (:meth:`Bus.answer`): handlers that answer a :meth:`Bus.request`.

A subscriber that raises breaks nothing: the event and the error are kept in
:attr:`Bus.errors` (the run's recorder turns them into dead letters) and logged.
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AsyncHandler", "Bus", "Event", "Handler", "Responder", "urgency"]

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
AsyncHandler = Callable[[Event], Awaitable[None]]
Responder = Callable[[Event], Any]

#: Urgency by topic pattern, most urgent (0) first; the first matching pattern wins.
URGENCY: tuple[tuple[str, int], ...] = (
    ("*.failed", 0), ("breaker.*", 0), ("threat.*", 0), ("run.*", 0), ("dead_letter.*", 0),
    ("task.progress", 2), ("*.log", 2), ("*.output", 2),
)
_NORMAL = 1


def urgency(topic: str) -> int:
    """0 (urgent: failures, breakers, threats, run events), 1 (normal) or 2 (progress, logs)."""
    for pattern, level in URGENCY:
        if fnmatch.fnmatchcase(topic, pattern):
            return level
    return _NORMAL


def _matches(pattern: str, topic: str) -> bool:
    return pattern == topic or fnmatch.fnmatchcase(topic, pattern)


class _Mailbox:
    """A queued subscriber: a bounded heap of (urgency, arrival, event) and its consumer task."""

    def __init__(self, bus: Bus, pattern: str, handler: AsyncHandler, maxsize: int,
                 overflow: Literal["wait", "drop"]) -> None:
        self.bus = bus
        self.pattern = pattern
        self.handler = handler
        self.maxsize = maxsize
        self.overflow = overflow
        self.heap: list[tuple[int, int, Event]] = []
        self.count = itertools.count()
        self.dropped = 0
        self.busy = False
        self.wakeup: asyncio.Event | None = None
        self.consumer: asyncio.Task[None] | None = None
        self.closed = False

    def put(self, event: Event) -> None:
        if self.overflow == "drop" and len(self.heap) >= self.maxsize:
            # drop the least urgent, oldest event (possibly the new one)
            worst = max(self.heap, key=lambda e: (e[0], -e[1]))
            new = (urgency(event.topic), next(self.count), event)
            if (new[0], -new[1]) >= (worst[0], -worst[1]):
                self.dropped += 1
                return
            self.heap.remove(worst)
            heapq.heapify(self.heap)
            heapq.heappush(self.heap, new)
            self.dropped += 1
        else:
            heapq.heappush(self.heap, (urgency(event.topic), next(self.count), event))
        self._start()

    @property
    def full(self) -> bool:
        return self.overflow == "wait" and len(self.heap) >= self.maxsize

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the events wait for drain()
        if self.consumer is None or self.consumer.done():
            self.wakeup = asyncio.Event()
            self.consumer = loop.create_task(self._consume())
        assert self.wakeup is not None
        self.wakeup.set()

    async def _consume(self) -> None:
        assert self.wakeup is not None
        while not self.closed:
            while self.heap:
                _, _, event = heapq.heappop(self.heap)
                self.busy = True
                try:
                    await self.handler(event)
                except Exception as exc:
                    self.bus._failed(event, self.handler, exc)
                finally:
                    self.busy = False
                self.bus._room()
            self.bus._room()
            self.wakeup.clear()
            await self.wakeup.wait()

    async def drain(self) -> None:
        """Deliver everything queued (in this task when there is no consumer)."""
        if self.consumer is None or self.consumer.done():
            while self.heap:
                _, _, event = heapq.heappop(self.heap)
                try:
                    await self.handler(event)
                except Exception as exc:
                    self.bus._failed(event, self.handler, exc)
            return
        while self.heap or self.busy:
            await asyncio.sleep(0)


class Bus:
    """Publish/subscribe with wildcard topics, priorities, bounded mailboxes and request/response."""

    def __init__(self) -> None:
        self._subs: list[tuple[int, int, str, Handler]] = []
        self._order = itertools.count()
        self._cache: dict[str, tuple[Handler, ...]] = {}
        self._mailboxes: list[_Mailbox] = []
        self._responders: list[tuple[int, int, str, Responder]] = []
        self._room_waiters: list[asyncio.Future[None]] = []
        self.errors: list[tuple[Event, BaseException]] = []

    # -- subscribing -------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler, *, priority: int = 0) -> Callable[[], None]:
        """Call ``handler`` inline for every event matching ``pattern`` (higher ``priority`` first).

        Returns a function that unsubscribes.
        """
        entry = (-priority, next(self._order), pattern, handler)
        self._subs.append(entry)
        self._subs.sort(key=lambda e: (e[0], e[1]))
        self._cache.clear()

        def unsubscribe() -> None:
            if entry in self._subs:
                self._subs.remove(entry)
                self._cache.clear()

        return unsubscribe

    def subscribe_async(self, pattern: str, handler: AsyncHandler, *, maxsize: int = 1000,
                        overflow: Literal["wait", "drop"] = "wait") -> Callable[[], None]:
        """Feed ``handler`` (a coroutine function) from a bounded mailbox, most urgent events first.

        ``maxsize`` bounds the mailbox; when it is full, ``overflow="wait"`` holds back the
        engine (no new task starts until there is room) and ``"drop"`` drops the least
        urgent, oldest event. Returns a function that unsubscribes (queued events are dropped).
        """
        if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)):
            raise TypeError(f"subscribe_async needs a coroutine function, got {handler!r}; use subscribe()")
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        box = _Mailbox(self, pattern, handler, maxsize, overflow)
        self._mailboxes.append(box)
        self._cache.clear()

        def unsubscribe() -> None:
            if box in self._mailboxes:
                self._mailboxes.remove(box)
                self._cache.clear()
                box.closed = True
                box.heap.clear()
                if box.wakeup is not None:
                    box.wakeup.set()
                self._room()

        return unsubscribe

    def answer(self, pattern: str, responder: Responder, *, priority: int = 0) -> Callable[[], None]:
        """Let ``responder`` (plain or async) answer :meth:`request` calls on matching topics."""
        entry = (-priority, next(self._order), pattern, responder)
        self._responders.append(entry)
        self._responders.sort(key=lambda e: (e[0], e[1]))

        def unsubscribe() -> None:
            if entry in self._responders:
                self._responders.remove(entry)

        return unsubscribe

    # -- publishing --------------------------------------------------------------------

    def handlers(self, topic: str) -> tuple[Handler, ...]:
        """What receives ``topic``: inline handlers in priority order, then queued mailboxes (cached)."""
        found = self._cache.get(topic)
        if found is None:
            inline = tuple(h for _, _, p, h in self._subs if _matches(p, topic))
            queued = tuple(box.put for box in self._mailboxes if _matches(box.pattern, topic))
            found = inline + queued
            self._cache[topic] = found
        return found

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to inline subscribers now and queue it for queued ones; never raises."""
        for handler in self.handlers(event.topic):
            try:
                handler(event)
            except Exception as exc:
                self._failed(event, handler, exc)

    async def request(self, topic: str, data: dict[str, Any] | None = None, *, run_id: str = "",
                      timeout: float | None = None, default: Any = None) -> Any:
        """Ask the responders of ``topic`` in priority order; the first answer that is not ``None`` wins.

        A responder that raises is recorded like a failing subscriber and the next one is
        asked; with no answer (or after ``timeout`` seconds) ``default`` is returned.
        """
        event = Event(topic, run_id, 0, asyncio.get_running_loop().time(), None, data or {})
        responders = [r for _, _, p, r in self._responders if _matches(p, topic)]

        async def ask() -> Any:
            for responder in responders:
                try:
                    reply = responder(event)
                    if inspect.isawaitable(reply):
                        reply = await reply
                except Exception as exc:
                    self._failed(event, responder, exc)
                    continue
                if reply is not None:
                    return reply
            return default

        if timeout is None:
            return await ask()
        try:
            async with asyncio.timeout(timeout):
                return await ask()
        except TimeoutError:
            return default

    # -- back-pressure -----------------------------------------------------------------

    @property
    def congested(self) -> bool:
        """Whether a queued subscriber with ``overflow="wait"`` has a full mailbox."""
        if not self._mailboxes:
            return False
        return any(box.full for box in self._mailboxes)

    @property
    def dropped(self) -> int:
        """Events dropped by full ``overflow="drop"`` mailboxes."""
        return sum(box.dropped for box in self._mailboxes)

    async def wait_ready(self) -> None:
        """Return when no ``overflow="wait"`` mailbox is full (at once when none is)."""
        while self.congested:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            await waiter

    async def drain(self) -> None:
        """Wait until every queued subscriber has handled everything in its mailbox."""
        for box in list(self._mailboxes):
            await box.drain()

    def _room(self) -> None:
        if self._room_waiters and not self.congested:
            waiters, self._room_waiters = self._room_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _failed(self, event: Event, handler: Any, exc: BaseException) -> None:
        self.errors.append((event, exc))
        log.warning("event subscriber %r failed on %s: %s", handler, event.topic, exc)
