"""Events into the store: goatclaw's recorder (batched) next to a bare ``executemany``.

Run: ``python benchmarks/events.py [--events 200000] [--smoke]``

Both sides write the same rows to a fresh SQLite file (WAL, ``synchronous=NORMAL``) in
the same process: the recorder through :meth:`Recorder.event` (numbering, masking,
JSON, group commits of 2,000 rows, the bus consulted for subscribers), the baseline as
one ``executemany`` of the finished tuples in one transaction. Target (issue 7): at
least half of the bare rate, and 100k events per second or more.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from goatclaw.engine.recorder import Recorder
from goatclaw.events import Bus
from goatclaw.store import Store


def recorder_rate(path: Path, n: int) -> float:
    store = Store.open(path)
    store.create_run("bench", "bench", file=None, digest=None, vars={}, started_at=time.time())
    rec = Recorder(store, Bus(), "bench")
    data = {"attempts": 1, "duration": 0.001}
    gc.collect()
    began = time.perf_counter()
    for i in range(n):
        rec.event("task.progress", f"t{i % 1000}", data)
    rec.flush()
    elapsed = time.perf_counter() - began
    store.close()
    return n / elapsed


def bare_rate(path: Path, n: int) -> float:
    store = Store.open(path)
    rows = [("bench", i + 1, time.time(), "task.progress", f"t{i % 1000}", '{"attempts": 1, "duration": 0.001}')
            for i in range(n)]
    gc.collect()
    began = time.perf_counter()
    with store.transaction() as db:
        db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", rows)
    elapsed = time.perf_counter() - began
    store.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, once: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.events, args.repeat = 2_000, 1
    best_rec = best_bare = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            best_bare = max(best_bare, bare_rate(Path(tmp) / f"bare{i}.db", args.events))
            best_rec = max(best_rec, recorder_rate(Path(tmp) / f"rec{i}.db", args.events))
    version = sys.version.split()[0]
    print(f"\n{args.events:,} events into a fresh store, best of {args.repeat} (Python {version})\n")
    print("| writer | events/s | vs bare |")
    print("|--------|---------:|--------:|")
    print(f"| bare executemany, one transaction | {best_bare:,.0f} | 1.00 |")
    print(f"| goatclaw recorder (batched) | {best_rec:,.0f} | {best_rec / best_bare:.2f} |")


if __name__ == "__main__":
    main()
