"""The question on the terminal for a tool call a task's ``approve:`` names (``goatclaw apply``).

Only when stdin and stderr are terminals: the question and the answer go through
``/dev/tty`` (so a redirected stdout does not swallow them), the live table is stopped
while asking, and anything but ``y``/``yes`` is a no. Elsewhere there is no approver and
the engine refuses those calls (``approval_required``).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["TerminalApprover", "terminal_approver"]


class TerminalApprover:
    """Asks ``task T wants to call tool(args…) — allow? [y/N]`` on the terminal; ``True`` for yes."""

    who = "terminal"

    def __init__(self, live: Any = None) -> None:
        self.live = live  # a rich Live display to stop while asking (set once the view exists)

    def __call__(self, asking: Any) -> bool:
        """One question, one answer line (blocking: the engine calls it off its event loop)."""
        live = self.live
        if live is not None:
            live.stop()
        try:
            with open("/dev/tty", "w", encoding="utf-8", errors="replace") as out, \
                    open("/dev/tty", encoding="utf-8", errors="replace") as tty:  # a tty cannot be opened r+ (no seek)
                out.write(asking.question)
                out.flush()
                answer = tty.readline()
        except OSError:
            return False
        finally:
            if live is not None:
                live.start()
        return answer.strip().lower() in ("y", "yes")


def terminal_approver() -> TerminalApprover | None:
    """An approver when stdin and stderr are terminals, else ``None`` (the calls are refused)."""
    try:
        if sys.stdin.isatty() and sys.stderr.isatty():
            return TerminalApprover()
    except (AttributeError, ValueError):  # a closed or replaced stream
        pass
    return None
