"""Text a task wrote, made fit for a terminal line: bounded, escaped, never doubled.

Task output and errors come from plugins, servers and models: a 404's whole HTML page,
a failing script with its source, ANSI escapes, ``[bold]`` that rich would read as
markup. Every place the CLI shows such text goes through :func:`shown`, so a line in the
live table, the plain log, the summary and ``runs show`` is bounded the same way; the
store keeps the full text (``runs show --json``, ``runs events``).
"""

from __future__ import annotations

import re

from goatclaw.errors import error_line

__all__ = ["error_text", "item_label", "shown"]

#: C0 and C1 control characters (tab and newline are handled before), DEL, and the Unicode
#: line and paragraph separators and the bidirectional overrides that can make a line read backwards.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape_control(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def shown(text: object, *, lines: int = 1, width: int = 160) -> str:
    """``text`` as at most ``lines`` lines of at most ``width`` characters each, control characters escaped.

    Blank lines are skipped; what is left out is said (``… (+11 lines)``). Print the result
    as ``rich.text.Text`` or with ``markup=False``, never inside a markup string: rich's
    ``escape`` cannot keep a trailing backslash as written (it doubles it, or one is lost
    before a closing tag), so no escaping makes task text safe to splice into markup.
    """
    if text is None:
        return ""
    raw = str(text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    rows = [row.rstrip() for row in raw.split("\n") if row.strip()]
    kept = [_clip(_escape_control(row), width) for row in rows[:max(1, lines)]]
    rest = len(rows) - len(kept)
    if rest > 0:
        kept[-1] += f" … (+{rest} line{'s' if rest != 1 else ''})"
    out = "\n".join(kept)
    return out


def _clip(row: str, width: int) -> str:
    return row if len(row) <= width else row[: max(1, width - 1)] + "…"


def error_text(error_class: str | None, error: object, **bounds: int) -> str:
    """``class: message``, shown; the class only once when the message already starts with it.

    ``ValueError: ValueError: bad`` and ``budget: budget: …`` come from a message that
    names its class and a caller that adds it again.
    """
    return shown(error_line(error_class, error), **bounds)


def item_label(task: str | None, item: object) -> str:
    """``task`` or, for one item of a fan-out, ``task[2]``."""
    if item is None or item == -1:
        return str(task or "")
    return f"{task}[{item}]"
