"""File grants as path patterns, matched one folder level at a time.

A grant such as ``*.md`` or ``data/**/*.json`` is split at ``/`` into segments and
matched against the segments of a path, never against the path as one string: ``*``,
``?`` and ``[...]`` match inside one segment (so ``*`` never crosses ``/``), and a
segment that is exactly ``**`` matches any number of segments (none included).
``fnmatch`` on the whole string would let ``*`` match ``/``, and with it ``../x.md``
and ``/proc/self/environ``; here a relative pattern is only ever matched against the
path *relative to the workspace*, after it is resolved, and a path outside the
workspace has no relative form to match.
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from pathlib import Path, PurePosixPath

__all__ = ["has_glob", "literal_prefix", "matches", "matches_within", "segments"]

_GLOB_CHARS = "*?["


def has_glob(text: str) -> bool:
    """Whether ``text`` holds a glob character (``*``, ``?``, ``[``)."""
    return any(c in text for c in _GLOB_CHARS)


def segments(pattern: str) -> tuple[str, ...]:
    """The segments of ``pattern`` (``./`` and empty segments dropped; ``..`` kept, it matches nothing)."""
    return tuple(s for s in PurePosixPath(pattern).parts if s not in ("", ".", "/"))


def literal_prefix(pattern: str) -> tuple[str, ...]:
    """The leading segments of ``pattern`` that hold no glob character (``data/*/x`` -> ``data``)."""
    out = []
    for seg in segments(pattern):
        if has_glob(seg):
            break
        out.append(seg)
    return tuple(out)


def matches(pattern: str, path: Path | str | tuple[str, ...]) -> bool:
    """Whether ``pattern`` matches the whole of ``path`` (segments, or a path relative to the same base)."""
    parts = path if isinstance(path, tuple) else segments(str(path))
    return _match(segments(pattern), parts)


def matches_within(pattern: str, path: Path | str | tuple[str, ...]) -> bool:
    """Whether ``pattern`` matches ``path`` or one of its ancestors (a matched folder grants what is in it)."""
    parts = path if isinstance(path, tuple) else segments(str(path))
    pat = segments(pattern)
    return any(_match(pat, parts[:n]) for n in range(len(parts) + 1))


@lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Segment-wise match; ``**`` stands for any number of whole segments."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[n:]) for n in range(len(parts) + 1))
    if not parts or head == ".." or not fnmatch.fnmatchcase(parts[0], head):
        return False
    return _match(rest, parts[1:])
