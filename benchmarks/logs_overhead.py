"""What the task-log capture costs no-op tasks that log nothing: two goatclaw trees, interleaved.

Run: ``python benchmarks/logs_overhead.py BEFORE_TREE [--sizes 1000,3000,10000] [--rounds 7]`` (``--smoke``: one
tiny round of this tree against itself, as CI runs every benchmark)

``BEFORE_TREE`` is a checkout (or ``git archive`` export) of goatclaw without the capture;
the tree this file is in is "after". Each round runs, for each size, the no-op DAG of
:mod:`benchmarks.engine` (``echo`` tasks, store on, cache off) once with each tree, each in
a fresh process, alternating which goes first, so both see the same machine load. Each
child reports the CPU time (user + system, its own and its store-writer child's) and the
wall time of ``goatclaw.run`` alone, on a store made beforehand (so the one-time migration
``017_task_logs`` adds is not counted as a run's cost); the best of the rounds is compared. CPU time is what
the shared 2-core machine disturbs least.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

AFTER = Path(__file__).resolve().parents[1]

_CHILD = r"""
import gc, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
import goatclaw
from engine import make_dag, write_yaml
n, folder = int(sys.argv[1]), Path(sys.argv[2])
path = folder / f"b{n}.yaml"
if not path.exists():
    write_yaml(make_dag(n), path)
pipeline = goatclaw.load(path)
store = folder / f"{sys.argv[3]}-{n}-{time.time_ns()}.db"
from goatclaw.store import Store
Store.open(store).close()  # made (and migrated) once, as a project's store is: not part of the run's cost
gc.collect()
def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
c0, w0 = cpu(), time.perf_counter()
result = goatclaw.run(pipeline, store=store, cache=False)
w1, c1 = time.perf_counter(), cpu()
assert result.ok, result.error
print(json.dumps({"cpu": c1 - c0, "wall": w1 - w0, "file": goatclaw.__file__}))
"""


def measure(tree: Path, n: int, folder: Path, label: str) -> dict[str, float]:
    """One run of the ``n``-task DAG with goatclaw from ``tree``, in a new process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(folder), label, str(AFTER / "benchmarks")],
                         env=env, capture_output=True, text=True, check=True, cwd=folder)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["file"].startswith(str(tree)), (data["file"], tree)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, nargs="?",
                        help="a goatclaw tree without the task-log capture (e.g. a `git archive` of an older commit)")
    parser.add_argument("--sizes", default="1000,3000,10000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one round, this tree against itself: it runs, nothing is judged")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.rounds, args.before = "50", 1, args.before or AFTER
    if args.before is None:
        parser.error("the tree to compare with is required (the 'before' argument), unless --smoke")
    before = args.before.resolve()
    sizes = [int(s) for s in args.sizes.split(",")]
    best: dict[tuple[str, int], dict[str, float]] = {}
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in sizes:
                order = [("before", before), ("after", AFTER)]
                for label, tree in order if r % 2 == 0 else order[::-1]:
                    got = measure(tree, n, Path(tmp), label)
                    samples.setdefault((label, n), []).append(got)
                    kept = best.setdefault((label, n), {"cpu": got["cpu"], "wall": got["wall"]})
                    kept["cpu"], kept["wall"] = min(kept["cpu"], got["cpu"]), min(kept["wall"], got["wall"])
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")
    print(f"best of {args.rounds} interleaved rounds, no-op echo tasks, store on, cache off\n")
    print("| tasks | CPU before | CPU after | CPU change | wall before | wall after | wall change |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        b, a = best[("before", n)], best[("after", n)]
        print(f"| {n:,} | {b['cpu'] * 1000:,.0f} ms | {a['cpu'] * 1000:,.0f} ms | {(a['cpu'] / b['cpu'] - 1):+.1%} "
              f"| {b['wall'] * 1000:,.0f} ms | {a['wall'] * 1000:,.0f} ms | {(a['wall'] / b['wall'] - 1):+.1%} |")
    print("\nmedians (the same runs)\n")
    print("| tasks | CPU before | CPU after | CPU change | wall before | wall after | wall change |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        b, a = (_median(samples[(label, n)]) for label in ("before", "after"))
        print(f"| {n:,} | {b['cpu'] * 1000:,.0f} ms | {a['cpu'] * 1000:,.0f} ms | {(a['cpu'] / b['cpu'] - 1):+.1%} "
              f"| {b['wall'] * 1000:,.0f} ms | {a['wall'] * 1000:,.0f} ms | {(a['wall'] / b['wall'] - 1):+.1%} |")
    return 0


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in ("cpu", "wall")}


if __name__ == "__main__":
    sys.exit(main())
