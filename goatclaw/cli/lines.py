"""Lines in colour without rich: what ``goatclaw validate`` prints, and the helpers every command shares.

rich costs about 30 ms of imports, a sixth of what ``validate`` may take in all; the few
lines validate prints (``✓ file``, one line per problem) need a colour and escaped
control characters, not a layout engine. Colour follows the conventions rich follows:
``NO_COLOR`` turns it off, ``FORCE_COLOR`` on, else a terminal that is not ``dumb`` gets
it. :func:`escape` is rich's markup escape, imported when first used.
"""

from __future__ import annotations

import os
import re
from typing import Any, TextIO

__all__ = ["colours", "escape", "paint", "printable", "write_line"]

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides and isolates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CODES = {"red": "31", "green": "32", "yellow": "33", "bold red": "1;31"}


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    r"""``text`` with its control characters escaped (``\x1b``, ``\x07``, ``\u202e``); newlines and tabs kept."""
    return _CONTROL.sub(_escaped, text)


def escape(text: str) -> str:
    """``text`` with rich markup escaped (``[bold]`` shown as written), for a string printed with ``markup=True``."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def colours(stream: Any) -> bool:
    """Whether lines written to ``stream`` get colour (a console of rich's answers as rich decided)."""
    if hasattr(stream, "color_system"):  # a rich Console: its own decision (no_color, force_terminal, ...)
        return stream.color_system is not None and not stream.no_color
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def paint(text: str, colour: str | None, on: bool) -> str:
    """``text`` in ``colour`` (red, green, yellow, bold red) when ``on``; as it is otherwise."""
    if not on or not colour:
        return text
    return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"


def write_line(stream: Any, *parts: tuple[str, str | None]) -> None:
    """One line of ``(text, colour)`` parts on ``stream`` (a text stream, or a rich Console's file), escaped."""
    target: TextIO = getattr(stream, "file", stream)
    on = colours(stream)
    target.write("".join(paint(printable(text), colour, on) for text, colour in parts) + "\n")
