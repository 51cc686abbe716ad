"""The fast schema validator's code cache: written once, reused, and never trusted blindly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import time
from goatclaw.spec import schema
began = time.perf_counter()
validate = schema._fast("pipeline")
took = time.perf_counter() - began
try:
    validate({"version": 1, "tasks": {"a": {"uses": 7}}})
except Exception as exc:
    print("rejected", type(exc).__name__)
validate({"version": 1, "tasks": {"a": {"uses": "echo"}}})
print("ok", took)
"""


def probe(cache: Path) -> tuple[list[str], float]:
    env = {**os.environ, "GOATCLAW_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.split("\n")
    return lines[:-2], float(lines[-2].split()[1])


def test_the_validator_is_compiled_once_then_loaded(tmp_path: Path) -> None:
    first, _ = probe(tmp_path)
    files = list(tmp_path.glob("schema-pipeline-*.bin"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second, _ = probe(tmp_path)
    assert first == second == ["rejected JsonSchemaValueException"]
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten


def test_a_corrupt_cache_file_is_replaced(tmp_path: Path) -> None:
    probe(tmp_path)
    [cached] = tmp_path.glob("schema-pipeline-*.bin")
    cached.write_bytes(b"\x00garbage")
    lines, _ = probe(tmp_path)
    assert lines == ["rejected JsonSchemaValueException"]
    assert cached.read_bytes() != b"\x00garbage"


def test_a_cache_folder_that_cannot_be_made_is_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    lines, _ = probe(blocker / "cache")  # mkdir fails (even for root): compile and carry on
    assert lines == ["rejected JsonSchemaValueException"]
    assert blocker.read_text() == "not a folder"
