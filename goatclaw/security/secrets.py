r"""Masking declared secrets in everything goatclaw writes or shows.

A :class:`Redactor` is built once per run from the secret values. It knows each value
and the forms a common filter turns it into, so that a secret is caught inside a longer
string and after a transformation:

* as is, and JSON-escaped (quotes, backslashes and control characters, with and without
  ``ensure_ascii``);
* URL-encoded (``quote`` and ``quote_plus``);
* hex (lower and upper case);
* base64 and URL-safe base64, at each of the three alignments the value can have inside
  a longer encoded text (the characters that depend on neighbouring bytes are left out,
  so ``base64("user:" + secret)`` is caught too).

A base64 or hex form is also caught when it is wrapped over lines (``base64(1)``'s 76
columns, PEM's 64, a hex dump's rows): the line breaks, and their JSON escapes ``\n`` and
``\r``, may fall between any two of its characters. That second pattern only runs on a text
that holds a break. A redactor built with ``prefix=N`` also masks any N or more leading
characters of a secret (a model that echoes "your key begins sk-9f1c2e7a…").

All forms go into one compiled regular expression (an alternation, longest first), so
masking a text is one scan however many secrets there are. Values shorter than
:data:`MIN_SECRET_CHARS` are not masked (they would mask ordinary words); encoded forms
shorter than :data:`MIN_FORM_CHARS` are skipped for the same reason.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_SECRET_CHARS", "Redactor", "forms"]

#: What a masked secret becomes.
MASK = "***"
MIN_SECRET_CHARS = 4
MIN_FORM_CHARS = 6
#: A line break inside a wrapped encoded form, as is or JSON-escaped.
_BREAK = r"(?:\r|\n|\\r|\\n)*"
#: The characters base64 (both alphabets) and hex are written with.
_ENCODED = re.compile(r"[A-Za-z0-9+/_-]+")


def forms(value: str) -> set[str]:
    """Every text form of ``value`` that the redactor looks for."""
    found = {value}
    found.add(json.dumps(value)[1:-1])
    found.add(json.dumps(value, ensure_ascii=False)[1:-1])
    found.add(quote(value, safe=""))
    found.add(quote_plus(value, safe=""))
    found.add(quote(value))
    raw = value.encode("utf-8")
    found.add(raw.hex())
    found.add(raw.hex().upper())
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii").rstrip("=")
        # drop the characters that mix in the padding before, and the partial group after
        start = (0, 2, 3)[offset]
        end = len(encoded) - ((offset + len(raw)) % 3 != 0)
        middle = encoded[start:end]
        found.add(middle)
        found.add(middle.replace("+", "-").replace("/", "_"))
    return {f for f in found if len(f) >= MIN_FORM_CHARS or f == value}


class Redactor:
    """Masks secret values (and their encoded forms) with :data:`MASK`; built once per run.

    ``names`` maps a secret's name to its value (a plain sequence of values works too);
    the name is only used by :meth:`found`.
    """

    __slots__ = ("_names", "_pattern", "_prefixes", "_wrapped")

    def __init__(self, secrets: Mapping[str, str] | Iterable[str] = (), *, prefix: int | None = None) -> None:
        items = secrets.items() if isinstance(secrets, Mapping) else ((str(i), v) for i, v in enumerate(secrets))
        by_form: dict[str, str] = {}
        prefixes: list[str] = []
        prefix_names: list[tuple[str, str]] = []
        for name, value in items:
            if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
                for form in forms(value):
                    by_form.setdefault(form, name)
                if prefix is not None and len(value) > prefix >= MIN_SECRET_CHARS:
                    prefixes.append(_prefix_pattern(value, prefix))
                    prefix_names.append((value[:prefix], name))
        self._names = by_form
        self._prefixes = tuple(prefix_names)
        ordered = sorted(by_form, key=len, reverse=True)
        alternatives = [*prefixes, *map(re.escape, ordered)]
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None
        encoded = [f for f in ordered if _ENCODED.fullmatch(f)]
        self._wrapped = re.compile("|".join(_BREAK.join(map(re.escape, f)) for f in encoded)) if encoded else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str | None) -> str | None:
        """``text`` with every secret form replaced by ``***`` (``None`` stays ``None``)."""
        pattern = self._pattern
        if text is None or pattern is None:
            return text
        # a replacement can join two halves into a secret again ("a" + secret + "b" around a
        # secret that contains "***"); every pass shortens the text, so this ends
        while pattern.search(text) is not None:
            text = pattern.sub(MASK, text)
        wrapped = self._wrapped
        if wrapped is not None and _may_wrap(text):
            while wrapped.search(text) is not None:
                text = wrapped.sub(MASK, text)
        return text

    def mask_data(self, value: Any) -> Any:
        """``value`` with every string inside it (keys too) masked; other values unchanged."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {self.mask(k) if isinstance(k, str) else k: self.mask_data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mask_data(v) for v in value]
        return value

    def contains(self, text: str | None) -> bool:
        """Whether ``text`` holds any secret form."""
        if not text or self._pattern is None:
            return False
        return self._pattern.search(text) is not None or (
            self._wrapped is not None and _may_wrap(text) and self._wrapped.search(text) is not None)

    def found(self, text: str | None) -> list[str]:
        """The names of the secrets whose forms appear in ``text``, sorted."""
        if not text or self._pattern is None:
            return []
        names = {self._name_of(m.group(0)) for m in self._pattern.finditer(text)}
        if self._wrapped is not None:
            names.update(self._name_of(_JOINED.sub("", m.group(0))) for m in self._wrapped.finditer(text))
        return sorted(names - {""})

    def _name_of(self, form: str) -> str:
        if form in self._names:
            return self._names[form]
        # a prefix match: the secret it begins
        return next((name for start, name in self._prefixes if form.startswith(start)), "")


def _prefix_pattern(value: str, prefix: int) -> str:
    """A pattern for ``value``'s first ``prefix`` characters and as many more as follow, in order."""
    tail = ""
    for char in reversed(value[prefix:prefix + 256]):  # past that, the rest is masked a piece at a time
        tail = f"(?:{re.escape(char)}{tail})?"
    return re.escape(value[:prefix]) + tail


_JOINED = re.compile(r"\r|\n|\\r|\\n")


#: A redactor that masks nothing.
NOTHING = Redactor()


def _may_wrap(text: str) -> bool:
    """Whether ``text`` has a line break (or its JSON escape) a wrapped secret could span: the only case to look at."""
    return "\n" in text or "\r" in text or "\\n" in text or "\\r" in text
