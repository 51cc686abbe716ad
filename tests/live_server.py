"""A real ``goatclaw serve`` for tests: uvicorn on 127.0.0.1 (a free port) in a thread, httpx against it.

::

    with live(build_app([project])) as server:
        with server.client(token) as http:
            http.get("/api/projects").json()

The server is :class:`goatclaw.server.serving.DrainingServer` (what ``goatclaw serve`` runs),
so stopping it drains the run queue exactly as SIGTERM does. Project folders for the tests
come from :func:`make_project`: a goatclaw.yaml (with an optional ``server:`` section) and
small pipelines that run offline.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from goatclaw.server.serving import DrainingServer

#: Offline pipelines every test project has.
PIPELINES = {
    "pipelines/hello.yaml": """
        version: 1
        name: hello
        vars: {who: world}
        tasks:
          greet:
            uses: echo
            with: {value: "hello ${{ vars.who }}"}
          shout:
            uses: echo
            needs: greet
            with: {value: "${{ tasks.greet.output | upper }}"}
    """,
    # `first` finishes at once; `wait` sleeps vars.seconds unless the flag file go.flag exists
    "pipelines/slow.yaml": """
        version: 1
        name: slow
        vars: {seconds: 30}
        permissions: {shell: [bash], files: {read: [.]}}
        tasks:
          first:
            uses: echo
            with: {value: 1}
          wait:
            uses: shell
            needs: first
            with:
              script: "[ -f go.flag ] && echo flagged || { sleep ${{ vars.seconds }}; echo slept; }"
    """,
    # waits for a person between `build` and `publish` (docs/approvals.md)
    "pipelines/gated.yaml": """
        version: 1
        name: gated
        tasks:
          build:
            uses: echo
            with: {version: "1.0"}
          review:
            uses: approval
            needs: build
            approval:
              message: Release ${{ tasks.build.output.version }}?
              inputs:
                type: object
                required: [channel]
                properties:
                  channel: {type: string, enum: [stable, beta]}
          publish:
            uses: echo
            needs: review
            with:
              value: >-
                ${{ tasks.build.output.version }} on ${{ tasks.review.output.inputs.channel }}
                by ${{ tasks.review.output.by }}
    """,
}


def make_project(folder: Path, server: str = "") -> Path:
    """A project folder: goatclaw.yaml (``server`` is its ``server:`` section's YAML) and :data:`PIPELINES`."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = "server:\n" + textwrap.indent(textwrap.dedent(server).strip(), "  ") + "\n" if server.strip() else ""
    (folder / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n" + settings)
    for name, text in PIPELINES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return folder


@dataclass
class Live:
    """A running server: its URL and app; :meth:`client` makes httpx clients for it."""

    url: str
    app: Any
    server: DrainingServer

    @property
    def state(self) -> Any:
        """The app's :class:`goatclaw.server.app.Server`."""
        return self.app.state.goatclaw

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client for the server (with ``Authorization: Bearer token`` when given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


@contextmanager
def live(app: Any) -> Iterator[Live]:
    """Serve ``app`` on 127.0.0.1 at a free port until the block ends (then drain and stop)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", proxy_headers=False,
                            timeout_graceful_shutdown=5)
    server = DrainingServer(config, app.state.goatclaw)
    thread = threading.Thread(target=server.run, name="goatclaw-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Live(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the test server did not stop"


def wait_for(check: Any, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Call ``check()`` until it returns something true (that value), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(every)


def sse(text: str) -> list[dict[str, str]]:
    """Server-Sent Events text as a list of ``{id, event, data}`` (comments and ``retry:`` skipped)."""
    found = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        if "event" in fields or "data" in fields:
            found.append(fields)
    return found


def store_of(folder: Path) -> Path:
    """The store of a project made by :func:`make_project`."""
    return folder / ".goatclaw" / "goatclaw.db"


def token(folder: Path, *scopes: str, projects: list[str] | None = None, name: str = "t") -> str:
    """A new API token of the project's store with ``scopes`` (and ``projects``)."""
    from goatclaw.server import accounts

    text, _ = accounts.create_token(store_of(folder), name, scopes, projects=projects)
    return text


def run_to_end(http: httpx.Client, project: str, run_id: str, timeout: float = 30) -> dict:
    """The run once it has stopped (ended, or waiting for a person) and this server holds no job of it."""
    def done() -> dict | None:
        data = http.get(f"/api/projects/{project}/runs/{run_id}").json()
        state = (data.get("server") or {}).get("state", "done")
        return data if data["status"] not in ("running", "queued") and state == "done" else None
    return wait_for(done, timeout)
