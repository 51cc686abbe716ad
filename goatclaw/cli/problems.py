"""Problems as ``goatclaw validate`` prints them: one line each, or GitHub Actions annotations.

Apart from :mod:`goatclaw.cli.render` so that ``validate`` imports neither rich's tables,
trees and live display nor the store and the run's types.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from goatclaw.errors import Problem

__all__ = ["print_problems"]


def _gh_data(text: str) -> str:
    """Escape a GitHub Actions workflow-command message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    """Escape a GitHub Actions workflow-command property value."""
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def print_problems(problems: list[Problem], console: Console, *, fmt: str = "text") -> None:
    """Located problems, one line each (``github`` prints Actions annotations)."""
    for p in problems:
        if fmt == "github":
            loc = p.location
            where = f" file={_gh_property(loc.file)},line={loc.line},col={loc.col}" if loc else ""
            level = "warning" if p.severity == "warn" else "error"
            msg = _gh_data(f"{p.path}: {p.message}" if p.path else p.message)
            console.print(f"::{level}{where}::{msg}", markup=False, highlight=False, soft_wrap=True)
        else:
            warn = p.severity == "warn"  # labelled: a warning does not fail validate, an error does
            console.print(Text(f"warning: {p}" if warn else str(p), style="yellow" if warn else "red"), soft_wrap=True)
