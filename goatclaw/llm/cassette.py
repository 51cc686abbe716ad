"""Cassettes: recorded model answers in a JSON file, so a run replays offline at $0.

The file is committed with the project; :class:`Cassette` reads it once (bounded, a
regular file only) and rewrites it atomically after every recorded answer.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from goatclaw.errors import TaskError
from goatclaw.userfile import read_bytes

__all__ = ["MAX_CASSETTE_BYTES", "Cassette"]

#: The largest cassette read (a regular file; a FIFO or device is refused).
MAX_CASSETTE_BYTES = 256 * 1024 * 1024


class Cassette:
    """Recorded answers in a JSON file, keyed by request hash; written after every record.

    The file maps each key to ``{model, request, response}`` where ``request`` is the
    masked request (no secrets, no API key) and ``response`` the answer as returned.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, Any] | None = None

    def entries(self) -> dict[str, Any]:
        """Every recorded exchange, read once."""
        if self._entries is None:
            try:
                doc = json.loads(read_bytes(self.path, limit=MAX_CASSETTE_BYTES)) if self.path.exists() else {}
            except (OSError, ValueError) as exc:
                raise TaskError(f"cassette {self.path} cannot be read: {exc}", error_class="invalid_input") from None
            self._entries = dict(doc.get("exchanges", {})) if isinstance(doc, dict) else {}
        return self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        """The recorded exchange for ``key``, if any."""
        return self.entries().get(key)

    def put(self, key: str, exchange: dict[str, Any]) -> None:
        """Record an exchange and rewrite the file atomically (sorted, so diffs stay small)."""
        with self._lock:
            self.entries()[key] = exchange
            doc = {"version": 1, "exchanges": dict(sorted(self.entries().items()))}
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

