"""Task plugins: text statistics and URL slugs."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from goatclaw.plugin import TaskContext, fail, task

_WORD = re.compile(r"\b[\w'’-]+\b", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


@task(cacheable=True)
def text_stats(ctx: TaskContext, *, text: str, words_per_minute: int = 200) -> dict[str, Any]:
    """Count the characters, words and sentences of a text and estimate its reading time."""
    if words_per_minute < 1:
        fail("words_per_minute must be at least 1", error_class="invalid_input")
    words = _WORD.findall(text)
    sentences = len(_SENTENCE_END.findall(text.strip())) or (1 if words else 0)
    return {
        "chars": len(text),
        "words": len(words),
        "sentences": sentences,
        "reading_minutes": math.ceil(len(words) / words_per_minute) if words else 0,
    }


@task(cacheable=True)
def slugify(ctx: TaskContext, *, text: str, max_length: int = 60, separator: str = "-") -> str:
    """Turn a text into a URL slug: lower-case ASCII words joined by a separator."""
    if not text.strip():
        fail("text is empty", error_class="invalid_input")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = separator.join(words)
    return slug[:max_length].rstrip(separator)
