"""schedule: in a pipeline file: the timetable (goatclaw/schedule.py), its checks and `goatclaw schedules list`."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.schedule import MAX_CATCH_UP, Timetable
from goatclaw.spec.model import Schedule
from goatclaw.store import Store

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def local(t: float, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


def table(cron: str, *, tz: str = "Europe/Berlin", catch_up: str = "latest") -> Timetable:
    return Timetable.of(Schedule(cron=cron, timezone=tz, catch_up=catch_up))


def test_weekday_mornings_in_a_time_zone() -> None:
    t = table("0 7 * * 1-5")
    fires = t.upcoming(at(2026, 12, 3, 8, 0), 3)  # a Thursday, after 07:00
    assert [local(f) for f in fires] == ["2026-12-04T07:00:00+01:00", "2026-12-07T07:00:00+01:00",
                                         "2026-12-08T07:00:00+01:00"]
    assert t.next_after(at(2026, 12, 4, 7, 0)) == at(2026, 12, 7, 7, 0)  # strictly after: not the same fire again


def test_macros_and_utc_default() -> None:
    t = Timetable.of(Schedule(cron="@daily"))
    assert t.zone.key == "UTC"
    assert local(t.next_after(at(2026, 3, 1, 12, 0, tz=ZoneInfo("UTC"))), ZoneInfo("UTC")) == \
        "2026-03-02T00:00:00+00:00"


def test_spring_forward_a_missing_time_fires_once_after_the_gap() -> None:
    # 2026-03-29 in Berlin: 02:00 becomes 03:00, so 02:30 does not exist that day
    daily = table("30 2 * * *")
    fires = daily.upcoming(at(2026, 3, 28, 12, 0), 3)
    assert [local(f) for f in fires] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
                                         "2026-03-31T02:30:00+02:00"]
    every_half_hour = table("*/30 * * * *")
    fires = every_half_hour.upcoming(at(2026, 3, 29, 1, 0), 3)
    assert [local(f) for f in fires] == ["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00",
                                         "2026-03-29T03:30:00+02:00"]  # the missing hour is skipped
    assert fires[1] - fires[0] == 30 * 60  # real time goes on: half an hour between them


def test_fall_back_a_fixed_time_fires_once_an_interval_follows_the_clock() -> None:
    # 2026-10-25 in Berlin: 03:00 becomes 02:00 again, so 02:00-02:59 happens twice
    daily = table("30 2 * * *")
    fires = daily.upcoming(at(2026, 10, 24, 12, 0), 2)
    assert [local(f) for f in fires] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    every_half_hour = table("*/30 * * * *")
    fires = every_half_hour.upcoming(at(2026, 10, 25, 1, 45), 5)
    assert [local(f) for f in fires] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00",
                                         "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00",
                                         "2026-10-25T03:00:00+01:00"]
    assert all(b - a == 30 * 60 for a, b in itertools.pairwise(fires))
    # resuming from the second 02:00 (after a restart) does not fire the first pass again
    second = at(2026, 10, 25, 2, 0, fold=1)
    assert local(every_half_hour.next_after(second)) == "2026-10-25T02:30:00+01:00"


def test_missed_fires_per_catch_up() -> None:
    down, up = at(2026, 12, 1, 9, 30, tz=ZoneInfo("UTC")), at(2026, 12, 1, 14, 10, tz=ZoneInfo("UTC"))
    hourly = {c: table("0 * * * *", tz="UTC", catch_up=c) for c in ("latest", "all", "none")}
    assert [local(f, ZoneInfo("UTC"))[11:16] for f in hourly["all"].missed(down, up)] == \
        ["10:00", "11:00", "12:00", "13:00", "14:00"]
    assert [local(f, ZoneInfo("UTC"))[11:16] for f in hourly["latest"].missed(down, up)] == ["14:00"]
    assert hourly["none"].missed(down, up) == []
    assert hourly["latest"].missed(None, up) == []  # never seen before: nothing counts as missed
    assert hourly["latest"].missed(up, up) == []
    assert hourly["latest"].missed(at(2026, 12, 1, 14, 0, tz=ZoneInfo("UTC")), up) == []  # 14:00 was handled


def test_catch_up_all_is_bounded() -> None:
    minutely = table("* * * * *", tz="UTC", catch_up="all")
    start = at(2026, 1, 1, 0, 0, tz=ZoneInfo("UTC"))
    fires = minutely.missed(start, start + 86400)  # a day down: 1440 missed fires
    assert len(fires) == MAX_CATCH_UP and fires[-1] == start + 86400  # the latest ones
    latest = table("* * * * *", tz="UTC").missed(start - 365 * 86400, start)  # a year down, found at once
    assert latest == [start]


def test_validate_locates_bad_cron_and_time_zone(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {day: mon}
        schedule:
          - cron: "0 7 * * 1-8"
            timezone: Europe/Berln
          - "61 * * * *"
          - {cron: "@dailyy", name: a}
          - {cron: "* * *", name: a, vars: {nope: 1}}
        tasks:
          t: {uses: echo, with: {message: hi}}
        """)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    out = result.output
    assert f"{path}:4:11: schedule[0].cron: '0 7 * * 1-8' is not a valid cron expression: bad day-of-week" in out
    assert f"{path}:5:15: schedule[0].timezone: unknown time zone 'Europe/Berln'" in out
    assert f"{path}:6:5: schedule[1]: '61 * * * *' is not a valid cron expression: bad minute" in out
    assert f"{path}:7:12: schedule[2].cron: unknown cron shorthand '@dailyy'" in out
    assert f"{path}:8:12: schedule[3].cron: '* * *' has 3 fields; a cron expression has five" in out
    assert f"{path}:8:27: schedule[3].name: two schedules are named 'a'" in out
    assert f"{path}:8:37: schedule[3].vars.nope: the pipeline declares no var 'nope'" in out
    assert "Traceback" not in out


def test_schema_refuses_unknown_overlap_and_fields(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        schedule: {cron: "0 7 * * *", overlap: wait, catchup: all}
        tasks:
          t: {uses: echo, with: {message: hi}}
        """)
    _, problems = goatclaw.check(path)
    shown = [str(p) for p in problems]
    assert f"{path}:2:40: schedule.overlap: 'wait' is not one of ['skip', 'queue', 'cancel']" in shown
    assert f"{path}:2:46: schedule.catchup: unknown field 'catchup' (did you mean 'catch_up'?)" in shown


def test_a_valid_schedule_builds_the_model(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {region: eu}
        schedule:
          - "0 7 * * 1-5"
          - {name: nightly, cron: "30 2 * * *", timezone: Europe/Berlin, overlap: cancel, catch_up: all,
             vars: {region: us}}
        tasks:
          t: {uses: echo, with: {message: hi}}
        """)
    pipeline = goatclaw.load(path)
    first, nightly = pipeline.schedules
    assert (first.name, first.cron, first.timezone, first.overlap, first.catch_up) == ("0", "0 7 * * 1-5", "UTC",
                                                                                        "skip", "latest")
    assert (nightly.name, nightly.overlap, nightly.catch_up, dict(nightly.vars)) == ("nightly", "cancel", "all",
                                                                                      {"region": "us"})


def test_schedules_list_shows_the_next_fires_and_the_last(write_pipeline: Callable[..., Path], project: Path,
                                                          store_path: Path) -> None:
    write_pipeline("""
        version: 1
        name: report
        schedule: {cron: "0 7 * * 1-5", timezone: Europe/Berlin}
        tasks:
          t: {uses: echo, with: {message: hi}}
        """, name="pipelines/report.yaml")
    write_pipeline("version: 1\ntasks:\n  t: {uses: echo}\n", name="pipelines/plain.yaml")  # not scheduled
    now = datetime(2026, 12, 3, 8, 0, tzinfo=UTC).timestamp()
    entries = goatclaw.schedules(now=now, next=2)
    assert [(e["file"], e["schedule"], e["next"]) for e in entries] == [
        ("pipelines/report.yaml", "0", ["2026-12-04T07:00:00+01:00", "2026-12-07T07:00:00+01:00"])]
    with Store.open(store_path) as db:
        db.mark_schedule("pipelines/report.yaml", "0", cron="0 7 * * 1-5", done_until=now, fired=now - 3600,
                         run="r-1")
        db.mark_schedule("pipelines/report.yaml", "0", cron="0 7 * * 1-5", done_until=now - 10, status="succeeded")
        assert db.schedule_state()[("pipelines/report.yaml", "0")]["done_until"] == now  # never moves back
    result = CliRunner().invoke(app, ["schedules", "list", "--json", "--next", "1"])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert (entry["last_run"], entry["last_status"], entry["last_fire"]) == ("r-1", "succeeded", now - 3600)
    assert len(entry["next"]) == 1
    text = CliRunner().invoke(app, ["schedules", "list"])
    assert text.exit_code == 0 and "pipelines/report.yaml  report#0  '0 7 * * 1-5' Europe/Berlin" in text.output


def test_schedules_list_reports_an_invalid_scheduled_pipeline(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        schedule: "0 25 * * *"
        tasks:
          t: {uses: echo}
        """, name="pipelines/broken.yaml")
    result = CliRunner().invoke(app, ["schedules", "list"])
    assert result.exit_code == 2
    assert f"{path.resolve()}:2:11: schedule: '0 25 * * *' is not a valid cron expression: bad hour" in \
        result.output.replace("\n", "")


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4 *", "* * * * * *", "@reboot"])
def test_expressions_that_never_fire_or_are_not_five_fields_are_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        Timetable.of(Schedule(cron=expr))
