"""The server's scheduler (goatclaw/server/scheduler.py): real runs through goatclaw.arun, the clock injected.

Each pipeline's task is a real plugin that waits for the test to let it finish, so a run is
"still running" exactly as long as a test needs; the clock moves only when the test says.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import goatclaw
from goatclaw.server.scheduler import Scheduler
from goatclaw.store import Store

T0 = datetime(2026, 12, 3, 8, 0, 30, tzinfo=UTC).timestamp()


class ManualClock:
    """Time that moves only by :meth:`advance`; :meth:`sleep` waits until it has moved."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._sleepers: list[asyncio.Event] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        event = asyncio.Event()
        self._sleepers.append(event)
        await event.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        sleepers, self._sleepers = self._sleepers, []
        for event in sleepers:
            event.set()


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (in real time) until ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Gate:
    """A task plugin whose runs wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = 0
        self.finished = 0

    async def __call__(self, ctx: Any, *, label: str = "") -> str:
        self.started += 1
        await self.open.wait()
        self.finished += 1
        return f"done {label}"


def setup(project: Path, schedule: str) -> tuple[Gate, goatclaw.Registry, Callable[..., Awaitable[Any]]]:
    (project / "pipelines").mkdir(exist_ok=True)
    (project / "pipelines" / "gated.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        name: gated
        vars: {{label: plain}}
        schedule: {schedule}
        tasks:
          wait: {{uses: gate, with: {{label: "${{{{ vars.label }}}}"}}}}
        """))
    gate = Gate()
    registry = goatclaw.Registry(entry_points=False)
    registry.register_task("gate", gate)

    async def trigger(pipeline_path: str, vars: dict[str, Any], trigger: str = "schedule") -> Any:
        assert trigger == "schedule"
        return await goatclaw.arun(pipeline_path, vars=vars, registry=registry)

    return gate, registry, trigger


def scheduler(project: Path, registry: goatclaw.Registry, trigger: Any, clock: ManualClock,
              store: Path) -> Scheduler:
    pipelines, problems = goatclaw.scheduled_pipelines(registry=registry)
    assert problems == []
    return Scheduler(project, trigger, store=store, pipelines=pipelines, clock=clock, sleep=clock.sleep)


def actions(s: Scheduler) -> list[tuple[str, str]]:
    return [(datetime.fromtimestamp(f.at, UTC).strftime("%H:%M"), f.action) for f in s.history]


def stored_runs(store: Path) -> list[str]:
    with Store.open(store) as db:
        return sorted(r.status for r in db.runs(pipeline="gated"))


def test_skip_a_fire_while_the_last_run_runs(project: Path, store_path: Path) -> None:
    gate, registry, trigger = setup(project, '{cron: "* * * * *", overlap: skip}')
    clock = ManualClock(T0)

    async def main() -> Scheduler:
        s = scheduler(project, registry, trigger, clock, store_path)
        await s.start()
        clock.advance(30)  # 08:01: the first fire
        await until(lambda: gate.started == 1)
        clock.advance(60)  # 08:02: its run still waits at the gate
        await until(lambda: ("08:02", "skipped") in actions(s))
        gate.open.set()
        await until(lambda: ("08:01", "finished") in actions(s))
        clock.advance(60)  # 08:03: nothing runs any more, so it fires
        await until(lambda: actions(s).count(("08:03", "finished")) == 1)
        await s.stop()
        return s

    s = asyncio.run(main())
    assert actions(s) == [("08:01", "fired"), ("08:02", "skipped"), ("08:01", "finished"), ("08:03", "fired"),
                          ("08:03", "finished")]
    assert gate.started == 2 and stored_runs(store_path) == ["succeeded", "succeeded"]
    with Store.open(store_path) as db:
        state = db.schedule_state()[("pipelines/gated.yaml", "0")]
    assert state["done_until"] == T0 + 150 and state["last_fire"] == T0 + 150 and state["last_status"] == "succeeded"
    assert state["last_run"] == s.history[-1].run_id


def test_queue_one_fire_behind_the_running_run(project: Path, store_path: Path) -> None:
    gate, registry, trigger = setup(project, '{cron: "* * * * *", overlap: queue}')
    clock = ManualClock(T0)

    async def main() -> Scheduler:
        s = scheduler(project, registry, trigger, clock, store_path)
        await s.start()
        clock.advance(30)
        await until(lambda: gate.started == 1)
        clock.advance(60)  # 08:02 queued behind the 08:01 run
        await until(lambda: ("08:02", "queued") in actions(s))
        clock.advance(60)  # 08:03: one is queued already
        await until(lambda: ("08:03", "skipped") in actions(s))
        assert gate.started == 1
        gate.open.set()  # the 08:01 run ends, and the queued one starts at once
        await until(lambda: ("08:02", "finished") in actions(s))
        await s.stop()
        return s

    s = asyncio.run(main())
    assert actions(s) == [("08:01", "fired"), ("08:02", "queued"), ("08:03", "skipped"), ("08:01", "finished"),
                          ("08:02", "fired"), ("08:02", "finished")]
    assert stored_runs(store_path) == ["succeeded", "succeeded"]


def test_cancel_the_running_run_for_the_new_fire(project: Path, store_path: Path) -> None:
    gate, registry, trigger = setup(project, '{cron: "* * * * *", overlap: cancel}')
    clock = ManualClock(T0)

    async def main() -> Scheduler:
        s = scheduler(project, registry, trigger, clock, store_path)
        await s.start()
        clock.advance(30)
        await until(lambda: gate.started == 1)
        clock.advance(60)  # 08:02: the 08:01 run is cancelled and a new one starts
        await until(lambda: gate.started == 2)
        gate.open.set()
        await until(lambda: ("08:02", "finished") in actions(s))
        await s.stop()
        return s

    s = asyncio.run(main())
    assert actions(s) == [("08:01", "fired"), ("08:01", "cancelled"), ("08:02", "fired"), ("08:02", "finished")]
    assert stored_runs(store_path) == ["cancelled", "succeeded"]
    assert gate.finished == 1


@pytest.mark.parametrize(("catch_up", "expected"), [
    ("latest", [("12:00", "fired"), ("12:00", "finished")]),
    ("all", [(f"{h:02}:00", a) for h in (9, 10, 11, 12) for a in ("fired", "finished")]),
    ("none", [("09:00", "skipped")]),  # noted once, at the first missed fire
])
def test_a_restart_catches_up_what_it_missed(project: Path, store_path: Path, catch_up: str,
                                             expected: list[tuple[str, str]]) -> None:
    gate, registry, trigger = setup(project, f'{{cron: "0 * * * *", catch_up: {catch_up}, vars: {{label: hourly}}}}')
    gate.open.set()  # every run finishes at once
    first = ManualClock(datetime(2026, 12, 3, 7, 59, 30, tzinfo=UTC).timestamp())

    async def before_the_outage() -> Scheduler:
        s = scheduler(project, registry, trigger, first, store_path)
        await s.start()
        first.advance(30)  # 08:00 fires
        await until(lambda: ("08:00", "finished") in actions(s))
        await s.stop()
        return s

    assert actions(asyncio.run(before_the_outage())) == [("08:00", "fired"), ("08:00", "finished")]
    later = ManualClock(datetime(2026, 12, 3, 12, 30, 0, tzinfo=UTC).timestamp())  # down from 08:00 to 12:30

    async def after_it() -> Scheduler:
        s = scheduler(project, registry, trigger, later, store_path)
        await s.start()
        await until(lambda: len(s.history) >= len(expected) and not any(x["running"] for x in s.status()))
        await asyncio.sleep(0.1)  # nothing more comes
        await s.stop()
        return s

    s = asyncio.run(after_it())
    assert actions(s) == expected  # none: the missed ones are skipped, noted once at the first missed hour
    assert all(f.late for f in s.history)
    assert [x["next"] for x in s.status()] == [datetime(2026, 12, 3, 13, 0, tzinfo=UTC).timestamp()]
    assert len(stored_runs(store_path)) == 1 + sum(a == "finished" for _, a in expected)
    with Store.open(store_path) as db:
            assert all(r.vars == {"label": "hourly"} for r in db.runs(pipeline="gated"))  # the schedule's vars


def test_a_restart_in_the_same_minute_does_not_fire_again(project: Path, store_path: Path) -> None:
    gate, registry, trigger = setup(project, '"* * * * *"')
    gate.open.set()
    clock = ManualClock(T0)

    async def twice() -> tuple[Scheduler, Scheduler]:
        a = scheduler(project, registry, trigger, clock, store_path)
        await a.start()
        clock.advance(30)
        await until(lambda: ("08:01", "finished") in actions(a))
        await a.stop()
        clock.advance(10)  # 08:01:10, restarted
        b = scheduler(project, registry, trigger, clock, store_path)
        await b.start()
        await asyncio.sleep(0.2)
        clock.advance(50)  # 08:02 is the next fire
        await until(lambda: ("08:02", "finished") in actions(b))
        await b.stop()
        return a, b

    _, b = asyncio.run(twice())
    assert actions(b) == [("08:02", "fired"), ("08:02", "finished")]
    assert stored_runs(store_path) == ["succeeded", "succeeded"]


def test_stop_cancels_the_running_run_and_ends_every_loop(project: Path, store_path: Path) -> None:
    gate, registry, trigger = setup(project, '"* * * * *"')
    clock = ManualClock(T0)

    async def main() -> set[asyncio.Task[Any]]:
        s = scheduler(project, registry, trigger, clock, store_path)
        await s.start()
        clock.advance(30)
        await until(lambda: gate.started == 1)
        await s.stop()
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(main()) == set()
    assert stored_runs(store_path) == ["cancelled"]
    with Store.open(store_path) as db:
        assert db.schedule_state()[("pipelines/gated.yaml", "0")]["last_status"] == "cancelled"


def test_a_trigger_that_raises_is_reported_and_the_schedule_goes_on(project: Path, store_path: Path) -> None:
    _, registry, _ = setup(project, '"* * * * *"')
    clock = ManualClock(T0)
    errors: list[str] = []
    calls = 0

    async def broken(pipeline_path: str, vars: dict[str, Any], trigger: str = "schedule") -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("the queue is full")

    async def main() -> Scheduler:
        pipelines, _ = goatclaw.scheduled_pipelines(registry=registry)
        s = Scheduler(project, broken, store=store_path, pipelines=pipelines, clock=clock, sleep=clock.sleep,
                      on_error=errors.append)
        await s.start()
        clock.advance(60)
        await until(lambda: len(errors) == 1)
        clock.advance(60)
        await until(lambda: len(errors) == 2)
        await s.stop()
        return s

    s = asyncio.run(main())
    assert [a for _, a in actions(s)] == ["fired", "failed", "fired", "failed"]
    assert "the run of 2026-12-03T08:01:00+00:00 could not start: RuntimeError: the queue is full" in errors[0]


def test_a_project_folder_with_its_own_store_by_default(project: Path, store_path: Path) -> None:
    (project / "pipelines").mkdir()
    (project / "pipelines" / "tick.yaml").write_text(
        'version: 1\nname: tick\nschedule: "*/5 * * * *"\ntasks:\n  t: {uses: echo, with: {message: tick}}\n')
    (project / "pipelines" / "broken.yaml").write_text(
        'version: 1\nschedule: "0 0 31 2 *"\ntasks:\n  t: {uses: echo}\n')
    clock = ManualClock(T0)
    errors: list[str] = []

    async def trigger(pipeline_path: str, vars: dict[str, Any], trigger: str = "schedule") -> Any:
        return await goatclaw.arun(pipeline_path, vars=vars)

    async def main() -> Scheduler:
        s = Scheduler(str(project), trigger, clock=clock, sleep=clock.sleep, on_error=errors.append)
        await s.start()
        clock.advance(5 * 60)  # 08:05:30: the 08:05 fire, 30 s late, is on time
        await until(lambda: ("08:05", "finished") in actions(s))
        await s.stop()
        return s

    s = asyncio.run(main())
    assert [f.late for f in s.history] == [False, False] and s.history[-1].status == "succeeded"
    assert [x["file"] for x in s.status()] == ["pipelines/tick.yaml"]
    assert len(errors) == 1 and errors[0].startswith("not scheduled: ") and "broken.yaml:2:11: schedule:" in errors[0]
    with Store.open(store_path) as db:  # goatclaw.yaml's store, where the runs are too
        assert db.schedule_state()[("pipelines/tick.yaml", "0")]["last_run"] == s.history[-1].run_id
        assert db.run(s.history[-1].run_id or "") is not None


def test_a_trigger_that_is_not_a_coroutine_is_reported_and_does_not_end_the_loop(project: Path,
                                                                                 store_path: Path) -> None:
    _, registry, _ = setup(project, '"* * * * *"')
    clock = ManualClock(T0)
    errors: list[str] = []

    def not_async(pipeline_path: str, vars: dict[str, Any], trigger: str = "schedule") -> str:
        return "r-1"  # returns at once, not an awaitable

    async def main() -> Scheduler:
        pipelines, _ = goatclaw.scheduled_pipelines(registry=registry)
        s = Scheduler(project, not_async, store=store_path, pipelines=pipelines, clock=clock, sleep=clock.sleep,
                      on_error=errors.append)
        await s.start()
        clock.advance(30)
        await until(lambda: len(errors) == 1)
        clock.advance(60)  # the loop slept MAX_NAP, and tries the next fire
        await until(lambda: len(errors) == 2)
        await s.stop()
        return s

    s = asyncio.run(main())
    assert errors[0].startswith("schedule pipelines/gated.yaml#0: TypeError: ")
    assert list(s.history) == []  # nothing counts as fired


def test_reload_takes_up_edited_new_and_removed_schedules(project: Path, store_path: Path) -> None:
    folder = project / "pipelines"
    folder.mkdir()

    def write(name: str, cron: str) -> None:
        (folder / f"{name}.yaml").write_text(
            f'version: 1\nname: {name}\nschedule: "{cron}"\ntasks:\n  t: {{uses: echo, with: {{message: {name}}}}}\n')

    write("a", "*/5 * * * *")
    write("b", "0 * * * *")
    clock = ManualClock(T0)  # 08:00:30

    async def trigger(pipeline_path: str, vars: dict[str, Any], trigger: str = "schedule") -> Any:
        return await goatclaw.arun(pipeline_path, vars=vars)

    async def main() -> Scheduler:
        s = Scheduler(project, trigger, clock=clock, sleep=clock.sleep)
        await s.start()
        assert [(x["file"], x["cron"]) for x in s.status()] == [("pipelines/a.yaml", "*/5 * * * *"),
                                                                ("pipelines/b.yaml", "0 * * * *")]
        write("a", "* * * * *")  # edited
        (folder / "b.yaml").unlink()  # removed
        write("c", "*/2 * * * *")  # new
        await s.reload()
        assert [(x["file"], x["cron"]) for x in s.status()] == [("pipelines/a.yaml", "* * * * *"),
                                                                ("pipelines/c.yaml", "*/2 * * * *")]
        clock.advance(30)  # 08:01: a, under its new cron
        await until(lambda: len([f for f in s.history if f.action == "finished"]) == 1)
        clock.advance(60)  # 08:02: a and c
        await until(lambda: len([f for f in s.history if f.action == "finished"]) == 3)
        clock.advance(58 * 60)  # 09:00: a's and c's fires since 08:02 are late, caught up once each; b is gone
        await until(lambda: len([f for f in s.history if f.action == "finished"]) == 5)
        await asyncio.sleep(0.2)
        await s.stop()
        return s

    s = asyncio.run(main())
    fired = sorted((f.pipeline, datetime.fromtimestamp(f.at, UTC).strftime("%H:%M")) for f in s.history
                   if f.action == "fired")
    assert ("pipelines/b.yaml", "09:00") not in fired
    assert [f for f in fired if f[1] in ("08:01", "08:02")] == [("pipelines/a.yaml", "08:01"),
                                                                ("pipelines/a.yaml", "08:02"),
                                                                ("pipelines/c.yaml", "08:02")]
