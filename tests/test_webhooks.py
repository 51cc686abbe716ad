"""Webhooks through real HTTP: uvicorn on 127.0.0.1 serving webhook_routes(), httpx posting to it.

The runs the webhooks start are real ``goatclaw.arun`` runs, checked in the project's store.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_server import serving_asgi
from starlette.applications import Starlette

import goatclaw
from goatclaw.server.webhooks import SIGNATURE_HEADER, sign, webhook_routes
from goatclaw.store import Store

SECRET = "s3cret-for-the-hook"


class Server:
    """What one test's server saw: the runs it started and the callers it refused."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.started: list[tuple[str, dict[str, Any], str]] = []
        self.denied: list[tuple[str, str]] = []


@pytest.fixture
def server(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    (project / "pipelines").mkdir()
    (project / "pipelines" / "deploy.yaml").write_text(textwrap.dedent("""\
        version: 1
        name: deploy
        vars: {ref: none, sha: none}
        on:
          webhook:
            secret: DEPLOY_HOOK_SECRET
            max_bytes: 400
            schema:
              type: object
              required: [ref, head_commit]
              properties:
                ref: {type: string, pattern: "^refs/"}
                head_commit: {type: object, required: [id]}
            vars: {ref: ref, sha: head_commit.id}
        tasks:
          say: {uses: echo, with: {message: "deploying ${{ vars.ref }} at ${{ vars.sha }}"}}
        """))
    monkeypatch.setenv("DEPLOY_HOOK_SECRET", SECRET)
    seen = Server("")
    runs: list[asyncio.Task[Any]] = []

    async def trigger(pipeline_path: str, vars: dict[str, Any], trigger: str = "schedule") -> str:
        run_id = f"hook-{len(seen.started)}"
        seen.started.append((pipeline_path, vars, trigger))
        runs.append(asyncio.create_task(goatclaw.arun(pipeline_path, vars=vars, run_id=run_id)))
        return run_id

    def denied(client: str, reason: str) -> None:
        seen.denied.append((client, reason))

    app = Starlette(routes=webhook_routes(trigger, on_denied=denied))
    with serving_asgi(app) as base:
        seen.base = base
        yield seen
        deadline = time.monotonic() + 20
        while not all(r.done() for r in runs) and time.monotonic() < deadline:
            time.sleep(0.02)


def post(server: Server, body: bytes, *, signature: str | None = None, name: str = "deploy",
         headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if signature is not None:
        sent[SIGNATURE_HEADER] = signature
    return httpx.post(f"{server.base}/hooks/{name}", content=body, headers=sent, timeout=10)


PAYLOAD = json.dumps({"ref": "refs/heads/main", "head_commit": {"id": "abc123"}}).encode()


def wait_for_run(store: Path, run_id: str) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if store.exists():
            with Store.open(store) as db:
                row = db.run(run_id)
                if row is not None and row.status != "running":
                    return row, {t.task_id: t.output for t in db.tasks(run_id)}
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def test_a_signed_delivery_starts_a_run_with_the_payload_as_vars(server: Server, store_path: Path) -> None:
    response = post(server, PAYLOAD, signature=sign(SECRET, PAYLOAD))
    assert response.status_code == 202, response.text
    assert response.json() == {"pipeline": "deploy", "run": "hook-0", "vars": ["ref", "sha"]}
    assert server.started[0][1:] == ({"ref": "refs/heads/main", "sha": "abc123"}, "webhook")
    row, outputs = wait_for_run(store_path, "hook-0")
    assert row.status == "succeeded" and row.vars == {"ref": "refs/heads/main", "sha": "abc123"}
    assert outputs["say"] == {"message": "deploying refs/heads/main at abc123"}
    assert server.denied == []


def test_github_style_uppercase_hex_is_the_same_signature(server: Server) -> None:
    signature = "sha256=" + sign(SECRET, PAYLOAD)[len("sha256="):].upper()
    assert post(server, PAYLOAD, signature=signature).status_code == 202


@pytest.mark.parametrize(("signature", "reason"), [
    (None, f"missing {SIGNATURE_HEADER}"),
    ("sha256=" + "0" * 64, f"{SIGNATURE_HEADER} does not match the body"),
    (sign("another secret", PAYLOAD), f"{SIGNATURE_HEADER} does not match the body"),
    ("sha1=0123", f"{SIGNATURE_HEADER} must be sha256=<hex>"),
])
def test_a_bad_or_missing_signature_is_401_and_reported(server: Server, signature: str | None,
                                                        reason: str) -> None:
    response = post(server, PAYLOAD, signature=signature)
    assert response.status_code == 401
    assert response.json()["error"].startswith(reason)
    assert server.denied == [("127.0.0.1", response.json()["error"])]
    assert server.started == []
    assert SECRET not in response.text


def test_the_signature_covers_the_body(server: Server) -> None:
    tampered = PAYLOAD.replace(b"main", b"evil")
    assert post(server, tampered, signature=sign(SECRET, PAYLOAD)).status_code == 401
    assert server.started == []


def test_an_oversized_body_is_413_declared_or_streamed(server: Server) -> None:
    big = json.dumps({"ref": "refs/heads/main", "head_commit": {"id": "x" * 500}}).encode()
    assert post(server, big, signature=sign(SECRET, big)).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it arrives
        for _ in range(10):
            yield b" " * 100

    response = httpx.post(f"{server.base}/hooks/deploy", content=chunks(), timeout=10,
                          headers={SIGNATURE_HEADER: "sha256=" + "0" * 64})
    assert response.status_code == 413
    assert server.started == [] and server.denied == []  # too big is refused before anything is checked


@pytest.mark.parametrize(("payload", "problems"), [
    ({"head_commit": {"id": "1"}}, ["payload: 'ref' is a required property"]),
    ({"ref": 5, "head_commit": {}}, ["payload.head_commit: 'id' is a required property",
                                     "payload.ref: 5 is not of type 'string'"]),
    ({"ref": "main", "head_commit": {"id": 1}}, ["payload.ref: 'main' does not match '^refs/'"]),
])
def test_an_invalid_payload_is_422_with_located_problems(server: Server, payload: Any,
                                                         problems: list[str]) -> None:
    body = json.dumps(payload).encode()
    response = post(server, body, signature=sign(SECRET, body))
    assert response.status_code == 422
    assert response.json() == {"error": "the payload does not fit the webhook", "problems": problems}
    assert server.started == []


def test_a_body_that_is_not_json_is_400_saying_where(server: Server) -> None:
    for body in (b'{"ref": ', b'{"ref": NaN}'):
        response = post(server, body, signature=sign(SECRET, body))
        assert response.status_code == 400
        assert response.json()["error"].startswith("the body is not JSON: ")
        assert "column" in response.json()["error"]
    assert server.started == []


def test_an_unknown_webhook_is_404_and_reported(server: Server) -> None:
    response = post(server, PAYLOAD, signature=sign(SECRET, PAYLOAD), name="nope")
    assert response.status_code == 404
    assert server.denied == [("127.0.0.1", "no webhook 'nope'")]
    assert httpx.get(f"{server.base}/hooks/deploy", timeout=10).status_code == 405


def test_a_secret_missing_on_the_server_is_503(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOY_HOOK_SECRET")  # read at each request
    response = post(server, PAYLOAD, signature=sign(SECRET, PAYLOAD))
    assert response.status_code == 503
    assert response.json() == {"error": "the webhook's secret (DEPLOY_HOOK_SECRET) is not set on the server"}
    assert server.started == []


def test_a_webhook_var_must_be_declared_and_a_secret_named(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        on: webhook
        tasks:
          t: {uses: echo}
        """)
    _, problems = goatclaw.check(path)
    assert [str(p) for p in problems] == [
        f"{path}:2:1: on: a webhook needs the secret its sender signs with: on: {{webhook: {{secret: NAME}}}} "
        "(NAME an environment variable or .env entry); unsigned, anyone could run this pipeline"]
    path = write_pipeline("""
        version: 1
        on: {webhook: {secret: S, vars: {ref: ref}, schema: {type: objekt}}}
        tasks:
          t: {uses: echo}
        """)
    _, problems = goatclaw.check(path)
    shown = [str(p) for p in problems]
    assert f"{path}:2:34: on.webhook.vars.ref: the pipeline declares no var 'ref' (declare it under vars: with a " \
           "default)" in shown
    assert any(s.startswith(f"{path}:2:53: on.webhook.schema: not a valid JSON Schema: ") for s in shown)


def test_a_webhook_var_that_reaches_a_command_unpinned_is_a_warning(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {ref: none, sha: none}
        permissions: {shell: true}
        on:
          webhook:
            secret: S
            schema: {type: object, properties: {ref: {type: string, pattern: "^refs/heads/[a-z]+$"}}}
            vars: {ref: ref, sha: head_commit.id}
        tasks:
          build: {uses: shell, with: {run: [git, checkout, "${{ vars.sha }}"]}}
          tag: {uses: shell, with: {run: [echo, "${{ vars.ref }}"]}}
        """)
    _, problems = goatclaw.check(path)
    assert [(str(p), p.severity) for p in problems] == [(
        f"{path}:8:27: on.webhook.vars.sha: var 'sha' comes from the webhook's payload (the sender's data) and "
        "reaches build.with.run: pin 'head_commit.id' down in on.webhook.schema (an enum, a const or a pattern) "
        "before it becomes a command, a path or a URL", "warn")]  # ref is pinned by its pattern


def test_webhooks_follow_the_pipeline_files_without_a_restart(server: Server, project: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    deploy = project / "pipelines" / "deploy.yaml"
    text = deploy.read_text()
    (project / "pipelines" / "ping.yaml").write_text(textwrap.dedent("""\
        version: 1
        name: ping
        on:
          webhook: {secret: DEPLOY_HOOK_SECRET}
        tasks:
          say: {uses: echo, with: {message: pong}}
        """))
    body = b"{}"

    def until(name: str, status: int, body: bytes = body) -> httpx.Response:
        deadline = time.monotonic() + 10
        while True:
            response = post(server, body, signature=sign(SECRET, body), name=name)
            if response.status_code == status or time.monotonic() > deadline:
                return response
            time.sleep(0.2)

    assert until("ping", 202).status_code == 202  # a new file's webhook is served
    deploy.write_text(text.replace("max_bytes: 400", "max_bytes: 10"))
    assert until("deploy", 413, PAYLOAD).status_code == 413  # a changed limit holds
    (project / "pipelines" / "twin.yaml").write_text((project / "pipelines" / "ping.yaml").read_text())
    time.sleep(1.2)
    assert post(server, body, signature=sign(SECRET, body), name="ping").status_code == 202  # kept as it was
    assert any("stay as they were" in r.getMessage() and "named 'ping'" in r.getMessage() for r in caplog.records)
    (project / "pipelines" / "twin.yaml").unlink()
    started = len(server.started)
    deploy.write_text("version: 1\nname: deploy\ntasks:\n  say: {uses: echo, with: {message: hi}}\n")
    assert until("deploy", 404).status_code == 404  # a webhook taken out of its file no longer starts runs
    assert len(server.started) == started  # ({} does not fit deploy's schema while it was still served: 422)
