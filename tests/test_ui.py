"""The dashboard over real HTTP: uvicorn serving the real routes on 127.0.0.1, httpx against it, real runs in a store.

The browser half (the graph going live, axe, screenshots, render times) is tests/test_ui_browser.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))  # last: benchmarks/dask.py != dask
from ui_harness import served

import goatclaw
from goatclaw.server.ui import LocalAuth, ui_routes
from goatclaw.server.ui.local import local_app
from goatclaw.store import Store

REPO = Path(__file__).resolve().parent.parent

PIPELINE = """
version: 1
name: shown
tasks:
  greet:
    uses: echo
    with: {value: "<script>alert('x')</script> & <b>bold</b>"}
  after:
    uses: echo
    needs: greet
    with: {value: done}
"""
FAILING = """
version: 1
name: breaks
permissions: {shell: ["false"]}
tasks:
  boom:
    uses: shell
    with: {run: ["false"]}
"""


@pytest.fixture
def runs(write_pipeline, store_path: Path) -> dict[str, str]:
    ok = goatclaw.run(str(write_pipeline(PIPELINE, "shown.yaml")), store=str(store_path))
    bad = goatclaw.run(str(write_pipeline(FAILING, "breaks.yaml")), store=str(store_path))
    assert ok.ok and not bad.ok
    return {"ok": ok.run_id, "bad": bad.run_id}


@pytest.fixture
def app(runs: dict[str, str], store_path: Path) -> Iterator[tuple[str, LocalAuth]]:
    auth = LocalAuth()
    with served(local_app(store_path, auth)) as url:
        yield url, auth


def signed_in(url: str, auth: LocalAuth) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=20, follow_redirects=True)
    r = client.get(f"/runs?token={auth.token}")
    assert r.status_code == 200, r.text  # the 303 to /runs was followed with the cookie set
    return client


@pytest.fixture
def client(app: tuple[str, LocalAuth]) -> Iterator[httpx.Client]:
    c = signed_in(*app)
    try:
        yield c
    finally:
        c.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def test_the_one_time_token_is_traded_for_a_session_once(app: tuple[str, LocalAuth]) -> None:
    url, auth = app
    token = auth.token
    assert httpx.get(f"{url}/runs").status_code == 401
    first = httpx.get(f"{url}/runs?token={token}")
    assert first.status_code == 303 and first.headers["location"] == "/runs"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert httpx.get(f"{url}/runs?token={token}").status_code == 403  # spent
    assert httpx.get(f"{url}/runs", cookies=first.cookies).status_code == 200


@pytest.mark.parametrize("page", ["/runs", "/approvals", "/pipelines", "/pipelines/shown", "/dead-letters",
                                  "/breakers", "/memory", "/costs", "/audit"])
def test_every_page_and_its_json_twin(client: httpx.Client, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in html.headers["content-security-policy"]
    twin = client.get(page + ".json")
    assert twin.status_code == 200 and twin.headers["content-type"] == "application/json"
    assert twin.json()["principal"] == {"name": "local", "scopes": ["admin"]}


def test_the_run_page_shows_outputs_escaped(client: httpx.Client, runs: dict[str, str]) -> None:
    html = client.get(f"/runs/{runs['ok']}").text
    assert "&lt;script&gt;alert(" in html and "<script>alert(" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    data = client.get(f"/runs/{runs['ok']}.json").json()
    assert [t["id"] for t in data["tasks"]] == ["greet", "after"]
    assert data["tasks"][1]["needs"] == ["greet"]  # the edges come from the pipeline file
    assert data["graph"]["edges"] == [["greet", "after"]]
    assert data["tasks"][0]["output"].startswith("<script>")  # the twin is data; the page is what escapes


def test_the_runs_list_filters_searches_and_pages(client: httpx.Client, runs: dict[str, str]) -> None:
    everything = client.get("/runs.json").json()
    assert everything["total"] == 2 and {r["status"] for r in everything["runs"]} == {"succeeded", "failed"}
    failed = client.get("/runs.json?status=failed").json()
    assert [r["id"] for r in failed["runs"]] == [runs["bad"]]
    assert [r["id"] for r in client.get("/runs.json?q=shown").json()["runs"]] == [runs["ok"]]
    assert [r["id"] for r in client.get("/runs.json?q=exited+with").json()["runs"]] == [runs["bad"]]  # the error
    one = client.get("/runs.json?size=1&page=2").json()
    assert one["pages"] == 2 and [r["id"] for r in one["runs"]] == [everything["runs"][1]["id"]]
    assert client.get("/runs.json?q=%25").json()["total"] == 0  # LIKE's wildcards are searched for, not obeyed


def test_posts_need_the_csrf_token(client: httpx.Client, store_path: Path) -> None:
    with Store.open(store_path) as db:
        db.update_breaker("shell:false", lambda _: {"state": "open", "failures": [time.time()], "opened_at": 1.0})
    page = client.get("/breakers").text
    assert "shell:false" in page
    refused = client.post("/breakers/reset", data={"key": "shell:false"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = client.post("/breakers/reset", data={"key": "shell:false", "csrf": "not-it"})
    assert wrong.status_code == 403
    with Store.open(store_path) as db:
        assert [b["key"] for b in db.breakers()] == ["shell:false"]
    done = client.post("/breakers/reset", data={"key": "shell:false", "csrf": csrf_of(page), "back": "/breakers"})
    assert done.status_code == 200 and "reset 1 breaker" in done.text
    with Store.open(store_path) as db:
        assert db.breakers() == []


def test_a_read_only_session_sees_no_buttons_and_cannot_post(runs: dict[str, str], store_path: Path) -> None:
    auth = LocalAuth(scopes=frozenset({"read"}))
    with served(local_app(store_path, auth)) as url:
        client = signed_in(url, auth)
        page = client.get(f"/runs/{runs['bad']}").text
        assert "Re-run" not in page and "Resume" not in page and "<form method=\"post\"" not in page
        assert 'method="post"' not in client.get("/dead-letters").text
        token = auth.csrf_token(type("R", (), {"cookies": dict(client.cookies)})())
        for path in (f"/runs/{runs['bad']}/rerun", f"/runs/{runs['bad']}/resume", "/breakers/reset",
                     "/dead-letters/1/replay"):
            refused = client.post(path, data={"csrf": token})
            assert refused.status_code == 403 and "needs the" in refused.text, path
        client.close()
    with Store.open(store_path) as db:
        assert len(db.runs(limit=10)) == 2  # nothing was started


def test_re_run_from_the_page_starts_a_real_run(client: httpx.Client, runs: dict[str, str], store_path: Path) -> None:
    page = client.get(f"/runs/{runs['ok']}").text
    r = client.post(f"/runs/{runs['ok']}/rerun", data={"csrf": csrf_of(page), "back": f"/runs/{runs['ok']}"},
                    follow_redirects=False)
    assert r.status_code == 303
    new = r.headers["location"].rsplit("/", 1)[1]
    assert new != runs["ok"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with Store.open(store_path) as db:
            row = db.run(new)
        if row is not None and row.status != "running":
            break
        time.sleep(0.1)
    assert row is not None and row.status == "succeeded" and row.pipeline == "shown"


def test_the_event_stream_sends_a_finished_run_and_ends(client: httpx.Client, runs: dict[str, str]) -> None:
    with client.stream("GET", f"/runs/{runs['ok']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {\"")]
    topics = [e["topic"] for e in events]
    assert topics[0] == "run.started" and topics[-1] == "run.succeeded"
    assert "task.succeeded" in topics and text.rstrip().endswith("data: {}")
    after = events[2]["seq"]
    with client.stream("GET", f"/runs/{runs['ok']}/events", headers={"Last-Event-ID": str(after)}) as r:
        rest = [json.loads(line[6:]) for line in "".join(r.iter_text()).splitlines() if line.startswith("data: {\"")]
    assert rest and all(e["seq"] > after for e in rest)


def test_mounted_under_a_prefix_every_link_carries_it(runs: dict[str, str], store_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    auth = LocalAuth()
    app = Starlette(routes=[Mount("/ui", routes=ui_routes(store_path, auth=auth))])
    with served(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        r = client.get(f"/ui/runs?token={auth.token}", follow_redirects=False)
        assert r.headers["location"] == "/ui/runs"
        html = client.get("/ui/runs").text
        hrefs = re.findall(r'(?:href|src|action)="(/[^"]*)"', html)
        assert hrefs and all(h.startswith("/ui/") for h in hrefs), [h for h in hrefs if not h.startswith("/ui/")]
        assert client.get("/ui/static/vendor/dagre-3.1.3/dagre.min.js").status_code == 200


@pytest.mark.slow
def test_goatclaw_ui_prints_a_url_that_works_once(runs: dict[str, str], store_path: Path, project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "ui", "--port", "0", "--store", str(store_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=project)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r"(http://127\.0\.0\.1:\d+)/runs\?token=(\S+)", line)
        assert found, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        base, token = found.groups()
        with httpx.Client(base_url=base, timeout=20, follow_redirects=True) as client:
            assert client.get(f"/runs?token={token}").status_code == 200
            assert runs["ok"] in client.get("/runs").text
        assert httpx.get(f"{base}/runs?token={token}").status_code == 403
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_goatclaw_ui_without_a_store_says_so(project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "goatclaw", "ui", "--store", str(project / "none.db")],
                          capture_output=True, text=True, env=env, cwd=project, timeout=60)
    assert proc.returncode == 1 and "no store at" in proc.stderr and "Traceback" not in proc.stderr
