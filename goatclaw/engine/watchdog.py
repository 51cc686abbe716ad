"""Task timeouts that hold even when a plugin blocks the event loop.

``asyncio.timeout`` is a callback on the event loop: a plugin that blocks the loop (a
``time.sleep`` or a CPU loop inside an ``async def``) keeps that callback, and the whole
run, waiting until it gives the loop back. The watchdog is one daemon thread per process
that knows every attempt's deadline. When an attempt is still running :data:`GRACE`
seconds after its deadline and it is the very task that holds its loop, the watchdog
raises :class:`Overdue` inside the plugin's code, and the engine fails the attempt with
error class ``timeout``:

* on a loop in the **main thread** (``goatclaw apply``, ``goatclaw.run`` from a script),
  by a ``SIGURG`` sent to that thread, whose handler raises :class:`Overdue` where the
  plugin is. A blocking system call (``time.sleep``, a socket read, a lock) returns at
  once; a pure-Python loop stops at its next instruction; one long C call (``sum`` over a
  huge range, a catastrophic regex) stops when it returns to Python. ``SIGURG`` is
  ignored by default and used by nothing else in Python; the handler is installed the
  first time it is needed (from the main thread), unless the program set a handler of its
  own for it, and stays installed: with no overdue attempt it does nothing.
* on a loop in **another thread**, by an asynchronous exception
  (``PyThreadState_SetAsyncExc``), only while that thread is executing Python
  instructions: a pure-Python loop stops; a call blocked in C there ends when it returns.

The exception is raised only while the interrupted frame is inside the overdue task's
coroutine, never in the loop's own code, and again every :data:`GRACE` seconds if the
plugin swallows it (``except BaseException``). An attempt that could not be interrupted
and returns more than :data:`GRACE` seconds late fails all the same. A plugin that blocks its loop without a
``timeout:`` is not interrupted: there is no deadline to hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import heapq
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["GRACE", "Overdue", "deadline"]

#: Seconds past an attempt's deadline before the watchdog interrupts a plugin that holds the loop.
GRACE = 0.5
#: The signal that interrupts the main thread (default action: ignore), where the platform has it.
NUDGE: signal.Signals | None = getattr(signal, "SIGURG", None)


class Overdue(BaseException):  # BaseException, so that a plugin's `except Exception` lets it by
    """Raised inside a plugin that held the event loop past its attempt's deadline."""


@dataclasses.dataclass(eq=False)
class _Watch:
    """One attempt's deadline, and where its plugin runs."""

    due: float  # time.monotonic() of the deadline
    task: asyncio.Task[Any] | None  # dropped when the attempt ends, so that a long deadline keeps nothing alive
    loop: asyncio.AbstractEventLoop
    thread: int  # the ident of the loop's thread
    done: bool = False
    fired: bool = False  # Overdue was raised into it at least once
    #: Held while an asynchronous exception is set, and while the attempt ends: none lands after it.
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class _Watchdog:
    """The process's one watchdog thread and the deadlines it watches (a heap with lazy removal)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Watch]] = []
        self._count = 0
        self._live = 0  # watches not done yet (the heap also holds done ones until they come up)
        self._thread: threading.Thread | None = None
        self._target: _Watch | None = None  # what the next SIGURG is meant for (read by the handler)
        self._installed = False

    def add(self, watch: _Watch) -> None:
        if watch.thread == threading.main_thread().ident and not self._installed:
            self._install()
        with self._lock:
            self._count += 1
            self._live += 1
            if len(self._heap) > 1024 and len(self._heap) > 4 * self._live:  # mostly finished attempts: compact
                self._heap = [entry for entry in self._heap if not entry[2].done]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (watch.due + GRACE, self._count, watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="goatclaw-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:  # the earliest deadline now: wake the thread to wait less
                self._wake.notify()

    def remove(self, watch: _Watch) -> None:
        """The attempt ended: ``watch`` (already marked done) leaves the heap when it comes up."""
        with self._lock:
            self._live -= 1

    def _install(self) -> None:
        """Install the SIGURG handler (from the main thread), unless the program has its own."""
        if NUDGE is None or threading.current_thread() is not threading.main_thread():
            return
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(NUDGE) in (signal.SIG_DFL, signal.SIG_IGN, None):
                signal.signal(NUDGE, self._on_nudge)
        self._installed = True  # tried once: a program's own handler is left alone from then on

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._wake.wait()
                        continue
                    when = self._heap[0][0]
                    now = time.monotonic()
                    if when <= now:
                        watch = heapq.heappop(self._heap)[2]
                        break
                    self._wake.wait(when - now)
            with contextlib.suppress(Exception):  # a loop that went away meanwhile: nothing to interrupt
                self._nudge(watch)
            if not watch.done:  # not interrupted (the loop was free, or it swallowed Overdue): look again later
                with self._lock:
                    self._count += 1
                    heapq.heappush(self._heap, (time.monotonic() + GRACE, self._count, watch))

    def _nudge(self, watch: _Watch) -> None:
        """Interrupt ``watch``'s plugin if it is what holds its loop right now."""
        task = watch.task
        if task is None or watch.done or watch.loop.is_closed() or asyncio.current_task(watch.loop) is not task:
            return  # the loop is not inside this task: its own timeout callback can run
        if watch.thread == threading.main_thread().ident:
            if NUDGE is not None and signal.getsignal(NUDGE) == self._on_nudge:
                self._target = watch
                signal.pthread_kill(watch.thread, NUDGE)
            return
        if not _computing(watch.thread):
            return  # blocked in a system call: an exception set now would land wherever that call returns to
        with watch.lock:
            if not watch.done and _inside(sys._current_frames().get(watch.thread), task):
                watch.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(watch.thread), ctypes.py_object(Overdue))

    def _on_nudge(self, signum: int, frame: FrameType | None) -> None:
        """The SIGURG handler, in the main thread: raise where the overdue plugin is, if it still is there."""
        watch, self._target = self._target, None
        task = None if watch is None else watch.task
        if watch is None or task is None or watch.done or frame is None:
            return
        if asyncio.current_task(watch.loop) is task and _inside(frame, task):
            watch.fired = True
            raise Overdue


def _computing(thread: int) -> bool:
    """Whether thread ``thread`` is using the CPU (running Python) rather than waiting in a system call."""
    try:
        clock = time.pthread_getcpuclockid(thread)
        before = time.clock_gettime(clock)
        time.sleep(0.02)
        return time.clock_gettime(clock) - before > 0.01
    except (AttributeError, OSError):  # no per-thread CPU clock here: never interrupt another thread
        return False


def _inside(frame: FrameType | None, task: asyncio.Task[Any]) -> bool:
    """Whether ``frame`` runs inside ``task``'s coroutine (its frame is on the stack)."""
    outer = getattr(task.get_coro(), "cr_frame", None)
    while frame is not None and outer is not None:
        if frame is outer:
            return True
        frame = frame.f_back
    return False


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[_Watch]:
    """Watch the current task for ``seconds``: past them (and :data:`GRACE`), a loop it holds raises :class:`Overdue`.

    Use it inside the ``asyncio.timeout`` of the same attempt: the loop's timeout handles a
    plugin that yields; this handles one that does not. A body that returns more than
    :data:`GRACE` seconds after its deadline (it held the loop and could not be interrupted)
    raises :class:`Overdue` too: an attempt that ran over its timeout never succeeds.
    """
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("deadline() needs a running task")
    watch = _Watch(time.monotonic() + seconds, task, task.get_loop(), threading.get_ident())
    _WATCHDOG.add(watch)
    try:
        yield watch
    finally:
        with watch.lock:
            watch.done = True
            watch.task = None
            if watch.fired and watch.thread != threading.main_thread().ident:
                # an exception set but not raised yet would land in the engine's code: withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(watch.thread), None)
        _WATCHDOG.remove(watch)
    if time.monotonic() > watch.due + GRACE:  # it held the loop past its deadline and could not be interrupted
        raise Overdue
