"""The ``data`` task on a large CSV beside the same query in DuckDB alone: the task's overhead ratio.

    python benchmarks/data_task.py            # 1,000,000 rows
    python benchmarks/data_task.py --smoke    # 10,000 rows (tests/test_benchmarks.py)

The task is called through the plugin contract (a real TaskContext and grant), which
adds the lockdown, the grant checks, the input hashing for taint and the row conversion.
Research's per-page cost beside fetching alone belongs in a ``research_per_page`` slot
the research helper fills (see ``research_per_page`` below).
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import Grant
from goatclaw.tasks.data import data

QUERY = "SELECT k, count(*) AS n, sum(v) AS total FROM sales GROUP BY k ORDER BY k"


def make_csv(path: Path, rows: int) -> None:
    rnd = random.Random(7)
    with open(path, "w") as fh:
        fh.write("k,v\n")
        fh.writelines(f"k{rnd.randrange(100)},{rnd.randrange(1000)}\n" for _ in range(rows))


def duckdb_alone(path: Path) -> float:
    start = time.perf_counter()
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE VIEW sales AS SELECT * FROM read_csv('{path}')")
    con.execute(QUERY).fetchall()
    con.close()
    return time.perf_counter() - start


def data_task(ws: Path) -> float:
    ctx = TaskContext(run_id="b", task_id="d", workspace=ws, permissions=Grant.everything(ws))
    start = time.perf_counter()
    asyncio.run(data(ctx, files={"sales": "sales.csv"}, query=QUERY))
    return time.perf_counter() - start


def research_per_page() -> list[tuple[str, float, float]]:
    """Slot for the research helper: (label, research seconds per page, fetch-alone seconds per page)."""
    return []


def main() -> None:
    rows = 10_000 if "--smoke" in sys.argv else 1_000_000
    repeats = 1 if "--smoke" in sys.argv else 3
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        make_csv(ws / "sales.csv", rows)
        alone = min(duckdb_alone(ws / "sales.csv") for _ in range(repeats))
        task = min(data_task(ws) for _ in range(repeats))
    print(f"| rows | DuckDB alone (s) | data task (s) | overhead ratio |\n|---:|---:|---:|---:|\n"
          f"| {rows:,} | {alone:.3f} | {task:.3f} | {task / alone:.2f} |")
    for label, research, fetch in research_per_page():
        print(f"| research {label} | {fetch:.3f} | {research:.3f} | {research / fetch:.2f} |")


if __name__ == "__main__":
    main()
