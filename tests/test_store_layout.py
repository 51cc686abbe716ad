"""One stored row a task: its start and plain end are read back from its row as events (goatclaw.store)."""

from __future__ import annotations

import asyncio
from typing import Any

import goatclaw
from goatclaw.events import Bus
from goatclaw.store import Store

PIPELINE = """
    version: 1
    tasks:
      a: {uses: echo, with: {message: a}}
      b: {uses: echo, needs: [a], if: "false"}
      c: {uses: echo, needs: [b]}
      each: {uses: echo, needs: [a], foreach: [1, 2, 3], with: {value: "${{ item }}"}}
      boom: {uses: fail, needs: [a], with: {message: nope}, retry: {attempts: 2, delay: 0s}}
      after: {uses: echo, needs: [boom]}
      slow: {uses: sleepy, needs: [a]}
    """


def _published(bus: Bus) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    bus.subscribe("*", lambda e: seen.append({"seq": e.seq, "ts": e.ts, "topic": e.topic, "task": e.task,
                                              "data": e.data}))
    return seen


def _registry() -> goatclaw.Registry:
    registry = goatclaw.Registry()

    async def sleepy(ctx: goatclaw.TaskContext) -> str:
        await asyncio.sleep(0.5)  # past the recorder's start flush (0.2 s): its start is stored while it runs
        return "late"

    def fail(ctx: goatclaw.TaskContext, message: str) -> None:
        raise goatclaw.TaskError(message, error_class="invalid_input")

    registry.register_task("sleepy", sleepy)
    registry.register_task("fail", fail)
    return registry


def test_the_stored_events_are_what_the_bus_heard(write_pipeline, project, store_path) -> None:
    bus = Bus()
    heard = _published(bus)
    result = goatclaw.run(write_pipeline(PIPELINE), registry=_registry(), bus=bus, cache=False)
    assert not result.ok
    with Store.open(store_path) as db:
        stored = db.events(result.run_id)
        raw = db.db.execute("SELECT COUNT(*) FROM events WHERE run_id = ?", (result.run_id,)).fetchone()[0]
        rows = {r[0]: r[1:] for r in db.db.execute(
            "SELECT task_id, started_seq, finished_seq FROM tasks WHERE run_id = ?", (result.run_id,))}
    kept = [e for e in heard if e["topic"] != "task.log"]
    assert [(e["seq"], e["topic"], e["task"]) for e in stored] == [(e["seq"], e["topic"], e["task"]) for e in kept]
    assert [e["data"] for e in stored] == [e["data"] for e in kept]
    assert [e["ts"] for e in stored] == [e["ts"] for e in kept]
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert raw < len(stored)  # some of them are the task rows
    assert rows["a"][0] is not None and rows["a"][1] is not None  # started and succeeded, kept in its row
    assert rows["b"][1] is not None  # skipped: a plain end
    assert rows["boom"] == (None, None)  # failed: its end has an error to say
    assert rows["each"][1] is None  # a fan-out's end says how many items
    assert rows["slow"][0] is None and rows["slow"][1] is not None  # running at a commit: its start is an event


def test_a_resumed_run_keeps_every_event_of_its_first_try(write_pipeline, project, store_path, tmp_path) -> None:
    flag = tmp_path / "fixed"
    registry = goatclaw.Registry()

    def flaky(ctx: goatclaw.TaskContext) -> str:
        if not flag.exists():
            raise goatclaw.TaskError("not yet", error_class="invalid_input")
        return "ok"

    registry.register_task("flaky", flaky)
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {message: a}}
          f: {uses: flaky, needs: [a]}
          z: {uses: echo, needs: [f], with: {message: z}}
          fin: {uses: echo, with: {message: cleanup}}
        """)
    first = goatclaw.run(path, registry=registry, cache=False)
    assert not first.ok
    with Store.open(store_path) as db:
        before = db.events(first.run_id)
    flag.write_text("yes")
    again = goatclaw.run(path, registry=registry, cache=False, resume=first.run_id)
    assert again.ok and again.run_id == first.run_id
    with Store.open(store_path) as db:
        after = db.events(first.run_id)
        left = db.db.execute("SELECT COUNT(*) FROM tasks WHERE run_id = ? AND started_seq IS NOT NULL "
                             "AND started_seq <= ?", (first.run_id, before[-1]["seq"])).fetchone()[0]
    assert after[:len(before)] == before  # the first try's events, task rows' ones included, are all still there
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    assert left == 0
    assert [e["topic"] for e in after if e["task"] == "f"][-1] == "task.succeeded"


def test_the_writer_process_is_used_only_where_it_has_a_core(monkeypatch) -> None:
    import os

    import pytest

    from goatclaw.engine import recorder

    big, small = recorder._PROCESS_WRITER_TASKS, recorder._PROCESS_WRITER_TASKS - 1
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert recorder._writer_wanted(big) and not recorder._writer_wanted(small)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.5, 1.0, 1.0))  # no two cores to spare: in-line is faster
    assert not recorder._writer_wanted(big)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # two cores: the writer would share one
    assert not recorder._writer_wanted(big)
    monkeypatch.setenv(recorder.WRITER_ENV, "process")
    assert recorder._writer_wanted(10)
    monkeypatch.setenv(recorder.WRITER_ENV, "inline")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not recorder._writer_wanted(big)
    monkeypatch.setenv(recorder.WRITER_ENV, "thread")
    with pytest.raises(goatclaw.GoatclawError, match="GOATCLAW_WRITER must be auto, process or inline, not 'thread'"):
        recorder._writer_wanted(big)
