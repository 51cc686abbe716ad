"""The event bus: inline priorities, queued subscribers by urgency, back-pressure, request/response."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import goatclaw
from goatclaw.events import Bus, Event, urgency


def ev(topic: str, seq: int = 1) -> Event:
    return Event(topic, "r", seq, 0.0, "t", {})


def test_inline_subscribers_run_by_priority_then_order() -> None:
    bus, seen = Bus(), []
    bus.subscribe("task.*", lambda e: seen.append("low"))
    bus.subscribe("*", lambda e: seen.append("high"), priority=10)
    bus.subscribe("task.started", lambda e: seen.append("low2"))
    bus.publish(ev("task.started"))
    assert seen == ["high", "low", "low2"]


def test_urgency_levels() -> None:
    assert urgency("task.failed") == urgency("breaker.opened") == urgency("run.finished") == 0
    assert urgency("task.started") == 1
    assert urgency("task.progress") == 2


def test_an_urgent_event_overtakes_a_flood_of_progress_events() -> None:
    async def main() -> list[str]:
        bus, seen = Bus(), []

        async def handler(e: Event) -> None:
            seen.append(e.topic)

        bus.subscribe_async("*", handler, maxsize=10_000)
        for i in range(500):
            bus.publish(ev("task.progress", i))
        bus.publish(ev("task.failed", 501))
        await bus.drain()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 501
    assert seen[0] == "task.failed"


def test_a_full_drop_mailbox_drops_the_least_urgent_oldest_event() -> None:
    async def main() -> tuple[list[str], int]:
        bus, seen = Bus(), []

        async def handler(e: Event) -> None:
            seen.append(f"{e.topic}#{e.seq}")

        bus.subscribe_async("*", handler, maxsize=3, overflow="drop")
        bus.publish(ev("task.progress", 1))
        bus.publish(ev("task.progress", 2))
        bus.publish(ev("task.started", 3))
        bus.publish(ev("task.failed", 4))  # full: drops progress#1
        bus.publish(ev("task.progress", 5))  # full: drops progress#2, the oldest of the least urgent
        bus.publish(ev("task.log", 6))  # full, and less urgent than all but progress#5 (same level, newer)
        await bus.drain()
        return seen, bus.dropped

    seen, dropped = asyncio.run(main())
    assert seen == ["task.failed#4", "task.started#3", "task.log#6"]
    assert dropped == 3


def test_subscribe_async_refuses_a_plain_function() -> None:
    with pytest.raises(TypeError, match="coroutine function"):
        Bus().subscribe_async("*", lambda e: None)  # type: ignore[arg-type,return-value]


def _pipeline(tmp_path: Path, n: int) -> Path:
    lines = ["version: 1", "name: bp", "concurrency: 4", "tasks:"]
    for i in range(n):
        lines += [f"  t{i}:", "    uses: echo", f"    with: {{value: {i}}}"]
    path = tmp_path / "bp.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_slow_queued_subscriber_holds_the_engine_back(tmp_path: Path) -> None:
    """Back-pressure: the mailbox never grows far past its bound, and the subscriber sees everything."""
    bus = Bus()
    seen: list[str] = []
    peak = 0

    async def slow(e: Event) -> None:
        await asyncio.sleep(0.001)
        seen.append(e.topic)

    bus.subscribe_async("task.*", slow, maxsize=8)
    box = bus._mailboxes[0]

    def watch(e: Event) -> None:
        nonlocal peak
        peak = max(peak, len(box.heap))

    bus.subscribe("*", watch)
    result = goatclaw.run(_pipeline(tmp_path, 60), store=tmp_path / "s.db", bus=bus, cache=False)
    assert result.ok
    assert seen.count("task.started") == 60 and seen.count("task.succeeded") == 60
    # without back-pressure all 120 events would queue up; with it, at most the bound plus
    # the events of the tasks already in flight (4 workers x 2 events)
    assert peak <= 8 + 4 * 2, peak


def test_a_failing_queued_subscriber_becomes_a_dead_letter(tmp_path: Path) -> None:
    bus = Bus()

    async def broken(e: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe_async("task.succeeded", broken)
    result = goatclaw.run(_pipeline(tmp_path, 3), store=tmp_path / "s.db", bus=bus, cache=False)
    assert result.ok  # a broken subscriber does not break the run
    db = sqlite3.connect(tmp_path / "s.db")
    rows = db.execute("SELECT kind, topic, error FROM dead_letters").fetchall()
    assert rows == [("subscriber", "task.succeeded", "subscriber bug")] * 3


def test_request_takes_the_first_answer_by_priority() -> None:
    async def main() -> tuple[object, object, object, int]:
        bus = Bus()
        bus.answer("approve.*", lambda e: None)  # no opinion
        bus.answer("approve.*", lambda e: "second", priority=1)

        async def first(e: Event) -> str:
            return f"first:{e.data['task']}"

        bus.answer("approve.deploy", first, priority=5)

        def broken(e: Event) -> str:
            raise ValueError("nope")

        bus.answer("approve.deploy", broken, priority=9)
        a = await bus.request("approve.deploy", {"task": "ship"})
        b = await bus.request("approve.other")
        c = await bus.request("nobody.listens", default="fallback")
        return a, b, c, len(bus.errors)

    a, b, c, errors = asyncio.run(main())
    assert (a, b, c) == ("first:ship", "second", "fallback")
    assert errors == 1  # the broken responder was recorded and skipped


def test_a_request_times_out_to_its_default() -> None:
    async def main() -> object:
        bus = Bus()

        async def slow(e: Event) -> str:
            await asyncio.sleep(5)
            return "late"

        bus.answer("ask", slow)
        return await bus.request("ask", timeout=0.05, default="timed out")

    assert asyncio.run(main()) == "timed out"
