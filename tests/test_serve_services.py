"""What ``goatclaw serve`` runs beside the API, through real HTTP: schedules, webhooks, approval timeouts, /ui.

The app is :func:`goatclaw.server.services.serving_app` (what the ``serve`` command serves) on
uvicorn on 127.0.0.1 (tests/live_server.py), with httpx against it and the projects' real
SQLite stores. The schedules' and timeouts' clock is injected: a test moves time forward and
the scheduler fires, the overdue approval expires.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from live_server import live, make_project, run_to_end, store_of, token, wait_for

from goatclaw.server.services import serving_app
from goatclaw.server.settings import ServerSettings
from goatclaw.server.webhooks import sign
from goatclaw.store import Store

pytestmark = pytest.mark.timeout(120)

SECRET = "a-webhook-secret-of-the-tests"
T0 = datetime(2026, 12, 3, 8, 0, 30, tzinfo=UTC).timestamp()  # a Thursday; */5 fires next at 08:05


class ThreadClock:
    """Time that moves only by :meth:`advance` (from the test's thread); :meth:`sleep` waits for it (on the server's).

    A sleeper wakes once the clock has reached its deadline, so an advance made before a loop
    goes to sleep is not lost: that loop computes its next nap from the new time.
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self._lock = threading.Lock()
        self._sleepers: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Event]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        event = asyncio.Event()
        with self._lock:
            deadline = self.now + seconds
            if deadline <= self.now:
                return
            self._sleepers.append((deadline, asyncio.get_running_loop(), event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            due = [s for s in self._sleepers if s[0] <= self.now]
            self._sleepers = [s for s in self._sleepers if s[0] > self.now]
        for _, loop, event in due:
            loop.call_soon_threadsafe(event.set)

    def sleeping(self) -> int:
        with self._lock:
            return len(self._sleepers)


def write(folder: Path, name: str, text: str) -> None:
    path = folder / "pipelines" / name
    path.write_text(textwrap.dedent(text).lstrip())


def run_started(store: Path, run_id: str) -> dict:
    with Store.open(store) as db:
        row = db.db.execute("SELECT data FROM events WHERE run_id = ? AND topic = 'run.started'", (run_id,)).fetchone()
    return json.loads(row[0])


def audit_actions(store: Path) -> list[tuple[str, dict]]:
    with Store.open(store) as db:
        return [(a, json.loads(d)) for a, d in db.db.execute("SELECT action, detail FROM audit ORDER BY seq")]


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return make_project(tmp_path / "demo")


# -- schedules ----------------------------------------------------------------------------------


def test_a_schedule_fires_through_the_server_when_the_injected_clock_reaches_it(demo: Path) -> None:
    write(demo, "tick.yaml", """
        version: 1
        name: tick
        vars: {who: nobody}
        schedule: {cron: "*/5 * * * *", timezone: UTC, vars: {who: the-scheduler}}
        tasks:
          say: {uses: echo, with: {value: "tick for ${{ vars.who }}"}}
    """)
    clock = ThreadClock(T0)
    key = token(demo, "read")
    with live(serving_app([demo], clock=clock, sleep=clock.sleep)) as server, server.client(key) as http:
        wait_for(clock.sleeping)  # the schedule's loop (and the timeouts' loop) sleep toward their next times
        listing = http.get("/api/projects/demo/schedules").json()
        [entry] = listing["schedules"]
        assert entry["file"] == "pipelines/tick.yaml" and entry["cron"] == "*/5 * * * *"
        assert entry["next"] == T0 + 270 and listing["fires"] == []
        assert http.get("/api/projects/demo/runs").json()["runs"] == []  # nothing fires before its time

        clock.advance(269)
        time.sleep(0.3)
        assert http.get("/api/projects/demo/runs").json()["runs"] == []  # one second early: still nothing
        clock.advance(1)  # 08:05:00
        [row] = wait_for(lambda: http.get("/api/projects/demo/runs").json()["runs"])
        data = run_to_end(http, "demo", row["id"])
        assert data["status"] == "succeeded"
        assert {t["id"]: t["output"] for t in data["tasks"]} == {"say": "tick for the-scheduler"}
        fires = wait_for(lambda: [f for f in http.get("/api/projects/demo/schedules").json()["fires"]
                                  if f["action"] == "finished"])
        assert fires[0]["run_id"] == row["id"] and fires[0]["status"] == "succeeded" and fires[0]["late"] is False
        assert http.get("/api/projects/demo/schedules").json()["schedules"][0]["next"] == T0 + 570
        # the dashboard's pipelines page lists the schedule with the run it fired last
        [shown] = http.get("/ui/pipelines.json").json()["schedules"]
        assert shown["pipeline"] == "tick" and shown["cron"] == "*/5 * * * *" and shown["last_run"] == row["id"]
        assert shown["last_status"] == "succeeded" and len(shown["next"]) == 3
        page = http.get("/ui/pipelines").text
        assert "*/5 * * * *" in page and row["id"] in page
    store = store_of(demo)
    assert run_started(store, row["id"])["trigger"] == "schedule"
    fired = [d for a, d in audit_actions(store) if a == "schedule.fired"]
    assert len(fired) == 1 and fired[0]["principal"] == "schedule:tick" and fired[0]["path"] == "pipelines/tick.yaml"
    with Store.open(store) as db:  # remembered: a restart does not fire 08:05 again
        state = db.schedule_state()
    assert [v["done_until"] for v in state.values()] == [T0 + 270]


def test_a_read_token_sees_schedules_and_nobody_else_does(demo: Path) -> None:
    write(demo, "tick.yaml", 'version: 1\nname: tick\nschedule: "0 7 * * 1-5"\ntasks:\n  t: {uses: echo}\n')
    clock = ThreadClock(T0)
    with live(serving_app([demo], clock=clock, sleep=clock.sleep)) as server:
        with server.client() as anonymous:
            assert anonymous.get("/api/projects/demo/schedules").status_code == 401
        with server.client(token(demo, "read", projects=["other"], name="elsewhere")) as http:
            assert http.get("/api/projects/demo/schedules").status_code == 403


# -- webhooks -----------------------------------------------------------------------------------


DEPLOY = """
    version: 1
    name: deploy
    vars: {ref: none, sha: none}
    on:
      webhook:
        secret: DEPLOY_HOOK_SECRET
        schema:
          type: object
          required: [ref, head_commit]
          properties:
            ref: {type: string, pattern: "^refs/heads/"}
        vars: {ref: ref, sha: head_commit.id}
    tasks:
      say: {uses: echo, with: {value: "deploying ${{ vars.sha }} of ${{ vars.ref }}"}}
"""


def test_a_signed_webhook_starts_a_run_and_a_bad_signature_counts_against_the_sender(
        demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(demo, "deploy.yaml", DEPLOY)
    monkeypatch.setenv("DEPLOY_HOOK_SECRET", SECRET)
    body = json.dumps({"ref": "refs/heads/main", "head_commit": {"id": "abc123"}}).encode()
    good = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(SECRET, body)}
    settings = ServerSettings(threat_threshold=3, block_for=60)
    app = serving_app([demo], settings=settings)
    with live(app) as server, server.client() as http, server.client(token(demo, "read")) as reader:
        answer = http.post("/hooks/deploy", content=body, headers=good)  # no token: the signature is the proof
        assert answer.status_code == 202, answer.text
        assert answer.json()["pipeline"] == "deploy" and answer.json()["vars"] == ["ref", "sha"]
        run_id = answer.json()["run"]
        data = run_to_end(reader, "demo", run_id)
        assert data["status"] == "succeeded" and data["tasks"][0]["output"] == "deploying abc123 of refs/heads/main"
        delivered = {**good, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
        also = http.post("/hooks/demo/deploy", content=body, headers=delivered)  # the project-qualified path
        assert also.status_code == 202 and also.json()["run"] != run_id
        run_to_end(reader, "demo", also.json()["run"])
        replayed = http.post("/hooks/demo/deploy", content=body, headers=delivered)  # captured and sent again
        assert replayed.status_code == 409 and "received already" in replayed.json()["error"]
        elsewhere = http.post("/hooks/deploy", content=body, headers=delivered)  # again, on the home project's path
        assert elsewhere.status_code == 409

        unfit = json.dumps({"ref": "main", "head_commit": {"id": "x"}}).encode()
        resigned = {**good, "X-Hub-Signature-256": sign(SECRET, unfit)}
        refused = http.post("/hooks/deploy", content=unfit, headers=resigned)
        assert refused.status_code == 422 and "payload.ref" in json.dumps(refused.json())

        forged = http.post("/hooks/deploy", content=body, headers={**good, "X-Hub-Signature-256": sign("guess", body)})
        assert forged.status_code == 401 and "does not match" in forged.json()["error"]
        assert http.post("/hooks/deploy", content=body, headers={"Content-Type": "application/json"}).status_code == 401
        statuses = [http.post("/hooks/deploy", content=body, headers={**good, "X-Hub-Signature-256": "sha256=00"}
                              ).status_code for _ in range(3)]
        assert statuses[-1] == 403  # blocked for its threat score: even a good signature is refused now
        assert http.post("/hooks/deploy", content=body, headers=good).status_code == 403
    store = store_of(demo)
    with Store.open(store) as db:  # no refused call started a run (the reader shares the address: blocked too)
        assert len(db.runs(limit=10)) == 2
    assert run_started(store, run_id)["trigger"] == "webhook"
    received = [d for a, d in audit_actions(store) if a == "webhook.received"]
    assert [d["principal"] for d in received] == ["webhook:deploy", "webhook:deploy"]


# -- approval timeouts --------------------------------------------------------------------------


def test_an_overdue_approval_becomes_a_rejection_and_the_server_ends_its_run(demo: Path) -> None:
    write(demo, "release.yaml", """
        version: 1
        name: release
        tasks:
          build: {uses: echo, with: {value: built}}
          review:
            uses: approval
            needs: build
            approval: {message: Ship it?, timeout: 10m}
          publish: {uses: echo, needs: review, with: {value: published}}
    """)
    clock = ThreadClock(time.time())  # requests are stamped with the real time; the test moves past them
    key = token(demo, "run")
    with live(serving_app([demo], clock=clock, sleep=clock.sleep, approvals_every=30)) as server, \
            server.client(key) as http:
        run_id = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/release.yaml"}).json()["run_id"]
        assert run_to_end(http, "demo", run_id)["status"] == "waiting"
        clock.advance(300)  # five minutes: the timeouts' loop looks, nothing is overdue yet
        time.sleep(0.5)
        assert http.get(f"/api/projects/demo/runs/{run_id}").json()["status"] == "waiting"
        clock.advance(400)  # past the ten minutes
        data = wait_for(lambda: (d := http.get(f"/api/projects/demo/runs/{run_id}").json())["status"] == "failed"
                        and (d.get("server") or {}).get("state", "done") == "done" and d)
        tasks = {t["id"]: t for t in data["tasks"]}
        assert tasks["build"]["status"] == "succeeded" and tasks["review"]["status"] == "failed"
        assert "no decision within 600s" in json.dumps(tasks["review"])
        assert tasks.get("publish", {}).get("status") != "succeeded"
    actions = [a for a, _ in audit_actions(store_of(demo))]
    assert "approval.expired" in actions and "approval.timeout.resumed" in actions
    with Store.open(store_of(demo)) as db:  # build ran once: the resume kept it
        starts = sum(1 for e in db.events(run_id) if e["task"] == "build" and e["topic"] == "task.started")
    assert starts == 1


# -- the dashboard --------------------------------------------------------------------------------


def test_the_dashboard_is_served_at_ui_and_shows_what_triggered_each_run(demo: Path) -> None:
    pytest.importorskip("jinja2")
    key = token(demo, "run")
    with live(serving_app([demo])) as server, server.client(key) as http:
        run_id = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/hello.yaml"}).json()["run_id"]
        run_to_end(http, "demo", run_id)
        listed = http.get("/ui/runs.json")
        assert listed.status_code == 200, listed.text
        [row] = [r for r in listed.json()["runs"] if r["id"] == run_id]
        assert row["trigger"] == "api"
        page = http.get("/ui/runs")
        assert page.status_code == 200 and run_id in page.text
        with server.client() as nobody:
            assert nobody.get("/ui/runs.json", follow_redirects=False).status_code in (302, 303, 401)


def test_a_schedule_added_while_serving_is_taken_up_at_the_next_reload(demo: Path) -> None:
    clock = ThreadClock(T0)
    with live(serving_app([demo], clock=clock, sleep=clock.sleep)) as server, \
            server.client(token(demo, "read")) as http:
        assert http.get("/api/projects/demo/schedules").json()["schedules"] == []
        write(demo, "nightly.yaml", 'version: 1\nname: nightly\nschedule: "0 2 * * *"\ntasks:\n  t: {uses: echo}\n')
        clock.advance(61)  # the schedules are read again every minute
        listed = wait_for(lambda: http.get("/api/projects/demo/schedules").json()["schedules"])
        assert [(s["file"], s["cron"]) for s in listed] == [("pipelines/nightly.yaml", "0 2 * * *")]
        (demo / "pipelines" / "nightly.yaml").unlink()
        clock.advance(61)
        wait_for(lambda: http.get("/api/projects/demo/schedules").json()["schedules"] == [])
