"""Validator plugins: called as ``(output, **params)``; ``None``/``True`` passes, a string is the failure."""

from __future__ import annotations

import re
from typing import Any

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def is_slug(output: Any, *, max_length: int = 60) -> str | None:
    """The output is a lower-case slug (``a-z``, ``0-9`` and single dashes) of at most ``max_length``."""
    if not isinstance(output, str):
        return f"expected a slug string, got {type(output).__name__}"
    if not _SLUG.fullmatch(output):
        return f"'{output}' is not a slug (lower-case letters, digits and single dashes)"
    if len(output) > max_length:
        return f"'{output}' is longer than {max_length} characters"
    return None
