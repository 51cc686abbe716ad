"""No benchmark can rot: every script in benchmarks/ runs in its ``--smoke`` mode and prints a table.

Each benchmark runs as a subprocess (as a user starts it: ``python benchmarks/x.py``) with
tiny sizes and no timing assertions; the test checks only that it exits 0 and printed at
least one Markdown table (a header row, then a ``|---|`` separator). Files are found by a
glob, so a new benchmark is covered the day it is added; the modules that are not
benchmarks (imported by one) are named in :data:`HELPERS`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
HELPERS = {"dask_plugins.py",  # plugins benchmarks/dask.py imports by name, not a benchmark itself
           "ui_harness.py"}  # the store, server and browser of benchmarks/ui_pages.py and tests/test_ui_browser.py
TABLE = re.compile(r"^\|.*\|[ \t]*\n\|[ \t]*:?-{2,}.*\|[ \t]*$", re.MULTILINE)


def benchmark_files() -> list[Path]:
    """Every benchmark script: benchmarks/*.py but the helper modules."""
    return sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)


def test_benchmarks_are_found() -> None:
    names = {p.name for p in benchmark_files()}
    assert {"engine.py", "events.py", "llm.py", "memory.py", "watch.py", "dask.py"} <= names
    assert all((BENCHMARKS / h).is_file() for h in HELPERS), "a helper named in HELPERS no longer exists"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", benchmark_files(), ids=lambda p: p.name)
def test_benchmark_smoke(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run([sys.executable, str(script), "--smoke"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=150)
    assert proc.returncode == 0, f"{script.name} --smoke exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert TABLE.search(proc.stdout), f"{script.name} --smoke printed no table:\n{proc.stdout}"
