r"""Fast JSON text for the hot paths (events, stored rows), with the stdlib as the fallback.

``orjson`` encodes the small dicts of events about ten times faster than ``json``; it
refuses what ``json`` accepts with ``default=str`` only in corners (integers over 64
bits, lone surrogates), and those fall back to the stdlib encoder, so the text is always
produced.

:func:`storable` is the one place that makes text storable: a *lone surrogate* (a
character such as ``"\ud800"``, which Python strings can hold and UTF-8, hence SQLite,
cannot; a JSON body's ``"\ud800"`` escape decodes to one) becomes the six characters
``\ud800``. In JSON text that is the JSON escape of the very same character, so the
value reads back unchanged; in plain text (an error message) it shows what was there.
Every JSON text made here is storable; the store applies :func:`storable` to any other
row it is given that UTF-8 cannot encode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["dumps", "dumps_pretty", "plain", "storable"]

_OPTIONS = orjson.OPT_NON_STR_KEYS
_FALLBACK = json.JSONEncoder(ensure_ascii=False, default=str).encode
_PRETTY_FALLBACK = json.JSONEncoder(ensure_ascii=False, default=str, indent=2).encode
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    r"""``text`` with each lone surrogate written as its ``\uXXXX`` escape (UTF-8, and so SQLite, can hold it)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(value: Any) -> str:
    """``value`` as compact JSON text; anything JSON cannot hold becomes its ``str()``."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return storable(_FALLBACK(value))


def dumps_pretty(value: Any) -> str:
    """``value`` as JSON indented by two spaces (what the CLI prints); the stdlib for what orjson refuses."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS | orjson.OPT_INDENT_2).decode()
    except (TypeError, orjson.JSONEncodeError):
        return storable(_PRETTY_FALLBACK(value))


def plain(value: Any) -> Any:
    """A ``default=`` for JSON encoders: read-only mappings and sets (sorted) as JSON, the rest as text."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)
