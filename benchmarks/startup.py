"""Start-up: how long a fresh ``goatclaw`` process takes for the quick commands, next to a bare Python.

Run: ``python benchmarks/startup.py [--runs 10] [--smoke]``

Each command runs ``--runs`` times as a new process from the repository folder,
interleaved (one of each, then again), after ``compileall`` (so no run pays for writing
bytecode); the median wall time is shown with its ratio to ``python -c pass``, and the
target of issue 24 where it has one.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
GOATCLAW = [PY, "-m", "goatclaw"]
COMMANDS: list[tuple[str, list[str], float | None]] = [
    ("`python -c pass`", [PY, "-c", "pass"], None),
    ("`python -c 'import goatclaw'`", [PY, "-c", "import goatclaw"], None),
    ("`goatclaw --version`", [*GOATCLAW, "--version"], 60),
    ("`goatclaw --help`", [*GOATCLAW, "--help"], 150),
    ("`goatclaw validate pipelines/quickstart.yaml`", [*GOATCLAW, "validate", "pipelines/quickstart.yaml"], 200),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="two runs each: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.runs = 2
    compileall.compile_dir(REPO / "goatclaw", quiet=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    times: dict[str, list[float]] = {name: [] for name, _, _ in COMMANDS}
    for _ in range(args.runs):
        for name, argv, _ in COMMANDS:
            began = time.perf_counter()
            subprocess.run(argv, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - began)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    base = statistics.median(times[COMMANDS[0][0]])
    print(f"\nstart-up, median of {args.runs} fresh processes, interleaved (Python {sys.version.split()[0]}; {load})\n")
    print("| command | median | vs `python -c pass` | target |")
    print("|---------|-------:|------:|------:|")
    for name, _, target in COMMANDS:
        median = statistics.median(times[name])
        goal = "-" if target is None else f"≤ {target:.0f} ms ({'met' if median * 1000 <= target else 'missed'})"
        print(f"| {name} | {median * 1000:,.0f} ms | {median / base:.1f}x | {goal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
