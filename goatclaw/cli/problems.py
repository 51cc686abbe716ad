"""Problems as ``goatclaw validate`` prints them: one line each, or GitHub Actions annotations.

Apart from :mod:`goatclaw.cli.render`, and without rich (:mod:`goatclaw.cli.lines`), so that
``validate`` imports neither rich nor the store and the run's types.
"""

from __future__ import annotations

from typing import Any

from goatclaw.cli.lines import write_line
from goatclaw.errors import Problem

__all__ = ["print_problems"]


def _gh_data(text: str) -> str:
    """Escape a GitHub Actions workflow-command message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    """Escape a GitHub Actions workflow-command property value."""
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def print_problems(problems: list[Problem], out: Any, *, fmt: str = "text") -> None:
    """Located problems, one line each (``github``: Actions annotations), on ``out``: a stream or a rich Console."""
    for p in problems:
        if fmt == "github":
            loc = p.location
            where = f" file={_gh_property(loc.file)},line={loc.line},col={loc.col}" if loc else ""
            level = "warning" if p.severity == "warn" else "error"
            msg = _gh_data(f"{p.path}: {p.message}" if p.path else p.message)
            write_line(out, (f"::{level}{where}::{msg}", None))
        else:
            warn = p.severity == "warn"  # labelled: a warning does not fail validate, an error does
            write_line(out, (f"warning: {p}" if warn else str(p), "yellow" if warn else "red"))
