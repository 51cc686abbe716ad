"""The dashboard's test harness: a store of many runs, the app served by uvicorn, Debian's Chromium.

A helper of benchmarks/ui_pages.py and tests/test_ui_browser.py (not a benchmark itself).

:func:`build_store` runs two small real pipelines once through :func:`goatclaw.run` (one
succeeds, one fails its retried task), then copies their stored rows (run, tasks, attempts,
events) into ``runs`` runs with new ids, spread over the last 30 days across a few pipeline
names and statuses, each with one ``llm.call`` event (a model, tokens and a cost) so the
runs list and the costs page have dollars to add up. The copies go in through the store's
own connection in one transaction: building 10,000 runs one ``goatclaw apply`` at a time
would take an hour, and the pages only read what the rows say.
"""

from __future__ import annotations

import json
import os
import random
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "build_store", "chromium", "page_timing", "run_pipeline", "served"]

#: Debian's package: Playwright drives it and never downloads a browser of its own.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps"]

_GOOD = """
version: 1
name: nightly-etl
tasks:
  extract: {uses: echo, with: {value: {rows: 120}}}
  clean: {uses: echo, needs: extract, with: {value: "${{ tasks.extract.output.rows }}"}}
  load: {uses: echo, needs: clean, with: {value: done}}
"""
_BAD = """
version: 1
name: flaky-report
permissions: {shell: ["false"]}
tasks:
  fetch: {uses: echo, with: {value: [1, 2, 3]}}
  render:
    uses: shell
    needs: fetch
    retry: {attempts: 2, delay: 10ms}
    with: {run: ["false"]}
"""
PIPELINES = ("nightly-etl", "flaky-report", "topic-digest", "invoice-scan", "code-review")
MODELS = ("gpt-4o-mini", "claude-haiku", "llama3")


def run_pipeline(path: str | os.PathLike[str], **options: Any) -> Any:
    """:func:`goatclaw.run` in a thread of its own: Playwright's sync API holds an event loop in this one."""
    import goatclaw

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(goatclaw.run, str(path), **options).result()


def _seed(folder: Path, store: Path) -> list[str]:
    """Run the two seed pipelines for real; their run ids."""
    ids = []
    for name, text in (("good.yaml", _GOOD), ("bad.yaml", _BAD)):
        path = folder / name
        path.write_text(textwrap.dedent(text).lstrip())
        ids.append(run_pipeline(path, store=str(store)).run_id)
    return ids


def build_store(store: str | os.PathLike[str], runs: int = 10_000, *, folder: str | os.PathLike[str] | None = None,
                seed: int = 7) -> dict[str, object]:
    """Fill ``store`` with ``runs`` runs (two real, the rest copies of them); what was built."""
    from goatclaw.store import Store

    store, rng, now = Path(store), random.Random(seed), time.time()
    folder = Path(folder) if folder is not None else store.parent
    seeds = _seed(folder, store)
    started = time.perf_counter()
    with Store.open(store) as db:
        rows = {sid: _rows(db, sid) for sid in seeds}
        with db.transaction() as conn:
            for n in range(max(0, runs - len(seeds))):
                _copy(conn, rows[seeds[n % 2]], n, rng, now)
    return {"runs": max(runs, len(seeds)), "seed_runs": seeds, "copy_s": time.perf_counter() - started}


def _rows(db: object, run_id: str) -> dict[str, list[tuple[object, ...]]]:
    conn = db.db  # type: ignore[attr-defined]
    return {"run": conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchall(),
            "tasks": conn.execute("SELECT * FROM tasks WHERE run_id = ?", (run_id,)).fetchall(),
            "attempts": conn.execute("SELECT * FROM attempts WHERE run_id = ?", (run_id,)).fetchall(),
            "events": conn.execute("SELECT * FROM events WHERE run_id = ?", (run_id,)).fetchall()}


def _copy(conn: object, rows: dict[str, list[tuple[object, ...]]], n: int, rng: random.Random, now: float) -> None:
    run = list(rows["run"][0])
    shift = (now - rng.uniform(60, 30 * 86400)) - float(run[5])
    new_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(float(run[5]) + shift)) + f"-{n:06x}"
    pipeline = PIPELINES[n % len(PIPELINES)] if run[4] == "succeeded" else "flaky-report"
    run[0], run[1], run[5] = new_id, pipeline, float(run[5]) + shift
    run[6] = None if run[6] is None else float(run[6]) + shift
    ex = conn.execute  # type: ignore[attr-defined]
    ex(f"INSERT INTO runs VALUES ({','.join('?' * len(run))})", run)
    for table, at in (("tasks", (4, 5)), ("attempts", (5, 6))):
        for r in rows[table]:
            r = list(r)
            r[0] = new_id
            for i in at:
                r[i] = None if r[i] is None else float(r[i]) + shift
            ex(f"INSERT INTO {table} VALUES ({','.join('?' * len(r))})", r)
    # the llm.call event added below is numbered past every event, those its task rows stand for too
    last = max((int(seq) for r in rows["tasks"] for seq in r[10:12] if seq is not None), default=0)
    for r in rows["events"]:
        r = list(r)
        r[0], r[2] = new_id, float(r[2]) + shift
        last = max(last, int(r[1]))
        ex("INSERT INTO events VALUES (?,?,?,?,?,?)", r)
    usage = {"prompt_tokens": rng.randint(200, 4000), "completion_tokens": rng.randint(50, 800)}
    data = {"model": MODELS[n % len(MODELS)], "usage": usage, "cost_usd": round(rng.uniform(0.0005, 0.05), 6),
            "latency_ms": rng.uniform(200, 3000), "source": "provider"}
    ex("INSERT INTO events VALUES (?,?,?,?,?,?)", (new_id, last + 1, float(run[5]) + 0.5, "llm.call",
                                                  rows["tasks"][0][1], json.dumps(data)))


@contextmanager
def served(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's) under Playwright; never a downloaded browser."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def page_timing(page: Any) -> dict[str, float]:
    """The last navigation's timings in ms: the server's answer, DOM ready (our script has drawn), load."""
    return page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
        return {server: n.responseStart - n.requestStart, dom: n.domContentLoadedEventEnd - n.startTime,
                load: n.loadEventEnd - n.startTime, bytes: n.transferSize}; }""")
