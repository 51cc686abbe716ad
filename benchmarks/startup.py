"""Start-up: how long a fresh ``goatclaw`` process takes for the quick commands, next to a bare Python.

Run: ``python benchmarks/startup.py [--runs 10] [--smoke]``

Each command runs ``--runs`` times as a new process from the repository folder,
interleaved (one of each, then again), after ``compileall`` (so no run pays for writing
bytecode); the median wall time is shown with its ratio to ``python -c pass``, and the
target of issue 24 where it has one. The median CPU time (user + system) is shown too:
on a loaded machine it moves less than the wall time.

``--help`` is answered from its cache (cli/helpcache.py) once it has been rendered: the
first run of the benchmark renders it, so the median is the cached answer; the row
"first ``--help``" times typer rendering it (a cache folder of its own, emptied each run).
``apply`` runs the quickstart with a store in a temporary folder (a new run each time).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
GOATCLAW = [PY, "-m", "goatclaw"]
SCRATCH = Path(tempfile.mkdtemp(prefix="goatclaw-startup-"))
FIRST_HELP_CACHE = SCRATCH / "first-help-cache"
COMMANDS: list[tuple[str, list[str], float | None]] = [
    ("`python -c pass`", [PY, "-c", "pass"], None),
    ("`python -c 'import goatclaw'`", [PY, "-c", "import goatclaw"], None),
    ("`goatclaw --version`", [*GOATCLAW, "--version"], 60),
    ("`goatclaw --help`", [*GOATCLAW, "--help"], 150),
    ("first `goatclaw --help` (rendered by typer, then cached)", [*GOATCLAW, "--help"], None),
    ("`goatclaw validate pipelines/quickstart.yaml`", [*GOATCLAW, "validate", "pipelines/quickstart.yaml"], 200),
    ("`goatclaw apply pipelines/quickstart.yaml`", [*GOATCLAW, "apply", "pipelines/quickstart.yaml", "--store",
                                                    str(SCRATCH / "apply.db")], 250),  # its report: out/ (ignored)
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
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in COMMANDS}
    try:
        for _ in range(args.runs):
            for name, argv, _ in COMMANDS:
                first_help = name.startswith("first")
                if first_help:
                    shutil.rmtree(FIRST_HELP_CACHE, ignore_errors=True)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                began = time.perf_counter()
                subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**env, "GOATCLAW_CACHE_DIR": str(FIRST_HELP_CACHE)} if first_help else env)
                times[name].append(time.perf_counter() - began)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    base = statistics.median(times[COMMANDS[0][0]])
    print(f"\nstart-up, median of {args.runs} fresh processes, interleaved (Python {sys.version.split()[0]}; {load})\n")
    print("| command | median wall | vs `python -c pass` | median CPU | target (wall) |")
    print("|---------|-------:|------:|------:|------:|")
    for name, _, target in COMMANDS:
        median = statistics.median(times[name])
        goal = "-" if target is None else f"≤ {target:.0f} ms ({'met' if median * 1000 <= target else 'missed'})"
        spent = statistics.median(cpu[name])
        print(f"| {name} | {median * 1000:,.0f} ms | {median / base:.1f}x | {spent * 1000:,.0f} ms | {goal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
