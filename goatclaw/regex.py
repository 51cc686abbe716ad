r"""Linear-time regular expressions: the one owner of google-re2.

Python's ``re`` backtracks: ``^(a+)+$`` takes seconds on 31 characters, and a scanner
pattern like ``rm\s+-[a-z]*r`` takes quadratic time on ``"rm -" + "r" * 100000``. Every
pattern that meets user- or content-supplied text (validation rules, JSON Schema
``pattern``, the threat scanner, format checks) is compiled here, by RE2, whose matching
time is linear in the text whatever the pattern. RE2 has no backreferences or lookaround.
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["RegexError", "compile_linear", "why_invalid"]


class RegexError(ValueError):
    """A pattern RE2 does not accept (the message says why)."""


@cache
def compile_linear(pattern: str, *, ignore_case: bool = False) -> Any:
    """``pattern`` compiled by RE2 (``search``, ``match``, ``finditer`` as in ``re``); raises :class:`RegexError`."""
    import re2

    options = re2.Options()
    options.log_errors = False
    if ignore_case:
        options.case_sensitive = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexError(why) from None


def why_invalid(pattern: str) -> str | None:
    """``None`` if RE2 accepts ``pattern``, else why not."""
    try:
        compile_linear(pattern)
    except RegexError as exc:
        return str(exc)
    return None
