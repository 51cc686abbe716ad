"""The dashboard's pages over a store of 10,000 runs, timed in Chromium: the issue's budget is 300 ms a page.

A store of N runs (benchmarks/ui_harness.py: two real runs copied N times) is served by
uvicorn on 127.0.0.1 with the dashboard's routes; headless Chromium (Debian's, through
Playwright) opens each page and reads the Navigation Timing of the visit: the server's
answer (request to first byte) and DOM ready (HTML parsed, our script run, the graph drawn).
Each page is visited once cold (its template compiled, nothing cached) and then the best of
five warm visits is kept. The baseline is a bare Starlette endpoint answering a static page
of the same HTML size in the same server, in the same browser, in the same run: the ratio
is what goatclaw's pages cost over serving bytes. Machine load is printed beside the table.

    python benchmarks/ui_pages.py            # 10,000 runs
    python benchmarks/ui_pages.py --smoke    # 300 runs, a few pages (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # last: this folder's dask.py must not shadow dask
from ui_harness import CHROMIUM, build_store, chromium, page_timing, served

BUDGET_MS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small store and a few pages")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    runs = args.runs or (300 if args.smoke else 10_000)
    if not Path(CHROMIUM).exists():
        print(f"| page | skipped |\n|---|---|\n| all | {CHROMIUM} is missing (apt-get install chromium) |")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # the seed pipelines' project: the embedded defaults
        store = folder / "ui.db"
        built = build_store(store, runs, folder=folder)
        rows = measure(store, built, smoke=args.smoke)
    load = os.getloadavg()
    print(f"dashboard pages over a store of {runs:,} runs (copied in {built['copy_s']:.1f} s); "
          f"load average {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} cpus\n")
    print("| page | server ms (warm) | DOM ready ms (cold) | DOM ready ms (warm) | ratio to baseline | "
          f"under {BUDGET_MS:.0f} ms |")
    print("|---|---:|---:|---:|---:|:-:|")
    base = rows[0]["warm"]
    for r in rows:
        ok = "yes" if r["warm"] < BUDGET_MS else "NO"
        print(f"| `{r['page']}` | {r['server']:.1f} | {r['cold']:.1f} | {r['warm']:.1f} | "
              f"{r['warm'] / base if base else 0:.1f}× | {ok if r['page'] != 'baseline' else '-'} |")
    return 0


def measure(store: Path, built: dict[str, object], *, smoke: bool) -> list[dict[str, object]]:
    """Each page's cold and warm timings, the baseline first."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Mount, Route

    from goatclaw.server.ui import LocalAuth, ui_routes

    auth = LocalAuth()
    filler = "<p>" + "x" * 20_000 + "</p>"

    async def baseline(request: object) -> HTMLResponse:
        return HTMLResponse(f"<!doctype html><html lang=en><title>b</title><main>{filler}</main></html>")

    app = Starlette(routes=[Route("/baseline", baseline), Mount("/", routes=ui_routes(store, auth=auth))])
    failed = built["seed_runs"][1]  # type: ignore[index]
    pages = ["/runs", f"/runs/{failed}", "/costs"] if smoke else [
        "/runs", "/runs?status=failed", "/runs?pipeline=nightly-etl", "/runs?q=flaky&page=3", "/runs?page=150",
        f"/runs/{failed}", "/pipelines", "/pipelines/nightly-etl", "/costs", "/approvals", "/dead-letters",
        "/breakers", "/audit"]
    out = []
    with served(app) as url, chromium() as browser:
        page = browser.new_context().new_page()
        page.goto(f"{url}/runs?token={auth.token}")
        for path in ["baseline", *pages]:
            target = url + ("/baseline" if path == "baseline" else path)
            page.goto(target)
            cold = page_timing(page)
            warm = []
            for _ in range(2 if smoke else 5):
                page.goto(target)
                warm.append(page_timing(page))
            best = min(warm, key=lambda t: t["dom"])
            out.append({"page": path, "server": best["server"], "cold": cold["dom"], "warm": best["dom"]})
            time.sleep(0.05)
    return out


if __name__ == "__main__":
    sys.exit(main())
