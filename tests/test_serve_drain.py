"""SIGTERM drains ``goatclaw serve`` (a real subprocess): short runs finish, long ones are cancelled, resumable.

The server runs as a user starts it (``python -m goatclaw serve --project DIR --port P
--grace 3s``). Two runs are in flight when SIGTERM comes: one that ends within the grace
period (it succeeds), one that would sleep for a minute (it is cancelled, recorded so); a
third waits in the queue (recorded as never started). A second server then resumes both
unfinished runs under their own ids, and what had finished does not run again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from live_server import make_project, wait_for

from goatclaw.server import accounts
from goatclaw.store import Store

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(folder: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "serve", "--project", str(folder), "--port",
                             str(port), "--log-level", "warning", *extra], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, 30, 0.1)
    return proc


def _task_done(answer: httpx.Response, task: str) -> bool:
    assert answer.status_code == 200, answer.text
    return any(t["id"] == task and t["status"] in ("succeeded", "cached") for t in answer.json()["tasks"])


def test_sigterm_drains_then_cancels_and_the_runs_resume(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "demo", server="runs: {max_running: 2, max_queued: 5}")
    key, _ = accounts.create_token(folder / ".goatclaw" / "goatclaw.db", "ci", ["run"])
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/projects/demo"
    proc = start(folder, port, "--grace", "3s")
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            short = http.post(url + "/runs", json={"pipeline": "pipelines/slow.yaml", "vars": {"seconds": 1}}
                              ).json()["run_id"]
            long = http.post(url + "/runs", json={"pipeline": "pipelines/slow.yaml", "vars": {"seconds": 60}}
                             ).json()["run_id"]
            queued = http.post(url + "/runs", json={"pipeline": "pipelines/hello.yaml"}).json()["run_id"]
            for run_id in (short, long):  # both past `first`: `wait` is sleeping
                wait_for(lambda r=run_id: _task_done(http.get(f"{url}/runs/{r}"), "first"))
            time.sleep(0.3)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM, err  # uvicorn re-raises the signal once drained: 143 in a shell
    assert 2.5 < took < 20, took  # it waited for the grace period, then did not hang
    assert "1 runs cancelled, 1 never started" in err
    with Store.open(folder / ".goatclaw" / "goatclaw.db") as db:
        assert db.run(short).status == "succeeded"  # finished within the grace period
        cancelled = db.run(long)
        assert cancelled.status == "cancelled"
        first = {t.task_id: t for t in db.tasks(long)}["first"]
        assert first.status in ("succeeded", "cached")  # the second run's echo came from the task cache
        never = db.run(queued)
        assert never.status == "failed" and "not started" in (never.error or "")

    (folder / "go.flag").write_text("")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/projects/demo"
    proc = start(folder, port)
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            for run_id in (long, queued):
                answer = http.post(f"{url}/runs/{run_id}/resume")
                assert answer.status_code == 202, answer.text
            for run_id in (long, queued):
                wait_for(lambda r=run_id: http.get(f"{url}/runs/{r}").json()["status"] == "succeeded")
            tasks = {t["id"]: t for t in http.get(f"{url}/runs/{long}").json()["tasks"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert tasks["first"]["started_at"] == first.started_at  # resumed: what finished did not run again
    assert tasks["wait"]["output"]["stdout"].strip() == "flagged"
