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
plugin holds the event loop, and hand the cancellation to the loop thread-safely.

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
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["STOP_SIGNALS", "Cancelled", "run", "store_failure"]

T = TypeVar("T")

#: The signals that cancel a run.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


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
        # after a stop signal the command is on its way out with 128 + signal: a further signal (the second
        # Ctrl-C landing after the run ended) must not kill the process before it exits with that code
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if self.signum is not None else handler)
        self.previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        try:
            self.loop.call_soon_threadsafe(self._cancel)  # never touch the loop from inside a handler
        except RuntimeError:  # the loop is closed: the run is over
            pass

    def _cancel(self) -> None:
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
