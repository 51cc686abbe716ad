"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against uvicorn on 127.0.0.1.

A live run whose graph changes state while it runs (over the event stream, without a
reload); a failed task's error and what memory saw before and what fixed it; a graph of
1,000 tasks; a read-only session; axe-core's accessibility check of the main pages; and the
render time of the pages over a store of 10,000 runs. Every request the page makes that is
not to the served 127.0.0.1 is refused and counted (no CDN, nothing from the network).
Screenshots go to tests/artifacts/ui/ (git-ignored).

Needs /usr/bin/chromium (Debian's ``chromium``; ``.ci/run`` installs it), the ``playwright``
package (the dev extra; it never downloads a browser) and, for the accessibility test,
axe-core from npm in .ci/node (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "benchmarks"))  # last: benchmarks/dask.py must not shadow dask (spawned workers too)
from ui_harness import CHROMIUM, build_store, chromium, page_timing, run_pipeline, served  # noqa: E402

pytest.importorskip("playwright", reason="playwright is not installed (it is in the dev extra)")
pytest.importorskip("uvicorn")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install "
                                 "chromium; .ci/run does)")]

from goatclaw.server.ui import LocalAuth  # noqa: E402
from goatclaw.server.ui.local import local_app  # noqa: E402
from goatclaw.store import Store  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
AXE = REPO / ".ci" / "node" / "node_modules" / "axe-core" / "axe.min.js"
#: The render budget of the issue, for a page over a store of 10,000 runs.
BUDGET_MS = 300.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


class Tab:
    """A browser page signed in to one served dashboard, refusing (and counting) every request off 127.0.0.1."""

    def __init__(self, browser: Any, url: str, auth: LocalAuth, *, bypass_csp: bool = False) -> None:
        self.url = url
        # bypass_csp: only for axe, whose script the test injects inline (the pages' CSP refuses inline script)
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=bypass_csp)
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(f"{url}/runs?token={auth.token}")

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.url + "/"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def go(self, path: str) -> Any:
        self.page.goto(self.url + path)
        self.page.wait_for_load_state("load")
        return self.page

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        assert self.errors == [], f"script errors on the page: {self.errors}"
        assert self.outside == [], f"the page asked for something off this server: {self.outside}"
        self.context.close()


@pytest.fixture
def tab(browser: Any, store_path: Path) -> Iterator[Any]:
    tabs: list[Tab] = []

    def open_tab(scopes: frozenset[str] = frozenset({"admin"}), *, bypass_csp: bool = False) -> Tab:
        auth = LocalAuth(scopes=scopes)
        server = served(local_app(store_path, auth))
        url = server.__enter__()
        servers.append(server)
        tabs.append(Tab(browser, url, auth, bypass_csp=bypass_csp))
        return tabs[-1]

    servers: list[Any] = []
    yield open_tab
    for t in tabs:
        t.close()
    for s in servers:
        s.__exit__(None, None, None)


LIVE = """
version: 1
name: live
permissions: {shell: [sleep]}
tasks:
  first:
    uses: shell
    with: {run: [sleep, "4"]}
%s
  last:
    uses: shell
    needs: [%s]
    with: {run: [sleep, "1.5"]}
"""


def _wait(predicate: Any, timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_live_run_lights_up_its_graph_without_a_reload(tab: Any, project: Path, store_path: Path) -> None:
    fan = [f"part{i}" for i in range(8)]  # 8 siblings with the same needs and dependents: drawn as one group
    body = "".join(f"  {p}:\n    uses: shell\n    needs: first\n    with: {{run: [sleep, \"1\"]}}\n" for p in fan)
    (project / "live.yaml").write_text(textwrap.dedent(LIVE) % (body.rstrip("\n"), ", ".join(fan)))
    Store.open(store_path).close()  # the store exists before the page is served
    t = tab()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "live.yaml", "--output", "plain",
                             "--store", str(store_path)], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        def running() -> str | None:
            with Store.open(store_path) as db:
                rows = [r for r in db.running() if r.pipeline == "live"]
                return rows[0].id if rows and any(e["topic"] == "task.started" for e in db.events(rows[0].id)) \
                    else None
        run_id = _wait(running, what="the live run's first task to start")
        page = t.go(f"/runs/{run_id}")
        page.evaluate("window.__notReloaded = true")
        first = page.locator('[data-node="first"]')
        group = page.locator('[data-node="group:part0"]')
        assert "s-running" in first.get_attribute("class")
        assert "s-pending" in group.get_attribute("class")
        assert page.locator(".graph-canvas .node").count() == 3  # first, the collapsed group of 8, last
        t.shot("live-run-1-first-running")
        page.wait_for_selector('[data-node="first"].s-succeeded', timeout=20_000)
        page.wait_for_selector('[data-node="group:part0"].s-running', timeout=20_000)
        assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of updating live"
        page.wait_for_selector('#tasks tr[data-task^="part"] .task-status .s-running', timeout=5_000)  # the table too
        t.shot("live-run-2-fan-out-running")
        page.wait_for_selector('[data-node="last"].s-running', timeout=20_000)
        assert "s-succeeded" in group.get_attribute("class")
        t.shot("live-run-3-last-running")
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        page.wait_for_selector('#run[data-status="succeeded"]', timeout=20_000)  # reloaded once, at the end
        assert "s-succeeded" in page.locator('[data-node="last"]').get_attribute("class")
        t.shot("live-run-4-succeeded")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


FLAKY = """
version: 1
name: nightly
permissions: {shell: [sh]}
tasks:
  fetch:
    uses: echo
    with: {value: ok}
  publish:
    uses: shell
    needs: fetch
    with: {run: [sh, -c, "%s"]}
"""


def test_a_failed_task_shows_its_error_and_what_fixed_it_before(tab: Any, project: Path, store_path: Path) -> None:
    pytest.importorskip("wordllama", reason="the memory extra is not installed")
    path = project / "nightly.yaml"
    broken = "echo 'publish target /srv/out is read-only' >&2; exit 3"
    for script in (broken, "exit 0", broken):  # fails, is fixed, fails the same way again
        path.write_text(textwrap.dedent(FLAKY) % script.replace('"', '\\"'))
        last = run_pipeline(path, store=str(store_path))
    assert not last.ok
    t = tab()
    page = t.go(f"/runs/{last.run_id}")
    error = page.locator('details.task[data-task="publish"] pre.error').inner_text()
    assert "exit" in error or "code 3" in error
    seen = page.locator("section.seen")
    assert seen.is_visible()
    text = seen.inner_text()
    assert "publish" in text and "like:" in text
    assert "what fixed it" in text, text
    t.shot("failed-task-seen-before")


def _thousand(project: Path) -> Path:
    """A pipeline of 1,000 tasks: ten stages, each a fan-out of 99 tasks then a join."""
    lines = ["version: 1", "name: thousand", "concurrency: 16", "tasks:"]
    prev = None
    for s in range(10):
        for i in range(99):
            needs = f", needs: [{prev}]" if prev else ""
            lines.append(f"  s{s}_t{i}: {{uses: echo, with: {{value: {i}}}{needs}}}")
        fan = ", ".join(f"s{s}_t{i}" for i in range(99))
        lines.append(f"  join{s}: {{uses: echo, with: {{value: {s}}}, needs: [{fan}]}}")
        prev = f"join{s}"
    path = project / "thousand.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_graph_of_1000_tasks_stays_usable(tab: Any, project: Path, store_path: Path) -> None:
    result = run_pipeline(_thousand(project), store=str(store_path))
    assert result.ok and len(result.tasks) == 1000
    t = tab()
    page = t.go(f"/runs/{result.run_id}")
    page.wait_for_selector("#graph[data-drawn]")
    assert page.locator(".graph-canvas .node").count() == 20  # ten collapsed fan-outs and ten joins
    assert page.locator(".graph-canvas .node.group").count() == 10
    assert "1000 tasks, 20 levels" in page.locator("figure.graph figcaption").inner_text()
    timing = page_timing(page)
    t.shot("graph-1000-tasks")
    assert timing["dom"] < 3000, timing  # drawn and interactive in well under a few seconds on this machine


def test_a_graph_too_big_for_dagre_is_laid_out_by_level(tab: Any, project: Path, store_path: Path) -> None:
    lines = ["version: 1", "name: chain", "tasks:", "  t0: {uses: echo, with: {value: 0}}"]
    lines += [f"  t{i}: {{uses: echo, with: {{value: {i}}}, needs: [t{i - 1}]}}" for i in range(1, 400)]
    (project / "chain.yaml").write_text("\n".join(lines) + "\n")
    result = run_pipeline(project / "chain.yaml", store=str(store_path))
    assert result.ok
    t = tab()
    page = t.go(f"/runs/{result.run_id}")
    page.wait_for_selector("#graph[data-drawn]")
    assert page.locator("#graph").get_attribute("data-layout") == "levels"  # 400 nodes: nothing to collapse
    assert page.locator(".graph-canvas .node").count() == 400
    xs = page.evaluate("""() => [...document.querySelectorAll('.graph-canvas .node')].slice(0, 3)
        .map(g => g.getAttribute('transform'))""")
    assert len(set(xs)) == 3  # one level each, left to right
    t.shot("graph-400-chain-levels")


def test_a_read_only_session_sees_no_button_that_changes_anything(tab: Any, project: Path,
                                                                   store_path: Path) -> None:
    path = project / "nightly.yaml"
    path.write_text(textwrap.dedent(FLAKY) % "exit 3")
    failed = run_pipeline(path, store=str(store_path))
    with Store.open(store_path) as db:
        db.update_breaker("shell:sh", lambda _: {"state": "open", "failures": [time.time()], "opened_at": time.time()})
    t = tab(frozenset({"read"}))
    for where in (f"/runs/{failed.run_id}", "/dead-letters", "/breakers", "/approvals"):
        page = t.go(where)
        assert page.locator("form[method=post]").count() == 0, where
        assert page.locator("button").count() == 0 or page.locator("main form[method=post] button").count() == 0
    t.shot("read-only-run")
    status = t.page.evaluate("""async (path) => (await fetch(path, {method: 'POST', body: new URLSearchParams(
        {csrf: 'x'})})).status""", f"/runs/{failed.run_id}/rerun")
    assert status == 403
    admin = tab()
    page = admin.go(f"/runs/{failed.run_id}")
    assert page.locator("form[method=post] button", has_text="Re-run").count() == 1


MAIN_PAGES = ("/runs", "/runs/{run}", "/approvals", "/pipelines", "/pipelines/nightly", "/dead-letters",
              "/breakers", "/memory", "/costs", "/audit")


@pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed (.ci/run: npm install --prefix .ci/node)")
def test_the_main_pages_have_no_serious_accessibility_violations(tab: Any, project: Path, store_path: Path) -> None:
    path = project / "nightly.yaml"
    path.write_text(textwrap.dedent(FLAKY) % "echo 'disk full' >&2; exit 3")
    failed = run_pipeline(path, store=str(store_path))
    t = tab(bypass_csp=True)
    report = {}
    for where in MAIN_PAGES:
        page = t.go(where.format(run=failed.run_id))
        page.add_script_tag(path=str(AXE))
        found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help}))""")
        report[where] = found
    serious = {w: [v for v in found if v["impact"] in ("serious", "critical")] for w, found in report.items()}
    assert all(not v for v in serious.values()), serious
    (ARTIFACTS / "axe.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "axe.txt").write_text("\n".join(f"{w}: {found}" for w, found in report.items()) + "\n")


@pytest.mark.timeout(300)
def test_pages_render_under_300ms_over_10000_runs(tab: Any, project: Path, store_path: Path) -> None:
    built = build_store(store_path, 10_000, folder=project)
    with Store.open(store_path) as db:
        assert db.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 10_000
    run_id = built["seed_runs"][1]
    t = tab()
    pages = ("/runs", "/runs?status=failed", "/runs?q=flaky&page=3", "/runs?page=150", f"/runs/{run_id}",
             "/pipelines", "/costs", "/approvals", "/dead-letters")
    times = {}
    for where in pages:
        t.go(where)  # warm: the first visit of a page pays for compiling its template
        times[where] = min(page_timing(t.go(where))["dom"] for _ in range(5))
    t.shot("runs-10000")
    load = os.getloadavg()[0]
    (ARTIFACTS / "render-10000.txt").write_text("\n".join(f"{w}: {ms:.1f} ms" for w, ms in times.items())
                                                + f"\nload average {load:.2f} on {os.cpu_count()} cpus\n")
    slow = {w: ms for w, ms in times.items() if ms >= BUDGET_MS}
    assert not slow, f"pages over {BUDGET_MS:.0f} ms with 10,000 runs (load {load:.1f}): {slow} (all: {times})"


RELEASE = """
version: 1
name: release
tasks:
  build:
    uses: echo
    with: {value: {version: "1.4.2"}}
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
          note: {type: string, default: ""}
  publish:
    uses: echo
    needs: review
    with:
      value: >-
        ${{ tasks.build.output.version }} on ${{ tasks.review.output.inputs.channel }}
        by ${{ tasks.review.output.by }}
"""


def test_approve_a_waiting_run_from_the_page(tab: Any, project: Path, store_path: Path) -> None:
    import goatclaw

    if getattr(goatclaw, "adecide", None) is None:
        pytest.skip("this goatclaw has no approval API (goatclaw.adecide) yet")
    path = project / "release.yaml"
    path.write_text(textwrap.dedent(RELEASE).lstrip())
    waiting = run_pipeline(path, store=str(store_path))
    assert waiting.status.value == "waiting"
    reader = tab(frozenset({"read"}))
    page = reader.go("/approvals")
    assert page.locator(f'[data-approval="{waiting.run_id}/review"]').is_visible()
    assert page.locator("form.decide").count() == 0  # a read session sees the request, not the form
    t = tab()
    page = t.go("/approvals")
    card = page.locator(f'[data-approval="{waiting.run_id}/review"]')
    assert "Release 1.4.2?" in card.inner_text()
    card.get_by_label("channel").select_option("beta")
    card.get_by_label("Reason").fill("looks good")
    t.shot("approval-form")
    card.get_by_role("button", name="Approve").click()
    page.wait_for_load_state("load")
    assert "approved review" in page.locator(".flash.ok").inner_text()

    def finished() -> Any:
        with Store.open(store_path) as db:
            row = db.run(waiting.run_id)
            return row if row is not None and row.status not in ("running", "waiting") else None
    row = _wait(finished, what="the approved run to finish")
    assert row.status == "succeeded"
    with Store.open(store_path) as db:
        outputs = {t.task_id: t.output for t in db.tasks(waiting.run_id)}
        decided = db.approvals(waiting.run_id, waiting=False)
    assert outputs["publish"] == "1.4.2 on beta by local"
    assert decided[0]["decision"] == "approved" and decided[0]["reason"] == "looks good"
    page = t.go(f"/runs/{waiting.run_id}")
    assert "s-succeeded" in page.locator('[data-node="publish"]').get_attribute("class")
    t.shot("approval-run-succeeded")
