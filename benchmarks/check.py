"""Checking a chain of templated tasks: load + check time per task, next to the same chain with constant inputs.

Run: ``python benchmarks/check.py [--sizes 1000,10000,100000] [--repeat 3] [--smoke]``

A chain ``t0 <- t1 <- … <- t(n-1)`` of ``echo`` tasks, each needing the one before, in
two files: each task reading the previous one's output (``with: {value:
'${{ tasks.t<i-1>.output }}'}``) and each with a constant value. Both are loaded and
fully checked with ``goatclaw.load`` (YAML, schema, graph, templates and the upstream
test of every reference, plugins, permissions), interleaved, the best of ``--repeat``.
A linear check keeps ``templated / constant`` flat as ``n`` grows; an ancestor walk per
reference made it grow with ``n`` (0.78 s at 1k, 11.4 s at 8k before the fix).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import goatclaw


def write_chain(path: Path, n: int, *, templated: bool) -> None:
    """``n`` chained echo tasks; ``templated``: each reads the previous one's output."""
    lines = ["version: 1", "name: chain", "tasks:", "  t0: {uses: echo, with: {value: 0}}"]
    for i in range(1, n):
        value = f"'${{{{ tasks.t{i - 1}.output }}}}'" if templated else str(i)
        lines.append(f"  t{i}: {{uses: echo, needs: [t{i - 1}], with: {{value: {value}}}}}")
    path.write_text("\n".join(lines) + "\n")


def check_seconds(path: Path) -> float:
    """The seconds ``goatclaw.load`` takes to load and check ``path``."""
    gc.collect()
    began = time.perf_counter()
    goatclaw.load(path)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, once: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.repeat = "100,300", 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.yaml"
        write_chain(warm, 10, templated=True)
        check_seconds(warm)  # imports and the template environment, once, before anything is timed
        for n in (int(s) for s in args.sizes.split(",")):
            paths = {way: Path(tmp) / f"{way}{n}.yaml" for way in ("constant", "templated")}
            for way, path in paths.items():
                write_chain(path, n, templated=way == "templated")
            best = {way: float("inf") for way in paths}
            for _ in range(args.repeat):
                for way, path in paths.items():
                    best[way] = min(best[way], check_seconds(path))
            rows.append((n, best))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nload + check of a chain, each task reading the previous one's output, best of {args.repeat} "
          f"(Python {sys.version.split()[0]}; {load})\n")
    print("| tasks | constant chain | templated chain | constant µs/task | templated µs/task | templated / constant |")
    print("|------:|------:|------:|------:|------:|------:|")
    for n, t in rows:
        print(f"| {n:,} | {t['constant'] * 1000:,.0f} ms | {t['templated'] * 1000:,.0f} ms "
              f"| {t['constant'] / n * 1e6:,.0f} | {t['templated'] / n * 1e6:,.0f} "
              f"| **{t['templated'] / t['constant']:.2f}x** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
