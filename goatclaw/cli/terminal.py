r"""What reaches the terminal: text from tasks made printable, markup never read from data, closed pipes.

- :func:`printable` escapes control characters (``\x1b`` is shown as the four characters
  ``\x1b``), so a task's output or error cannot move the cursor, retitle the window or
  hide text; newlines and tabs stay.
- :class:`SafeConsole` is the console every command prints through: it reads rich markup
  only where a call asks for it (``markup=True``, for goatclaw's own styling), so a run
  named ``[/x]`` is printed as it is; and every segment it renders goes through
  :func:`printable`, whatever the renderable (tables, trees, the live view).
- :func:`guarded_output` makes a closed stdout or stderr (``goatclaw apply … | head -2``)
  quiet: further output goes nowhere, the command goes on and exits with its own code
  (output lost to a full disk is said once, and the code is at least 1).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.segment import Segment

__all__ = ["GuardedOutput", "SafeConsole", "guarded_output", "printable"]

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides and isolates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    r"""``text`` with its control characters escaped (``\x1b``, ``\x07``, ``\u202e``); newlines and tabs kept."""
    return _CONTROL.sub(_escaped, text)


class SafeConsole(Console):
    """A rich console that reads markup only when asked and escapes control characters in all it renders."""

    def __init__(self, *args: Any, markup: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, markup=markup, **kwargs)

    def render(self, renderable: Any, options: Any = None) -> Iterable[Segment]:
        """The segments of ``renderable``, their text made :func:`printable` (styling and control codes kept)."""
        for segment in super().render(renderable, options):
            if segment.control is None and _CONTROL.search(segment.text):
                yield Segment(printable(segment.text), segment.style)
            else:
                yield segment


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
