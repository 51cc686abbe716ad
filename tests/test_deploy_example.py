"""The shipped deploy recipe (pipelines/deploy-and-wait.yaml) with its approval decided through the store.

A copy of the recipe runs in a scratch project as a user runs it: ``goatclaw apply`` stops at
the approval with the release staged and nothing started (exit code 4); ``goatclaw approvals``
shows what is asked and what runs next; ``goatclaw approve`` resumes the same run, which
starts the real service, waits through its warm-up and stops it; ``goatclaw reject`` fails the
run with nothing started. The offline ``goatclaw test`` of the recipe stubs the approval
(a test run keeps no store); this is the approval itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """A scratch project holding the recipe and the application it deploys."""
    (tmp_path / "pipelines").mkdir()
    shutil.copy(REPO / "pipelines" / "deploy-and-wait.yaml", tmp_path / "pipelines")
    shutil.copytree(REPO / "pipelines" / "deploy", tmp_path / "pipelines" / "deploy")
    (tmp_path / "goatclaw.yaml").write_text("version: 1\n")
    return tmp_path


def goatclaw(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(project), "PYTHONPATH": str(REPO), "USER": "tester"}
    return subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def tasks_of(project: Path) -> dict[str, dict[str, object]]:
    shown = goatclaw(project, "runs", "show", "last", "--json")
    assert shown.returncode == 0, shown.stderr
    return {t["task_id"]: t for t in json.loads(shown.stdout)["tasks"]}


def waiting_deploy(project: Path) -> dict[str, object]:
    """Apply the recipe: it stops at the approval with the release unpacked and no service started."""
    applied = goatclaw(project, "apply", "pipelines/deploy-and-wait.yaml", "--output", "plain")
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert (project / "out/deploy/releases/v2/app/service.py").is_file()  # staged
    assert not (project / "out/deploy/service.port").exists() and not (project / "out/deploy/service.log").exists()
    listed = goatclaw(project, "approvals", "--json")
    assert listed.returncode == 0, listed.stderr
    [request] = json.loads(listed.stdout)
    return request  # type: ignore[no-any-return]


def test_the_deploy_waits_for_an_approval_then_starts_and_becomes_healthy(recipe: Path) -> None:
    request = waiting_deploy(recipe)
    evidence = request["evidence"]
    assert request["task_id"] == "approve"
    assert evidence["message"].startswith("Deploy v2: start out/deploy/releases/v2 (1 files, ")
    assert evidence["downstream"][0] == "start" and "shell" in json.dumps(evidence["permissions"])
    approved = goatclaw(recipe, "approve", "last", "--as", "ops", "--output", "plain")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "package succeeded before: kept, not run again" in approved.stdout
    tasks = tasks_of(recipe)
    assert tasks["approve"]["output"]["by"] == "ops"  # type: ignore[index]
    assert tasks["verify"]["output"]["body"] == {"version": "v2"}  # type: ignore[index]
    assert tasks["stop"]["status"] == "succeeded"  # the service it started is stopped
    assert (recipe / "out/deploy/service.log").exists()


def test_a_rejected_deploy_never_starts(recipe: Path) -> None:
    waiting_deploy(recipe)
    rejected = goatclaw(recipe, "reject", "last", "--reason", "not during the freeze", "--as", "ops",
                        "--output", "plain")
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    tasks = tasks_of(recipe)
    assert tasks["approve"]["error_class"] == "rejected"
    assert {tasks[t]["status"] for t in ("start", "listening", "healthy", "verify")} == {"upstream_failed"}
    assert tasks["stop"]["status"] == "skipped"
    assert not (recipe / "out/deploy/service.port").exists() and not (recipe / "out/deploy/service.log").exists()
