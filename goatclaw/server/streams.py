"""A run's events as Server-Sent Events: what was stored, then what comes, until the run has ended.

The store is the truth: each turn reads the events after the last one sent (``seq``), so a
stream never skips or repeats one, whether the run is live in this server, live in another
process on the same store, or long finished. A run live in this server wakes its streams
through its bus (:meth:`goatclaw.server.runs.Job.woken`) instead of making them poll; every
other stream looks again every :data:`POLL` seconds. Idle streams get a comment every
:data:`HEARTBEAT` seconds, so that proxies keep them open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from goatclaw.server.runs import Job

__all__ = ["HEARTBEAT", "POLL", "after_of", "event_stream"]

#: Seconds between comments on an idle stream.
HEARTBEAT = 15.0
#: The longest a stream waits before looking at the store again.
POLL = 0.5


def after_of(request: Request) -> int:
    """The sequence number a client has seen: ``Last-Event-ID``, else ``?after=``, else 0."""
    text = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not text.isdigit():
        raise HTTPException(400, "Last-Event-ID (or ?after) must be an event's sequence number")
    return int(text)


async def event_stream(server: Any, served: Any, run_id: str, after: int) -> AsyncIterator[bytes]:
    """Stored events after ``after``, woken by the run's bus while it runs; ``end`` when it has ended."""
    last_sent = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        job = server.queue.job(run_id)
        woken = job.woken() if job is not None else None  # armed before reading: a wake-up is never missed

        def read(db: Any, since: int = after) -> tuple[list[dict[str, Any]], Any]:
            return db.events(run_id, after=since, limit=500), db.run(run_id)

        batch, row = await server.stores.call(served.store, read)
        for ev in batch:
            after = ev["seq"]
            text = json.dumps(ev, ensure_ascii=False, default=str)
            yield f"id: {ev['seq']}\nevent: {ev['topic']}\ndata: {text}\n\n".encode()
        if batch:
            last_sent = time.monotonic()
            continue
        ended = _ended(job, row)
        if ended is not None or server.stopped:
            status = ended or (row.status if row is not None else "unknown")
            yield f"event: end\ndata: {json.dumps({'run_id': run_id, 'status': status})}\n\n".encode()
            return
        if time.monotonic() - last_sent >= HEARTBEAT:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await _wait(woken, POLL)


def _ended(job: Job | None, row: Any) -> str | None:
    """The run's final status once nothing more will be stored for it, else ``None``."""
    if job is not None and job.state != "done":
        return None
    if row is None:
        return job.status if job is not None else "unknown"
    if row.status == "running" and not row.interrupted and (job is None or job.state != "done"):
        return None  # another process on this store runs it: follow it
    if row.status == "running" and job is not None and job.state == "done":
        return job.status or "failed"
    return "interrupted" if row.interrupted else str(row.status)


async def _wait(event: asyncio.Event | None, timeout: float) -> None:
    if event is None:
        await asyncio.sleep(timeout)
        return
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
