"""The dashboard's HTML: one Jinja2 environment over the templates shipped in ``templates/``.

The second owner of jinja2 in the package, beside :mod:`goatclaw.template`: that one is the
sandbox pipeline files are rendered in (no loader, strict, bounded); this one renders
goatclaw's own page templates, read from the package, with autoescaping on for every
template, so a task's output, an error or a model's answer is always shown as text.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from functools import cache
from typing import Any

import jinja2

__all__ = ["environment", "render"]


@cache
def environment() -> jinja2.Environment:
    """The page environment (built once): the package's templates, autoescaped, undefined names an error."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("goatclaw.server.ui", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(when=when, ago=ago, seconds=seconds, usd=usd, pretty=pretty, short=short)
    return env


def render(name: str, context: dict[str, Any]) -> str:
    """The template ``name`` rendered with ``context``."""
    return environment().get_template(name).render(context)


def when(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None) -> str:
    """How long ago ``ts`` was, roughly."""
    if ts is None:
        return "-"
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def seconds(s: float | None) -> str:
    """A duration as ``850ms``, ``12.3s``, ``4m05s`` or ``2h03m``."""
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def usd(value: float | None) -> str:
    """Dollars, with more digits for small amounts (``$0.0004``)."""
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if abs(value) < 1 else f"${value:,.2f}"


def pretty(value: Any, limit: int = 20_000) -> str:
    """A value as indented JSON text (escaped by the template like any text), cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def short(text: Any, limit: int = 120) -> str:
    """The first line of ``text``, cut at ``limit`` characters."""
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
