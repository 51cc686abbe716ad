"""stdout and stderr while a command runs: a reader that went away is quiet, a full disk is said once.

Apart from :mod:`goatclaw.cli.terminal` (which holds the rich console) so that every command,
``validate`` included, runs inside :func:`guarded_output` without importing rich.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["GuardedOutput", "guarded_output"]


class _OutputGuard:
    """A text stream that may stop taking output: then writes are dropped instead of raising into the caller.

    A reader that went away (``EPIPE``) is quiet; any other refusal (a full disk behind
    ``> out.txt``, ``/dev/full``) is kept in :attr:`lost` for the command to report once.
    """

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self.name = name
        self.closed = False
        self.lost: OSError | None = None

    def _close(self) -> None:
        # the bytes still buffered, and all later output, go to /dev/null: a later flush (ours, or the
        # interpreter's at exit) then succeeds instead of raising again
        self.closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no file descriptor (a test's stream): dropping the writes is enough
            pass

    def _guarded(self, call: Any, *args: Any) -> None:
        if self.closed:
            return
        try:
            call(*args)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EINVAL):  # EINVAL: Windows' word for a closed pipe
                self.lost = exc
            self._close()

    def write(self, text: str) -> int:
        """Write ``text``; once the stream refused, nothing (and no error)."""
        self._guarded(self._stream.write, text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each line."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush; once the stream refused, nothing (and no error)."""
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class GuardedOutput:
    """stdout and stderr while a command runs (:func:`guarded_output`), and what became of them."""

    def __init__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        self.guards = [_OutputGuard(s, n) for s, n in ((sys.stdout, "stdout"), (sys.stderr, "stderr"))
                       if s is not None and not isinstance(s, _OutputGuard)]

    def exit_code(self, code: int) -> int:
        """``code``, or 1 when output was lost to something other than a closed pipe (said once on stderr)."""
        lost = [g for g in self.guards if g.lost is not None]
        for guard in lost:
            if guard.name == "stdout" and sys.stderr is not None:
                try:
                    print(f"error: stdout: {guard.lost.strerror or guard.lost} (output was lost)", file=sys.stderr)
                except OSError:
                    pass
        return code or (1 if lost else 0)


@contextmanager
def guarded_output() -> Iterator[GuardedOutput]:
    """Inside, stdout and stderr never raise: a reader that went away is quiet, a full disk is reported after.

    :func:`goatclaw.cli.main` runs every command inside: a renderer that prints an event
    then never raises into the event bus (no subscriber errors, no dead letters), and the
    run is recorded as it really ended. ``goatclaw apply … | head -2`` exits with the
    run's own code; output lost to a full disk makes it 1 (:meth:`GuardedOutput.exit_code`).
    """
    state = GuardedOutput()
    for guard in state.guards:
        setattr(sys, guard.name, guard)
    try:
        yield state
    finally:
        for guard in state.guards:
            guard.flush()
        sys.stdout, sys.stderr = state.saved
