"""Resume: a run killed (SIGKILL) or cancelled part-way finishes later without redoing finished tasks.

The crash test runs ``python -m goatclaw apply`` in a real subprocess, kills it with
SIGKILL while a shell task sleeps, and resumes it. Every task appends a line to a side
effect file, so a task that ran twice would show. The property test does the same with
random DAGs, random first-call failures and a crash (cancellation) after a random number
of finished tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goatclaw
from goatclaw.store import Store

CRASHY = """
version: 1
name: crashy
permissions: {shell: true, env: [SLOW]}  # the slow task reads $SLOW
concurrency: 2
defaults:
  retry: {attempts: 1}
tasks:
  a:
    uses: shell
    with: {script: "echo a >> effects.log; echo A"}
  b:
    uses: shell
    needs: [a]
    with:
      script: 'echo b >> effects.log; echo "B-$X"'
      env: {X: "${{ tasks.a.output.stdout | trim }}"}
  side:
    uses: shell
    with: {script: "echo side >> effects.log; echo SIDE"}
  slow:
    uses: shell
    needs: [b, side]
    with: {script: 'echo $$ > slow.pid; echo slow >> effects.log; sleep "${SLOW:-0}"; echo SLOW'}
  c:
    uses: shell
    needs: [slow]
    with:
      script: 'echo c >> effects.log; echo "C-$Y"'
      env: {Y: "${{ tasks.b.output.stdout | trim }}"}
"""


def _apply(folder: Path, *args: str, slow: str = "0", **kwargs: Any) -> Any:
    env = {**os.environ, "SLOW": slow, "NO_COLOR": "1"}
    env.pop("GOATCLAW_STORE", None)
    cmd = [sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--output", "json", *args]
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "goatclaw.yaml").write_text("version: 1\n")
    (folder / "p.yaml").write_text(textwrap.dedent(CRASHY).lstrip())
    return folder


def _stored_statuses(db_path: Path) -> dict[str, str]:
    if not db_path.exists():
        return {}
    with Store.open(db_path) as db:
        runs = db.runs(limit=1)
        return {t.task_id: t.status for t in db.tasks(runs[0].id)} if runs else {}


def _wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_run_killed_mid_task_resumes_without_redoing_finished_tasks(tmp_path: Path) -> None:
    reference = _folder(tmp_path, "reference")
    done = _apply(reference)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    expected = {tid: t["output"] for tid, t in json.loads(out)["tasks"].items()}

    folder = _folder(tmp_path, "crash")
    db_path = folder / ".goatclaw" / "goatclaw.db"
    effects = folder / "effects.log"
    proc = _apply(folder, slow="60")
    try:
        # kill only once the earlier tasks are committed and the slow one is in its sleep
        _wait_for(lambda: {"a", "b", "side"} <= {t for t, s in _stored_statuses(db_path).items()
                                                if s == "succeeded"}
                  and effects.exists() and "slow" in effects.read_text().split())
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        pid_file = folder / "slow.pid"
        if pid_file.exists():  # the shell task runs in its own session: it outlives a SIGKILLed parent
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    with Store.open(db_path) as db:
        killed = db.runs(limit=1)[0]
        assert killed.status == "running"  # nobody recorded the end: the process was killed

    resumed = _apply(folder, "--resume")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    report = json.loads(out)
    assert report["run_id"] == killed.id
    assert sorted(report["resumed"]) == ["a", "b", "side"]
    assert {tid: t["output"] for tid, t in report["tasks"].items()} == expected
    assert Counter(effects.read_text().split()) == {"a": 1, "b": 1, "side": 1, "slow": 2, "c": 1}
    with Store.open(db_path) as db:
        assert db.integrity() == "ok"
        run = db.run(killed.id)
        assert run is not None and run.status == "succeeded"
        topics = [e["topic"] for e in db.events(killed.id)]
        assert topics.count("task.resumed") == 3 and "run.resumed" in topics
        seqs = [e["seq"] for e in db.events(killed.id)]
        assert seqs == sorted(set(seqs))


def test_resume_refuses_a_changed_pipeline_unless_forced(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "changed")
    db_path = folder / ".goatclaw" / "goatclaw.db"
    pipeline = goatclaw.load(folder / "p.yaml")
    run = asyncio.run(_cancel_after(pipeline, db_path, 1))
    (folder / "p.yaml").write_text((folder / "p.yaml").read_text().replace("echo SIDE", "echo OTHER"))
    changed = goatclaw.load(folder / "p.yaml")
    with pytest.raises(goatclaw.GoatclawError, match="changed since run"):
        goatclaw.run(changed, store=db_path, resume=True)
    forced = goatclaw.run(changed, store=db_path, resume=run, force=True)
    assert forced.ok and forced.run_id == run


def test_resume_without_an_unfinished_run_says_so(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "finished")
    db_path = folder / ".goatclaw" / "goatclaw.db"
    assert goatclaw.run(folder / "p.yaml", store=db_path).ok
    with pytest.raises(goatclaw.GoatclawError, match="no unfinished run of pipeline 'crashy'"):
        goatclaw.run(folder / "p.yaml", store=db_path, resume=True)


async def _cancel_after(pipeline: goatclaw.Pipeline, db_path: Path, k: int, **options: Any) -> str:
    """Run ``pipeline`` and cancel the run once ``k`` tasks have finished; the run's id."""
    bus = goatclaw.Bus()
    finished: list[str] = []
    started: list[str] = []
    runner = asyncio.create_task(goatclaw.arun(pipeline, store=db_path, bus=bus, **options))

    def on_end(ev: goatclaw.Event) -> None:
        finished.append(ev.task or "")
        if len(finished) == k:
            runner.cancel()

    bus.subscribe("run.started", lambda ev: started.append(ev.run_id))
    for topic in ("task.succeeded", "task.failed", "task.skipped", "task.upstream_failed"):
        bus.subscribe(topic, on_end)
    try:
        await runner
    except asyncio.CancelledError:
        pass
    return started[0]


# -- the property: random DAGs, random failures, a crash anywhere ---------------------


class Flaky:
    """``combine``: 1 + the sum of its parts; fails on its first call for the tasks in ``failing``."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing
        self.calls: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()

    async def plugin(self, ctx: goatclaw.TaskContext, parts: list[int]) -> dict[str, Any]:
        self.calls[ctx.task_id] += 1
        await asyncio.sleep(0)
        if ctx.task_id in self.failing and self.calls[ctx.task_id] == 1:
            raise goatclaw.TaskError(f"{ctx.task_id} fails the first time", error_class="server_error")
        self.successes[ctx.task_id] += 1
        return {"task": ctx.task_id, "value": 1 + sum(parts)}


@st.composite
def crashes(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 14))
    needs = {f"t{i:02d}": [f"t{j:02d}" for j in sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3))))]
             if i else [] for i in range(n)}
    return {
        "needs": needs,
        "failing": frozenset(draw(st.sets(st.sampled_from(sorted(needs)), max_size=3))),
        "crash_after": draw(st.integers(1, n)),
        "concurrency": draw(st.integers(1, 4)),
    }


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="goatclaw-resume-") as folder:
        yield Path(folder)


_examples = itertools.count()


def _crash_pipeline(folder: Path, case: dict[str, Any]) -> goatclaw.Pipeline:
    tasks = {tid: {"uses": "combine", "needs": ns,
                   "with": {"parts": [f"${{{{ tasks.{n}.output.value }}}}" for n in ns]}}
             for tid, ns in case["needs"].items()}
    doc = {"version": 1, "name": "prop", "concurrency": case["concurrency"],
           "defaults": {"retry": {"attempts": 1}}, "tasks": tasks}
    (folder / "goatclaw.yaml").write_text("version: 1\n")
    (folder / "p.yaml").write_text(json.dumps(doc, indent=1))
    return goatclaw.load(folder / "p.yaml", registry=_registry(Flaky()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=crashes())
def test_resume_after_a_crash_anywhere_ends_like_an_uninterrupted_run(scratch: Path, case: dict[str, Any]) -> None:
    folder = scratch / f"case{next(_examples)}"
    folder.mkdir()
    pipeline = _crash_pipeline(folder, case)

    clean = Flaky()
    reference = goatclaw.run(pipeline, store=False, registry=_registry(clean))
    assert reference.ok

    flaky = Flaky(case["failing"])
    db_path = folder / "store.db"
    run_id = asyncio.run(_cancel_after(pipeline, db_path, case["crash_after"], registry=_registry(flaky)))
    result = None
    # each run spends at least one first-call failure, so this many resumes always finish
    for _ in range(len(case["failing"]) + 1):
        result = goatclaw.run(pipeline, store=db_path, resume=True, registry=_registry(flaky))
        assert result.run_id == run_id
        if result.ok:
            break
    assert result is not None and result.ok, result.to_dict()
    assert result.outputs == reference.outputs
    assert all(n == 1 for n in flaky.successes.values()), f"a finished task ran again: {flaky.successes}"
    assert set(flaky.successes) == set(case["needs"])
    with Store.open(db_path) as db:
        assert {t.task_id: t.output for t in db.tasks(run_id)} == reference.outputs
        assert db.run(run_id).status == "succeeded"  # type: ignore[union-attr]


def _registry(flaky: Flaky) -> goatclaw.Registry:
    reg = goatclaw.Registry(entry_points=False)
    reg.register_task("combine", flaky.plugin)
    return reg
