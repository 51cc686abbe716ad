"""``memory``: store, search and forget memories in the run's store from a pipeline.

A search returns JSON that later tasks use (``tasks.<id>.output.results``), for example
to put past failures and their fixes into an ``llm`` prompt::

    recall:
      uses: memory
      with: {action: search, query: "HTTP 503 from the search API", kind: failure, k: 3}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from goatclaw.errors import GoatclawError
from goatclaw.plugin import TaskContext, fail, task

__all__ = ["memory"]

_ACTIONS = ("store", "search", "forget")


@task(cacheable=False, side_effects=True)
def memory(ctx: TaskContext, *, action: Literal["store", "search", "forget"] = "search", query: str | None = None,
           text: str | None = None, k: int = 10, kind: str | None = None, min_score: float | None = None,
           filters: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
           id: int | None = None) -> dict[str, Any]:
    """Store, search or forget memories in the run's store.

    ``store``: ``text``, ``kind`` (default ``note``), ``metadata``. ``search``: ``query``,
    ``k``, ``kind``, ``min_score``, ``filters`` (metadata equality); returns
    ``{query, results: [{id, kind, text, metadata, count, score, origins, ...}]}``. ``forget``:
    ``id``, or ``kind``/``filters``. A memory stored from untrusted data (an ``llm`` or ``http``
    output, even through other tasks) keeps those ``origins``, and a search that finds it is
    untrusted output.
    """
    if action not in _ACTIONS:
        fail(f"action must be one of {', '.join(_ACTIONS)}, not '{action}'", error_class="invalid_input")
    if ctx.store_path is None:
        fail("the memory task needs the run's store (this run keeps none)", error_class="invalid_input")
    from goatclaw.memory.store import open_memory  # sqlite-vec and the embedder only when the task runs

    try:
        with open_memory(ctx.store_path) as mem:
            if action == "store":
                return _store(ctx, mem, text, kind or "note", metadata or {})
            if action == "search":
                if not query:
                    fail("search needs a query", error_class="invalid_input")
                hits = mem.search(_mask(ctx, query), k=k, kind=kind, filters=filters, min_score=min_score)
                ctx.untrusted({o for h in hits for o in h.origins}, "a memory stored from untrusted data")
                return {"query": query, "results": [h.to_dict() for h in hits]}
            return {"forgotten": mem.forget(id, kind=kind, filters=filters)}
    except GoatclawError as exc:
        fail(str(exc), error_class="invalid_input")


def _store(ctx: TaskContext, mem: Any, text: str | None, kind: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    if not text:
        fail("store needs text", error_class="invalid_input")
    meta = {"run": ctx.run_id, "task": ctx.task_id, **metadata}
    saved = mem.add(_mask(ctx, text), kind, meta, origins=ctx.origins)  # what is found later keeps where it came from
    return {"id": saved.id, "count": saved.count, "kind": saved.kind}


def _mask(ctx: TaskContext, text: str) -> str:
    """Declared secrets never reach the memory."""
    for value in sorted(ctx.secrets.values(), key=len, reverse=True):
        if value and len(value) >= 3:
            text = text.replace(value, "***")
    return text
