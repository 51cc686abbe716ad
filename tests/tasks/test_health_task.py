"""``check`` on this very host: real disk, memory and load figures, thresholds that must pass and must fail."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import goatclaw
from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import Grant
from goatclaw.tasks.health import check


def test_check_measures_and_passes_lenient_thresholds(tmp_path: Path) -> None:
    ctx = TaskContext(run_id="r", task_id="t", workspace=tmp_path, permissions=Grant.everything(tmp_path))
    out = check(ctx, min_free_disk_bytes=1, min_available_memory_percent=0, max_load_per_cpu=10_000)
    assert out["failed"] == [] and out["disk"]["free"] == pytest.approx(shutil.disk_usage(tmp_path).free, rel=0.1)
    assert out["memory"]["total"] > 0 and out["load"]["cpus"] >= 1


def test_check_fails_unhealthy_past_a_threshold(tmp_path: Path) -> None:
    ctx = TaskContext(run_id="r", task_id="t", workspace=tmp_path, permissions=Grant.everything(tmp_path))
    with pytest.raises(TaskError) as info:
        check(ctx, min_free_disk_percent=100.5)
    assert info.value.error_class == "unhealthy" and "disk free" in info.value.message


def test_check_reads_only_a_granted_path(tmp_path: Path) -> None:
    ctx = TaskContext(run_id="r", task_id="t", workspace=tmp_path, permissions=Grant.nothing(tmp_path))
    with pytest.raises(TaskError) as info:
        check(ctx, path="/")
    assert info.value.error_class == "permission_denied"


def test_check_in_a_pipeline_gates_what_follows(project: Path, write_pipeline: Callable[..., Path]) -> None:
    """Through the front door: a host past a threshold fails the check as ``unhealthy``; what needs it does not run."""
    path = write_pipeline("""
        version: 1
        permissions: {files: {read: [.]}}
        tasks:
          roomy: {uses: check, with: {path: ., min_free_disk_bytes: 1, max_load_per_cpu: 10000}}
          impossible: {uses: check, retry: {attempts: 1}, with: {path: ., min_free_disk_percent: 100.5}}
          deploy: {uses: echo, needs: impossible, with: {value: never}}
        """)
    assert goatclaw.check(path)[1] == []
    result = goatclaw.run(path)
    assert result.tasks["roomy"].output["failed"] == []
    assert result.tasks["impossible"].error_class == "unhealthy" and "disk free" in result.tasks["impossible"].error
    assert result.tasks["deploy"].status.value == "upstream_failed"
