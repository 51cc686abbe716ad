"""The run border: the one place where a signal becomes the cancellation of a run.

``SIGINT`` (Ctrl-C), ``SIGTERM`` (``docker stop``, CI cancellation, systemd) and ``SIGHUP``
(a closed terminal) all do the same thing: the run's coroutine is cancelled, so the
engine stops the tasks in flight (a shell task's whole process group gets ``SIGTERM``,
then ``SIGKILL``) and records the run ``cancelled``. The command then exits with
``128 + signal`` (130, 143, 129) and a one-word message, never a traceback.

A second signal cancels again: cleanup that waits (a process group's grace period before
``SIGKILL``) is cut short, and the run is still recorded. A signal that was ignored when
the process started (``nohup`` ignores ``SIGHUP``) stays ignored.

The handlers are Python-level (``signal.signal``), not the loop's: they run even while a
plugin holds the event loop, and hand the cancellation to the loop thread-safely. When
the loop has not taken that cancellation :data:`BLOCKED_AFTER` seconds later, a plugin is
holding it (a ``time.sleep`` or a CPU loop inside an ``async def``): the signal is sent
again to the main thread, and its handler raises ``CancelledError`` right where the
plugin is (a blocking system call returns at once; one long C call first has to
return), but only while that code runs inside one of the run's tasks, never inside the
loop's own machinery. It repeats every :data:`BLOCKED_AFTER` seconds while the loop stays
held. A loop held outside any task (a C call that never returns to Python): a signal
that comes after the first has waited :data:`BLOCKED_AFTER` seconds ends the process at
once with ``128 + signal``, and the run stays recorded as running (``--resume`` takes it
up).

:func:`store_failure` is the last line for errors that are not goatclaw's but the
machine's: the store's SQLite refusing (a table missing, a read-only file, a full disk)
or the OS refusing a write. The command prints them located (the store's path, the
file's name) instead of a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BLOCKED_AFTER", "STOP_SIGNALS", "Cancelled", "run", "store_failure"]

T = TypeVar("T")

#: The signals that cancel a run.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)
#: Seconds after a stop signal by which the loop must have taken its cancellation, or it counts as held by a plugin.
BLOCKED_AFTER = 1.0


class Cancelled(KeyboardInterrupt):
    """The run was cancelled by ``signum``; the command exits with :attr:`exit_code` (128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class _Border:
    """The signal handlers of one run and the task they cancel."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.signum: int | None = None  # the first signal: it decides the exit code
        self.previous: dict[int, Any] = {}
        self.asked: float | None = None  # when the oldest cancellation the loop has not taken yet was asked for
        self.nudging = False  # the next signal is the border's own, sent again to reach a held loop
        self.watch: threading.Timer | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; a run elsewhere is its caller's to stop
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:  # nohup, a background job: the user asked for it to be ignored
                continue
            self.previous[sig] = current
            signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        self.asked = None  # the run is over: nothing left to interrupt
        if self.watch is not None:
            self.watch.cancel()
        # after a stop signal the command is on its way out with 128 + signal: a further signal (the second
        # Ctrl-C landing after the run ended) must not kill the process before it exits with that code
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if self.signum is not None else handler)
        self.previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.nudging:  # the border's own signal: only interrupt what holds the loop
            self.nudging = False
            self._interrupt(frame)
            return
        if self.signum is None:
            self.signum = signum
        held = self.asked is not None and time.monotonic() - self.asked >= BLOCKED_AFTER
        if self.asked is None:
            self.asked = time.monotonic()
        try:
            self.loop.call_soon_threadsafe(self._cancel)  # never touch the loop from inside a handler
        except RuntimeError:  # the loop is closed: the run is over
            return
        if held and not self._interrupt(frame):  # asked again, and the loop has not even taken the first request
            sys.stderr.write(f"{signal.Signals(signum).name}: the event loop is held outside any task; "
                             "stopping now (the run stays recorded as running)\n")
            sys.stderr.flush()
            os._exit(128 + (self.signum or signum))
        self._arm()

    def _arm(self) -> None:
        """Look again in :data:`BLOCKED_AFTER` seconds whether the loop took the cancellation."""
        if self.watch is None or not self.watch.is_alive():
            self.watch = threading.Timer(BLOCKED_AFTER, self._check)
            self.watch.daemon = True
            self.watch.start()

    def _check(self) -> None:
        """In the timer's thread: the loop has not taken the cancellation: send the signal again to interrupt."""
        if self.asked is None or self.loop.is_closed() or self.signum is None:
            return
        self.nudging = True
        try:
            signal.pthread_kill(threading.main_thread().ident or 0, self.signum)
        except (OSError, ValueError):
            self.nudging = False
            return
        self.watch = threading.Timer(BLOCKED_AFTER, self._check)  # and again, while the loop stays held
        self.watch.daemon = True
        self.watch.start()

    def _interrupt(self, frame: Any) -> bool:
        """Raise ``CancelledError`` here, if ``frame`` runs inside one of the loop's tasks (a plugin holding it)."""
        if self.asked is None or self.loop.is_closed():
            return True  # the loop took the cancellation meanwhile
        task = asyncio.current_task(self.loop)
        outer = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
        while frame is not None and outer is not None:
            if frame is outer:
                raise asyncio.CancelledError
            frame = frame.f_back
        return False

    def _cancel(self) -> None:
        self.asked = None  # taken: the loop is not held
        if self.task is not None and not self.task.done():
            self.task.cancel()  # a second signal cancels again: waits in cleanup are cut short

    async def guard(self, main: Coroutine[Any, Any, T]) -> T:
        self.task = asyncio.current_task()
        if self.signum is not None:  # a signal came before the run started
            main.close()
            raise asyncio.CancelledError
        return await main


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new event loop; a stop signal cancels it and raises :class:`Cancelled`."""
    runner = asyncio.Runner()
    border = _Border(runner.get_loop())
    border.install()  # before Runner.run, so that it does not install its own SIGINT handler
    try:
        with runner:  # closing it (cancelling what is left) is still inside the border
            try:
                return runner.run(border.guard(main))
            except asyncio.CancelledError:
                if border.signum is None:
                    raise
                raise Cancelled(border.signum) from None
    finally:
        border.restore()


#: What the OS says when a write cannot happen: a full disk or quota, a read-only or refused file, a failing device.
_REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def store_failure(exc: BaseException, store: str | os.PathLike[str] | None) -> str | None:
    """A located message for an error of the store's SQLite binding or a refused write, else ``None``.

    The binding's errors are recognised by their module (``sqlite3``, or ``sqlean`` that the
    store opens connections through), so the CLI does not import the store's library.
    """
    if type(exc).__module__.split(".")[0] in ("sqlite3", "sqlean"):
        where = f"the store {store}" if store is not None else "the store"
        return f"{where}: {exc}"
    if isinstance(exc, OSError) and exc.errno in _REFUSED_WRITES:
        return f"{exc.filename or 'a write'}: {exc.strerror or exc}"
    return None
