"""The notify hook (goatclaw/notify.py) posting a run's result to a real local HTTP server."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_http import serving
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.plugin import fail
from goatclaw.store import Store

TOKEN = "tok-9f1c2e7a55d0"


class Receiver:
    """What the local webhook receiver got, and how it answers."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with got.lock:
                got.bodies.append(json.loads(body))
                got.paths.append(self.path)
            time.sleep(got.delay)
            answer = b"ok" if got.status == 200 else b"invalid_token"
            try:
                self.send_response(got.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:  # the hook gave up waiting
                pass

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as base:
        yield got, f"{base}/services/T000/B000/XXXXsecretpart"


def registry() -> goatclaw.Registry:
    reg = goatclaw.Registry(entry_points=False)

    def explode(ctx: Any, *, why: str) -> None:
        fail(why, error_class="server_error")

    def priced(ctx: Any) -> dict[str, Any]:
        return {"text": "an answer", "cost_usd": 0.0125}

    reg.register_task("explode", explode)
    reg.register_task("priced", priced)
    return reg


def pipeline(project: Path, *, on: str = "[failed]", extra: str = "", fails: bool = True) -> Path:
    path = project / "nightly.yaml"
    body = "explode, with: {why: \"token ${{ secrets.API_TOKEN }} refused <!channel> & more\"}" if fails \
        else "echo, with: {message: fine}"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: nightly
        secrets: [API_TOKEN]
        hooks:
          - use: notify
            with: {{url_secret: NOTIFY_URL, on: {on}, timeout: 2}}
            {extra}
        tasks:
          answer: {{uses: priced}}
          step: {{uses: {body}, retry: 1}}
        """))
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, receiver: tuple[Receiver, str]) -> Receiver:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("NOTIFY_URL", receiver[1])
    return receiver[0]


def hook_failures(store: Path, run_id: str) -> list[dict[str, Any]]:
    with Store.open(store) as db:
        return [e["data"] for e in db.events(run_id) if e["topic"] == "hook.failed"]


def test_a_failed_run_is_posted_masked_and_escaped(project: Path, env: Receiver, receiver: tuple[Receiver, str],
                                                   store_path: Path) -> None:
    result = goatclaw.run(pipeline(project), registry=registry())
    assert result.status.value == "failed"
    [body] = env.bodies
    assert env.paths == ["/services/T000/B000/XXXXsecretpart"]
    data = body["goatclaw"]
    assert (data["pipeline"], data["run_id"], data["status"]) == ("nightly", result.run_id, "failed")
    assert data["cost_usd"] == 0.0125 and data["duration"] >= 0
    assert data["failed"] == [{"task": "step", "error": "token *** refused <!channel> & more",
                               "error_class": "server_error"}]
    assert body["text"].splitlines() == [
        f"goatclaw: nightly failed (run {result.run_id}, {data['duration']:.1f}s, $0.0125)",
        "- step (server_error): token *** refused &lt;!channel&gt; &amp; more"]
    sent = json.dumps(body)
    assert TOKEN not in sent and receiver[1] not in sent
    assert hook_failures(store_path, result.run_id) == []


def test_only_the_chosen_statuses_notify(project: Path, env: Receiver) -> None:
    assert goatclaw.run(pipeline(project, fails=False), registry=registry()).ok
    assert env.bodies == []
    result = goatclaw.run(pipeline(project, on="[succeeded, failed]", fails=False), registry=registry())
    assert result.ok and [b["goatclaw"]["status"] for b in env.bodies] == ["succeeded"]
    assert env.bodies[0]["goatclaw"]["failed"] == []


def test_a_refused_post_is_a_hook_failure_not_silence(project: Path, env: Receiver, receiver: tuple[Receiver, str],
                                                      store_path: Path) -> None:
    env.status = 500
    result = goatclaw.run(pipeline(project), registry=registry())
    assert result.status.value == "failed" and len(env.bodies) == 1
    [failure] = hook_failures(store_path, result.run_id)
    assert failure["hook"] == "notify" and failure["event"] == "on_run_end"
    assert failure["error"] == "RuntimeError: could not notify NOTIFY_URL: RuntimeError: HTTP 500: 'invalid_token'"
    assert receiver[1] not in json.dumps(failure)


def test_fail_run_makes_a_failed_notification_fail_the_run(project: Path, env: Receiver) -> None:
    env.status = 404
    result = goatclaw.run(pipeline(project, on="[succeeded]", fails=False, extra="fail_run: true"),
                          registry=registry())
    assert result.status.value == "failed"
    assert "hook 'notify' failed in on_run_end" in (result.error or "") and "HTTP 404" in (result.error or "")


def test_the_request_is_bounded_by_its_timeout(project: Path, env: Receiver, store_path: Path) -> None:
    env.delay = 4
    started = time.monotonic()
    result = goatclaw.run(pipeline(project), registry=registry())
    assert time.monotonic() - started < 3.5  # timeout: 2
    [failure] = hook_failures(store_path, result.run_id)
    assert failure["error"] == "RuntimeError: could not notify NOTIFY_URL: no answer within 2s"


def test_a_missing_url_is_reported(project: Path, env: Receiver, monkeypatch: pytest.MonkeyPatch,
                                   store_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_URL")
    result = goatclaw.run(pipeline(project), registry=registry())
    [failure] = hook_failures(store_path, result.run_id)
    assert "NOTIFY_URL is not set (the environment or .env): nowhere to notify" in failure["error"]
    assert env.bodies == []


def test_the_url_may_come_from_dotenv(project: Path, env: Receiver, receiver: tuple[Receiver, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_URL")
    (project / ".env").write_text(f"NOTIFY_URL={receiver[1]}\n")
    goatclaw.run(pipeline(project), registry=registry())
    assert len(env.bodies) == 1


def test_adaptive_format_for_teams_workflows(project: Path, env: Receiver) -> None:
    path = pipeline(project)
    path.write_text(path.read_text().replace("timeout: 2}", "timeout: 2, format: adaptive}"))
    goatclaw.run(path, registry=registry())
    [body] = env.bodies
    assert body["type"] == "message" and body["text"].startswith("goatclaw: nightly failed")
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert [b["text"] for b in attachment["content"]["body"]] == body["text"].splitlines()


def test_validate_checks_the_hooks_arguments(project: Path, write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        hooks:
          - use: notify
            with: {url_secret: X, on: [exploded], retries: 2}
        tasks:
          t: {uses: echo}
        """)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:4:27: hooks[0].with.on: 'notify' argument 'on' expects list['succeeded' | 'failed' | " in \
        result.output.replace("\n", "")
    assert f"{path}:4:43: hooks[0].with.retries: 'notify' takes no argument 'retries'" in \
        result.output.replace("\n", "")
    shown = CliRunner().invoke(app, ["plugins", "show", "notify", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["spec"]["events"] == ["on_run_start", "after_task",
                                                                                  "on_run_end"]
