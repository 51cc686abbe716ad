"""Stored runs through the CLI: the event log, replay, dead letters, stats, health and pruning."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import goatclaw
from goatclaw import history
from goatclaw.cli.app import app
from goatclaw.liveness import current_owner
from goatclaw.store import Store

FAILING = """
    version: 1
    name: dl
    secrets: [TOKEN]
    permissions: {shell: true}
    tasks:
      first: {uses: echo, with: {value: 41}}
      boom:
        uses: shell
        needs: [first]
        retry: {attempts: 1}
        with:
          script: 'test -f fixed || exit 3; echo "$V"'
          env: {V: "${{ tasks.first.output }}", T: "${{ secrets.TOKEN }}"}
    """


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_events_are_stored_in_order_and_printed(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        name: ev
        tasks:
          a: {uses: echo, with: {value: 1}}
          b: {uses: echo, needs: [a], with: {value: 2}}
        """)
    assert cli("apply", str(path), "-o", "plain").exit_code == 0
    done = cli("runs", "events", "last", "--json")
    events = [json.loads(line) for line in done.output.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["topic"] == "run.started" and events[-1]["topic"] == "run.succeeded"
    followed = cli("runs", "events", "--follow")  # a finished run: prints everything and returns
    assert followed.exit_code == 0 and "task.succeeded" in followed.output


def test_replay_shows_the_run_again_without_running_it(write_pipeline: Callable[..., Path],
                                                       store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: rp
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    cli("apply", str(path), "-o", "plain")
    with Store.open(store_path) as db:
        before = len(db.runs())
    bus = goatclaw.Bus()
    seen: list[str] = []
    bus.subscribe("*", lambda ev: seen.append(ev.topic))
    from goatclaw import history

    count = history.replay(store_path, "last", bus)
    assert count == len(seen) and seen[0] == "run.started" and "task.succeeded" in seen
    shown = cli("runs", "replay", "-o", "plain")
    assert "a succeeded" in shown.output
    with Store.open(store_path) as db:
        assert len(db.runs()) == before


def test_a_task_that_fails_for_good_is_a_dead_letter_and_replays_in_context(
        write_pipeline: Callable[..., Path], project: Path, store_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TOKEN", "hush-hush-123")
    path = write_pipeline(FAILING)
    assert cli("apply", str(path), "-o", "plain").exit_code == 1
    listed = cli("dlq", "list", "--json")
    letters = json.loads(listed.output)
    assert len(letters) == 1 and letters[0]["task_id"] == "boom" and letters[0]["kind"] == "task"
    assert letters[0]["inputs"]["with"]["env"] == {"V": 41, "T": "***"}  # rendered, the secret masked
    assert "hush-hush" not in cli("dlq", "show", str(letters[0]["id"])).output

    (project / "fixed").write_text("")
    replayed = cli("dlq", "replay", str(letters[0]["id"]))
    assert replayed.exit_code == 0, replayed.output
    with Store.open(store_path) as db:
        runs = db.runs()
        assert runs[0].status == "succeeded"
        tasks = {t.task_id: t for t in db.tasks(runs[0].id)}
        assert set(tasks) == {"boom"}  # 'first' was taken from the original run, not run again
        assert tasks["boom"].output["stdout"] == "41\n"
        letter = db.dead_letter(letters[0]["id"])
        assert letter is not None and letter.replay_status and letter.replay_status.startswith("succeeded")


def test_a_subscriber_that_raises_is_a_dead_letter_not_a_failure(write_pipeline: Callable[..., Path],
                                                                  store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: sub
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    bus = goatclaw.Bus()

    def broken(ev: goatclaw.Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe("task.succeeded", broken)
    assert goatclaw.run(path, store=store_path, bus=bus).ok
    with Store.open(store_path) as db:
        (letter,) = db.dead_letters()
    assert letter.kind == "subscriber" and letter.topic == "task.succeeded" and letter.error == "subscriber bug"
    refused = CliRunner().invoke(app, ["dlq", "replay", str(letter.id)])
    assert refused.exit_code == 1 and "not a task" in refused.output


def test_stats_health_and_prune(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: st
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    for _ in range(3):
        cli("apply", str(path), "-o", "plain", "--no-cache")
    stats = json.loads(cli("stats", "--since", "7d", "--json").output)
    (row,) = stats["tasks"]
    assert row["task"] == "a" and row["count"] == 3 and row["success_rate"] == 1.0 and row["p95"] is not None
    health = json.loads(cli("health", "--json").output)
    assert health["integrity"] == "ok" and health["runs_24h"] == 3 and health["ok"]
    assert cli("runs", "prune", "--older-than", "1d").exit_code == 0
    with Store.open(store_path) as db:
        assert len(db.runs()) == 3
    cli("runs", "prune", "--older-than", "0s")
    with Store.open(store_path) as db:
        assert db.runs() == [] and db.integrity() == "ok"
        assert db.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0


def test_prune_drops_interrupted_runs_and_keeps_live_ones(write_pipeline: Callable[..., Path],
                                                          store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: st
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    for _ in range(2):
        cli("apply", str(path), "-o", "plain", "--no-cache")
    gone = subprocess.Popen(["true"])
    gone.wait()
    with Store.open(store_path) as db:
        live, dead = (r.id for r in db.runs())
        # one run still running in this very process, one left running by a process that is gone
        db.db.execute("UPDATE runs SET status = 'running', owner = ? WHERE id = ?", (current_owner(), live))
        db.db.execute("UPDATE runs SET status = 'running', owner = ? WHERE id = ?",
                      (current_owner().rsplit(":", 2)[0] + f":{gone.pid}:1", dead))
    health = json.loads(cli("health", "--json").output)
    assert health["interrupted_runs"] == [dead] and health["ok"]  # worth a look, not a broken store
    assert f"interrupted runs (their process is gone; --resume finishes them): {dead}" in cli("health").output
    assert cli("runs", "prune", "--older-than", "0s").exit_code == 0
    with Store.open(store_path) as db:
        assert [r.id for r in db.runs()] == [live]


def test_following_an_interrupted_run_ends(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: st
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    cli("apply", str(path), "-o", "plain", "--no-cache")
    gone = subprocess.Popen(["true"])
    gone.wait()
    with Store.open(store_path) as db:
        (run,) = db.runs()
        db.db.execute("UPDATE runs SET status = 'running', owner = ? WHERE id = ?",
                      (current_owner().rsplit(":", 2)[0] + f":{gone.pid}:1", run.id))
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        assert len(waits) < 5, "still following a run whose process is gone"

    seen = list(history.events(store_path, run.id, follow=True, sleep=sleep))
    assert seen[0]["topic"] == "run.started" and waits == []
