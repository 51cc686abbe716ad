"""The server's connections to its stores: one per store file and worker thread, reused.

Opening a store runs its migrations check and sets WAL; a request should not pay that each
time. Every blocking store call of the server runs in a worker thread (:meth:`Stores.call`),
never on the event loop, and each thread keeps its own connection to each store (SQLite
connections are not shared between threads here). WAL lets these readers see what the runs'
writers commit, a batch at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from goatclaw.audit import audit_record
from goatclaw.store import Store

__all__ = ["Stores"]

T = TypeVar("T")


class Stores:
    """Thread-local, reused connections to store files; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Store] = []
        self._lock = threading.Lock()

    def connect(self, path: Path) -> Store:
        """The calling thread's connection to the store at ``path`` (opened, and migrated, on first use)."""
        opened: dict[Path, Store] | None = getattr(self._local, "stores", None)
        if opened is None:
            opened = self._local.stores = {}
        db = opened.get(path)
        if db is None:
            db = opened[path] = Store.open(path)
            with self._lock:
                self._all.append(db)
        return db

    async def call(self, path: Path, fn: Callable[[Store], T]) -> T:
        """``fn(store)`` in a worker thread, with that thread's connection to ``path``."""
        return await anyio.to_thread.run_sync(lambda: fn(self.connect(path)))

    async def audit(self, path: Path, action: str, detail: dict[str, object], *, run_id: str | None = None,
                    task_id: str | None = None) -> None:
        """Append one row to the audit chain of the store at ``path`` (raises when it cannot be written)."""
        await anyio.to_thread.run_sync(lambda: audit_record(self.connect(path), action, detail, run_id=run_id,
                                                            task_id=task_id))

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            for db in self._all:
                try:
                    db.close()
                except Exception:
                    pass
            self._all.clear()
