"""How big a value gets when written out, and the checks that keep one call of a template small.

A watchdog thread can stop a template that loops in Python, but not one C call:
``str * n``, ``sum`` over lists, a big-integer product, ``%`` formatting, ``"".join``
run to the end once they start. So the template sandbox asks here *before* each call
that can build something much bigger than its inputs, and refuses when the result
would pass a bound:

* :func:`weight`: about how many characters a value takes written out (a string its
  length, a number a few, a list the sum of its items). Shared references count each
  time they appear, so ``[x, x]`` weighs twice ``x``: a value built by doubling a list
  in a loop is refused long before ``|string`` or ``|tojson`` would spend hours on it.
* :data:`MAX_WEIGHT` bounds every string, list, tuple and dict a template builds, and
  :data:`MAX_INT_BITS` every integer (multiplying or dividing two of them then stays
  in the milliseconds).
* :func:`printf_size`, :func:`format_size`, :func:`replace_size`, :func:`join_size`:
  the size of a ``%``/``str.format``/``replace``/``join`` result, computed in linear
  time from the format and the arguments, without building it.

Everything raises :class:`TooLarge`; the template module turns it into a TemplateError.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["MAX_INT_BITS", "MAX_WEIGHT", "TooLarge", "bound", "check", "format_size", "join_size", "printf_size",
           "replace_size", "weight"]

#: The most characters (or items) one value built by a template may weigh.
MAX_WEIGHT = 10_000_000
#: The most bits one integer built by a template may have (about 30,000 decimal digits).
MAX_INT_BITS = 100_000
_NUMBER = 8  # the weight of a number, True or None: about the characters it takes written out
_SCALARS = frozenset({int, float, bool, type(None), complex})
_TEXT = (str, bytes, bytearray)
_VIEW_VALUE = 4096  # what one value of a read-only view (env, secrets) is taken to weigh in a format


class TooLarge(Exception):
    """A template operation would build a value past a bound (the message says which)."""


def bound(size: int, what: str = "characters") -> None:
    """Raise :class:`TooLarge` when ``size`` is past :data:`MAX_WEIGHT`."""
    if size > MAX_WEIGHT:
        raise TooLarge(f"result would exceed {MAX_WEIGHT:,} {what}")


def check(value: Any, memo: dict[int, tuple[Any, int]] | None = None) -> Any:
    """``value`` itself, after checking that it is within the bounds (strings and numbers in O(1))."""
    kind = type(value)
    if kind is str or kind is bytes:
        if len(value) > MAX_WEIGHT:
            raise TooLarge(f"result would exceed {MAX_WEIGHT:,} characters")
    elif kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise TooLarge(f"integer would exceed {MAX_INT_BITS:,} bits")
    elif kind not in _SCALARS:
        bound(weight(value, memo), "characters written out")
    return value


def weight(value: Any, memo: dict[int, tuple[Any, int]] | None = None) -> int:
    """About how many characters ``value`` takes written out; stops counting past :data:`MAX_WEIGHT`.

    ``memo`` (id -> (value, weight)) keeps the weights of containers seen in one render,
    so that a value built step by step is counted once per step; it holds each value so
    that its id cannot be reused while the memo lives.
    """
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value) + 2
    if kind in _SCALARS:
        return _NUMBER if kind is not int or value.bit_length() < 64 else _NUMBER + value.bit_length() // 3
    if memo is None:
        memo = {}
    try:
        return _container_weight(value, memo)
    except RecursionError:
        raise TooLarge("value is nested too deeply") from None


def _container_weight(value: Any, memo: dict[int, tuple[Any, int]]) -> int:
    seen = memo.get(id(value))
    if seen is not None:
        return seen[1]
    items = _items(value)
    if isinstance(value, range):  # its numbers, as if listed
        total = 2 + len(value) * (_NUMBER + 2)
    elif items is None:
        total = len(value) + 2 if isinstance(value, _TEXT) else _NUMBER
    else:
        total = 2
        for item in items:
            total += weight(item, memo) + 2
            if total > MAX_WEIGHT:
                break
    if not hasattr(value, "_Namespace__attrs"):  # a namespace changes with `set ns.x`: never remembered
        memo[id(value)] = (value, total)
    return total


def _items(value: Any) -> Iterable[Any] | None:
    """What a container holds, for counting; ``None`` for a value counted by its own size."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    if isinstance(value, (dict, MappingProxyType)):
        return (part for pair in value.items() for part in pair)
    if isinstance(value, Mapping):  # a view such as env: its keys, never its values (reading one may be audited)
        return (part for key in value for part in (key, 0))
    attrs = getattr(value, "_Namespace__attrs", None)  # jinja2's namespace(): its attributes
    if isinstance(attrs, dict):
        return (part for pair in attrs.items() for part in pair)
    return None


def join_size(parts: list[Any], sep: Any = "") -> int:
    """The length of ``sep.join(parts)`` (items counted by :func:`weight` when not strings)."""
    memo: dict[int, tuple[Any, int]] = {}
    total = len(sep) * max(len(parts) - 1, 0)
    for part in parts:
        total += len(part) if isinstance(part, _TEXT) else weight(part, memo)
        if total > MAX_WEIGHT:
            break
    return total


def replace_size(text: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    """The length of ``text.replace(old, new, count)``, counted without building it."""
    if not isinstance(old, type(text)) or not isinstance(new, type(text)) or len(new) <= len(old):
        return len(text)
    hits = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def printf_size(fmt: str | bytes, args: Any) -> int:
    """About the length of ``fmt % args``: one linear scan of the format (no regular expression).

    Each conversion adds its width and precision and the weight of the biggest argument;
    a ``*`` width is refused (its size comes from the data), as is a width of more digits
    than any real one has.
    """
    text = fmt.decode("latin-1") if isinstance(fmt, (bytes, bytearray)) else fmt
    conversions, widths = _printf_scan(text)
    return len(text) + widths + conversions * _biggest(args)


def _printf_scan(text: str) -> tuple[int, int]:
    """(conversions, sum of widths and precisions) in a printf format, parsed as CPython does."""
    conversions = widths = 0
    n = len(text)
    i = text.find("%")
    while i != -1:
        j = i + 1
        if j < n and text[j] == "(":  # a mapping key: parentheses nest, as in CPython
            depth, j = 1, j + 1
            while j < n and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            if depth:
                break  # an incomplete key: Python refuses the format
        while j < n and text[j] in "#0- +":
            j += 1
        for _ in range(2):  # the width, then the precision after a dot
            if j < n and text[j] == "*":
                raise TooLarge("'*' widths are not allowed in % formats")
            start = j
            while j < n and text[j].isdigit():
                j += 1
            if j - start > 9:
                raise TooLarge("a % format width is too large")
            widths += int(text[start:j] or 0)
            if not (j < n and text[j] == "."):
                break
            j += 1
        while j < n and text[j] in "hlL":
            j += 1
        if j < n and text[j] != "%":
            conversions += 1
        i = text.find("%", j + 1)
    return conversions, widths


def format_size(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """About the length of ``fmt.format(*args, **kwargs)``; nested specs are refused."""
    fields = total = 0
    for literal, name, spec, _ in string.Formatter().parse(fmt):
        total += len(literal)
        if name is None:
            continue
        if spec and "{" in spec:
            raise TooLarge("nested format specs are not allowed")
        fields += 1
        digits = "".join(c if c.isdigit() else " " for c in spec or "").split()
        if any(len(d) > 9 for d in digits):
            raise TooLarge("a format width is too large")
        total += sum(int(d) for d in digits)
    return total + fields * max(_biggest(args), _biggest(kwargs))


def _biggest(args: Any) -> int:
    """The weight of the biggest argument that a format may write (any of them, any number of times)."""
    memo: dict[int, tuple[Any, int]] = {}
    if isinstance(args, tuple):
        return max((weight(a, memo) for a in args), default=0)
    if isinstance(args, (dict, MappingProxyType)):
        return max((weight(v, memo) for v in args.values()), default=0)
    if isinstance(args, Mapping):  # a view such as secrets: reading every value would audit them all
        return _VIEW_VALUE
    return weight(args, memo)
