r"""What reaches the terminal: text from tasks made printable, markup never read from data, closed pipes.

- :func:`printable` escapes control characters (``\x1b`` is shown as the four characters
  ``\x1b``), so a task's output or error cannot move the cursor, retitle the window or
  hide text; newlines and tabs stay.
- :class:`SafeConsole` is the console every command prints through: it reads rich markup
  only where a call asks for it (``markup=True``, for goatclaw's own styling), so a run
  named ``[/x]`` is printed as it is; and every segment it renders goes through
  :func:`printable`, whatever the renderable (tables, trees, the live view).
- :func:`quiet_closed_pipes` makes a closed stdout or stderr (``goatclaw apply … | head -2``)
  quiet: further output goes nowhere, the command goes on and exits with its own code.
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

__all__ = ["SafeConsole", "printable", "quiet_closed_pipes"]

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


class _PipeGuard:
    """A text stream whose reader may go away: then writes are dropped instead of raising ``BrokenPipeError``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_by_reader = False

    def _close(self) -> None:
        # the bytes still buffered, and all later output, go to /dev/null: a later flush (ours, or the
        # interpreter's at exit) then succeeds instead of raising again
        self.closed_by_reader = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no file descriptor (a test's stream): dropping the writes is enough
            pass

    def _guarded(self, call: Any, *args: Any) -> Any:
        if self.closed_by_reader:
            return None
        try:
            return call(*args)
        except BrokenPipeError:
            self._close()
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EINVAL):  # EINVAL: Windows' word for a closed pipe
                raise
            self._close()
        return None

    def write(self, text: str) -> int:
        """Write ``text``; once the reader is gone, nothing (and no error)."""
        self._guarded(self._stream.write, text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each line."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush; once the reader is gone, nothing (and no error)."""
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def quiet_closed_pipes() -> Iterator[None]:
    """Inside, a closed stdout or stderr drops what is written to it; the command's exit code stays its own.

    :func:`goatclaw.cli.main` runs every command inside: a renderer that prints an event
    then never raises into the event bus (no subscriber errors, no dead letters), and the
    run is recorded as it really ended. Leaving flushes both streams, quietly.
    """
    saved = sys.stdout, sys.stderr
    if sys.stdout is not None and not isinstance(sys.stdout, _PipeGuard):
        sys.stdout = _PipeGuard(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None and not isinstance(sys.stderr, _PipeGuard):
        sys.stderr = _PipeGuard(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _PipeGuard):
                stream.flush()
        sys.stdout, sys.stderr = saved
