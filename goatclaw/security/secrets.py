"""Masking declared secrets in everything goatclaw writes or shows.

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

An encoded form is also caught when it is wrapped over lines (``base64`` and
``base64.encodebytes`` break it every 76 columns, ``xxd -p`` every 60): a line break
(``\n`` or ``\r\n``) may stand between any two of its characters. With ``prefixes=N``
(what a cassette's recorded answers use), the first ``N`` or more characters of a secret
are masked too: a model that echoes most of a key has leaked it.

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

__all__ = ["MASK", "MIN_SECRET_CHARS", "PREFIX_CHARS", "Redactor", "forms"]

#: What a masked secret becomes.
MASK = "***"
MIN_SECRET_CHARS = 4
MIN_FORM_CHARS = 6
#: With ``prefixes``: how long a secret's leading part must be to be masked on its own.
PREFIX_CHARS = 12
#: Lines of hex or base64 text (any wrap width): one encoded form may be split over them.
#: (A line break is a real one or, inside JSON text, its escape ``\\n``.)
_WRAPPED = re.compile(r"[A-Za-z0-9+/_=-]+(?:(?:\r?\n|(?:\\r)?\\n)[A-Za-z0-9+/_=-]+)+")


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

    __slots__ = ("_names", "_pattern")

    def __init__(self, secrets: Mapping[str, str] | Iterable[str] = (), *, prefixes: int | None = None) -> None:
        items = secrets.items() if isinstance(secrets, Mapping) else ((str(i), v) for i, v in enumerate(secrets))
        by_form: dict[str, str] = {}
        for name, value in items:
            if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
                for form in forms(value):
                    by_form.setdefault(form, name)
                for size in range(max(prefixes or 0, MIN_FORM_CHARS), len(value)) if prefixes else ():
                    by_form.setdefault(value[:size], name)
        self._names = by_form
        ordered = sorted(by_form, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

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
        if _may_wrap(text) and pattern.search(_unwrapped(text)) is not None:
            # wrapped hex or base64: a block of lines that holds a form loses its line breaks and the form
            text = _WRAPPED.sub(self._unwrap_masked, text)
        return text

    def _unwrap_masked(self, block: re.Match[str]) -> str:
        joined = _unwrapped(block.group(0))
        return block.group(0) if self._pattern.search(joined) is None else self.mask(joined)  # type: ignore[union-attr]

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
            _may_wrap(text) and self._pattern.search(_unwrapped(text)) is not None)

    def found(self, text: str | None) -> list[str]:
        """The names of the secrets whose forms appear in ``text``, sorted."""
        if not text or self._pattern is None:
            return []
        texts = [text, _unwrapped(text)] if _may_wrap(text) else [text]
        return sorted({self._names[m.group(0)] for t in texts for m in self._pattern.finditer(t)})


def _may_wrap(text: str) -> bool:
    return "\n" in text or "\\n" in text


def _unwrapped(text: str) -> str:
    """``text`` without line breaks (nor their JSON escapes): where a wrapped form is whole again."""
    return text.replace("\r", "").replace("\n", "").replace("\\r", "").replace("\\n", "")


#: A redactor that masks nothing.
NOTHING = Redactor()
