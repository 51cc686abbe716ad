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

    def __init__(self, secrets: Mapping[str, str] | Iterable[str] = ()) -> None:
        items = secrets.items() if isinstance(secrets, Mapping) else ((str(i), v) for i, v in enumerate(secrets))
        by_form: dict[str, str] = {}
        for name, value in items:
            if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
                for form in forms(value):
                    by_form.setdefault(form, name)
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
        return bool(text) and self._pattern is not None and self._pattern.search(text) is not None  # type: ignore[arg-type]

    def found(self, text: str | None) -> list[str]:
        """The names of the secrets whose forms appear in ``text``, sorted."""
        if not text or self._pattern is None:
            return []
        return sorted({self._names[m.group(0)] for m in self._pattern.finditer(text)})


#: A redactor that masks nothing.
NOTHING = Redactor()
