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

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment

from goatclaw.cli.lines import _CONTROL, printable
from goatclaw.cli.streams import GuardedOutput, guarded_output

__all__ = ["GuardedOutput", "SafeConsole", "guarded_output", "printable"]



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
