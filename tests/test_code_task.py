"""The ``code`` task through the front door: real files, real py_compile/ruff/pytest runs, the model
over HTTP through litellm (tests/openai_server.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import FakeOpenAI, Reply, scripted

import goatclaw
from goatclaw import llm as room
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BROKEN = (REPO / "pipelines" / "code" / "repo" / "calc.py").read_text()
FIXED = BROKEN.replace("(len(values) + 1)", "len(values)")


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


@pytest.fixture(autouse=True)
def venv_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks' programs (python3 with pytest, ruff) are this interpreter's."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def files(content: str, path: str = "calc.py") -> Reply:
    return Reply(json.dumps({"summary": "s", "files": [{"path": path, "content": content}]}))


def code_pipeline(write, srv, extra: str = "", shell: str = "[python3, ruff]") -> Path:
    shutil.copytree(REPO / "pipelines" / "code" / "repo", Path.cwd() / "work")
    return write(f"""
        version: 1
        permissions: {{shell: {shell}, network: ["127.0.0.1"], files: {{read: [work/], write: [work/]}}}}
        tasks:
          c:
            uses: code
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              goal: fix the failing test
              folder: work
              checks: [py_compile, ruff, pytest]
              {extra}
        """)


def test_a_failing_check_goes_back_to_the_model_until_the_test_passes(write_pipeline, project) -> None:
    wrong = BROKEN.replace("(len(values) + 1)", "(len(values) - 1)")
    with FakeOpenAI(scripted(files(wrong), files(FIXED))) as srv:
        result = goatclaw.run(code_pipeline(write_pipeline, srv))
        second = srv.requests[1]["messages"][-1]["content"]
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    out = result.tasks["c"].output
    assert out["rounds"] == 2 and out["passed"] and out["files"] == ["calc.py"]
    assert "These checks failed" in second and "FAILED test_calc.py::test_mean" in second  # pytest's real output
    assert [c["exit_code"] for c in out["checks"]] == [0, 0, 0]
    assert "+    return sum(values) / len(values)" in out["diff"]
    assert (project / "work" / "calc.py").read_text() == FIXED


def test_checks_that_still_fail_after_max_rounds_fail_the_task(write_pipeline) -> None:
    with FakeOpenAI(scripted(files("def mean(:\n"))) as srv:
        result = goatclaw.run(code_pipeline(write_pipeline, srv, "max_rounds: 2"))
    assert result.tasks["c"].error_class == "invalid_output"
    assert "still fail after 2 rounds" in result.tasks["c"].error and "py_compile" in result.tasks["c"].error


def test_a_path_outside_the_folder_is_refused_and_nothing_is_written(write_pipeline, project) -> None:
    with FakeOpenAI(scripted(files("print('pwned')\n", "../evil.py"))) as srv:
        result = goatclaw.run(code_pipeline(write_pipeline, srv))
    assert result.tasks["c"].error_class == "permission_denied"
    assert not (project / "evil.py").exists()


def test_a_check_whose_program_is_not_granted_never_runs(write_pipeline) -> None:
    with FakeOpenAI(scripted(files(FIXED))) as srv:
        result = goatclaw.run(code_pipeline(write_pipeline, srv, shell="[python3]"))
    assert result.tasks["c"].error_class == "permission_denied" and "ruff" in result.tasks["c"].error


def test_review_mode_returns_located_findings_and_writes_nothing(write_pipeline, project) -> None:
    review = Reply(json.dumps({"summary": "one bug", "findings": [
        {"file": "calc.py", "line": 8, "message": "divides by one too many"},
        {"file": "calc.py", "line": 999, "message": "past the end"},
        {"file": "nowhere.py", "line": 1, "message": "no such file"}]}))
    with FakeOpenAI(scripted(review)) as srv:
        result = goatclaw.run(code_pipeline(write_pipeline, srv, "mode: review"))
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    out = result.tasks["c"].output
    assert out["findings"] == ["calc.py:8: divides by one too many"]
    assert len(out["dropped"]) == 2 and out["files"] == [] and out["diff"] == ""
    assert (project / "work" / "calc.py").read_text() == BROKEN


def test_the_shipped_code_fix_replays_offline_from_its_cassette(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "goatclaw", "test", "pipelines/code-fix.test.yaml"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-none",
                               "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "✓ pipelines/code-fix.test.yaml::the-failing-test-passes" in done.stdout


def test_tests_mode_writes_a_test_file_that_runs_and_never_the_code_under_test(write_pipeline, project) -> None:
    extra = ("from calc import mean\n\n\ndef test_mean_of_one() -> None:\n"
             "    assert mean([4.0]) == 4.0\n")
    with FakeOpenAI(scripted(files(extra, "test_more.py"))) as srv:
        path = code_pipeline(write_pipeline, srv, "mode: tests")
        (project / "work" / "calc.py").write_text(FIXED)
        result = goatclaw.run(path)
        system = srv.requests[0]["messages"][0]["content"]
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    out = result.tasks["c"].output
    assert "Write tests (pytest)" in system and out["files"] == ["test_more.py"]
    assert "3 passed" in out["checks"][2]["output"]  # the model's test ran beside the two there
    # the model may not "fix" the code under test in this mode: refused before anything is written
    shutil.rmtree(project / "work")
    cheat = Reply(json.dumps({"summary": "s", "files": [{"path": "test_ok.py", "content": "def test_x(): pass\n"},
                                                       {"path": "calc.py", "content": "def mean(v): return 2.0\n"}]}))
    with FakeOpenAI(scripted(cheat)) as srv:
        refused = goatclaw.run(code_pipeline(write_pipeline, srv, "mode: tests"))
    assert refused.tasks["c"].error_class == "permission_denied" and "calc.py" in refused.tasks["c"].error
    assert (project / "work" / "calc.py").read_text() == BROKEN and not (project / "work" / "test_ok.py").exists()


def test_generate_mode_creates_new_files_that_pass_the_checks(write_pipeline, project) -> None:
    module = '"""Statistics."""\n\n\ndef median(values: list[float]) -> float:\n    """The middle value."""\n' \
             '    ordered = sorted(values)\n    mid = len(ordered) // 2\n' \
             '    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2\n'
    test = '"""median."""\n\nfrom stats import median\n\n\ndef test_median() -> None:\n' \
           '    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0]) == 1.5\n'
    answer = Reply(json.dumps({"summary": "s", "files": [{"path": "stats.py", "content": module},
                                                        {"path": "test_stats.py", "content": test}]}))
    with FakeOpenAI(scripted(answer)) as srv:
        path = code_pipeline(write_pipeline, srv, "mode: generate")
        for name in ("calc.py", "test_calc.py"):
            (project / "work" / name).unlink()
        result = goatclaw.run(path)
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    out = result.tasks["c"].output
    assert out["files"] == ["stats.py", "test_stats.py"] and [c["exit_code"] for c in out["checks"]] == [0, 0, 0]
    assert "+def median(values: list[float]) -> float:" in out["diff"] and "1 passed" in out["checks"][2]["output"]


def test_a_file_the_model_wrote_is_untrusted_when_read_back(write_pipeline, project, store_path) -> None:
    """The code task's files are its model's output: read back, they cannot reach a command without trust:."""
    with FakeOpenAI(scripted(files(FIXED))) as srv:
        assert goatclaw.run(code_pipeline(write_pipeline, srv)).ok
    load = """
        version: 1
        name: load
        permissions: {shell: [bash], files: {read: [work/]}}
        tasks:
          load: {uses: file.read, with: {path: work/calc.py}}
          act: {uses: shell, needs: load%s, with: {script: "${{ tasks.load.output }}"}}
        """
    refused = goatclaw.run(write_pipeline(load % "", "load.yaml")).tasks["act"]
    assert refused.error_class == "permission_denied", (refused.status, refused.error)
    assert "carries output of c" in refused.error and "read back from work/calc.py" in refused.error
    trusted = goatclaw.run(write_pipeline(load % ", trust: [load]", "load.yaml")).tasks["act"]
    assert trusted.error_class != "permission_denied"  # bash ran the file (a Python module: it fails as a script)
    with Store.open(store_path) as db:
        written = [json.loads(r[5]) for r in db.audit_rows() if r[4] == "file.written"]
    assert written[0]["path"] == "work/calc.py" and written[0]["by"] == "code" and written[0]["from_output"]
    assert written[0]["sha256"] == hashlib.sha256(FIXED.encode()).hexdigest()


def test_the_code_tasks_writes_wait_for_the_file_write_limit(write_pipeline, project, store_path) -> None:
    # 3 a minute (a number no other test uses: limits are shared by the whole process); the model writes 4 files
    config = (project / "goatclaw.yaml").read_text()
    (project / "goatclaw.yaml").write_text(config + "rate_limits:\n  side_effects: {file_writes_per_minute: 3}\n")
    answer = Reply(json.dumps({"summary": "s", "files": [
        {"path": f"m{i}.py", "content": f"X = {i}\n"} for i in range(4)]}))
    with FakeOpenAI(scripted(answer)) as srv:
        path = code_pipeline(write_pipeline, srv, "mode: generate")
        text = path.read_text().replace("checks: [py_compile, ruff, pytest]", "checks: [py_compile]")
        path.write_text(text.replace("    uses: code\n", "    uses: code\n    timeout: 3\n"))
        result = goatclaw.run(path)
    assert result.tasks["c"].error_class == "timeout"  # waiting for the window, not refused
    assert sorted(p.name for p in (project / "work").glob("m*.py")) == ["m0.py", "m1.py", "m2.py"]
    with Store.open(store_path) as db:
        waits = [e for e in db.events(result.run_id) if e["topic"] == "ratelimit.wait"]
    assert len(waits) == 1 and waits[0]["data"]["kind"] == "file" and waits[0]["data"]["limit"] == 3
