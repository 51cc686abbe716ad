"""The crash/fault suite (issue #16): real ``goatclaw`` processes killed, starved of disk, given a store from the
future, and run 50 at a time on one store. Every case either succeeds with nothing lost or fails loudly (exit 1,
a message naming the store and the cause) with nothing lost that the store does not own up to.

- kill -9 at random points of a run, then ``--resume`` (sometimes killed again): no task committed before a kill
  runs again, the outputs equal a clean run's, ``audit verify`` is ok and the store is intact;
- a disk that fills mid-run: the process may write only so many bytes (``RLIMIT_FSIZE``, the size limit a
  file system quota or a small partition puts on it), and, for a run big enough for the writer process, SQLite's
  own ``max_page_count``;
- a store written by a newer goatclaw: refused before anything runs, both versions named;
- 50 runs at once on one store (10 processes of 5 runs each).

Marked ``slow`` (the default ``pytest`` run, which CI makes, runs them). About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import goatclaw
from goatclaw.store import MIGRATIONS, Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

STEPS = '''
import hashlib, os, time

def step(name, parts):
    with open("effects.log", "a") as log:  # the side effect: a task that ran twice shows twice
        log.write(name + "\\n")
    time.sleep(int(hashlib.sha256(name.encode()).hexdigest(), 16) % 40 / 1000)  # 0-39 ms
    return {"name": name, "sum": len(name) + sum(int(p) for p in parts)}
'''

#: 12 python steps over four layers, then a report written to a file (an audited side effect).
CRASH_PIPELINE = """
version: 1
name: crashy
concurrency: 2
defaults:
  retry: {attempts: 1}
tasks:
  a: {uses: python, with: {function: "steps:step", args: [a, []]}}
  b: {uses: python, with: {function: "steps:step", args: [b, []]}}
  c: {uses: python, with: {function: "steps:step", args: [c, []]}}
  ab: {uses: python, needs: [a, b], with: {function: "steps:step",
       args: [ab, ["${{ tasks.a.output.sum }}", "${{ tasks.b.output.sum }}"]]}}
  bc: {uses: python, needs: [b, c], with: {function: "steps:step",
       args: [bc, ["${{ tasks.b.output.sum }}", "${{ tasks.c.output.sum }}"]]}}
  ca: {uses: python, needs: [c, a], with: {function: "steps:step",
       args: [ca, ["${{ tasks.c.output.sum }}", "${{ tasks.a.output.sum }}"]]}}
  abc: {uses: python, needs: [ab, bc], with: {function: "steps:step",
        args: [abc, ["${{ tasks.ab.output.sum }}", "${{ tasks.bc.output.sum }}"]]}}
  bca: {uses: python, needs: [bc, ca], with: {function: "steps:step",
        args: [bca, ["${{ tasks.bc.output.sum }}", "${{ tasks.ca.output.sum }}"]]}}
  cab: {uses: python, needs: [ca, ab], with: {function: "steps:step",
        args: [cab, ["${{ tasks.ca.output.sum }}", "${{ tasks.ab.output.sum }}"]]}}
  top: {uses: python, needs: [abc, bca, cab], with: {function: "steps:step",
        args: [top, ["${{ tasks.abc.output.sum }}", "${{ tasks.bca.output.sum }}", "${{ tasks.cab.output.sum }}"]]}}
  d: {uses: python, with: {function: "steps:step", args: [d, []]}}
  e: {uses: python, needs: [d], with: {function: "steps:step", args: [e, ["${{ tasks.d.output.sum }}"]]}}
  report:
    uses: file.write
    needs: [top, e]
    with: {path: report.txt, content: "${{ tasks.top.output.sum }} ${{ tasks.e.output.sum }}"}
"""
STEP_TASKS = 12

PROJECT = """
version: 1
memory: {enabled: false}
permissions: {python: [steps], files: {read: [.], write: [.]}}
"""


def _folder(root: Path, name: str, pipeline: str = CRASH_PIPELINE) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "goatclaw.yaml").write_text(textwrap.dedent(PROJECT).lstrip())
    (folder / "steps.py").write_text(STEPS)
    (folder / "p.yaml").write_text(textwrap.dedent(pipeline).lstrip())
    return folder


def _env() -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("GOATCLAW_STORE", None)
    env.pop("GOATCLAW_AUDIT_KEY", None)
    return env


def _goatclaw(folder: Path, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "goatclaw", *args], cwd=folder, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _effects(folder: Path) -> list[str]:
    log = folder / "effects.log"
    return log.read_text().split() if log.exists() else []


def _committed(db_path: Path) -> set[str]:
    """The tasks the store holds as succeeded (read through a fresh connection, as a resume would)."""
    if not db_path.exists():
        return set()
    with Store.open(db_path) as db:
        runs = db.runs(limit=1)
        return {t.task_id for t in db.tasks(runs[0].id) if t.status == "succeeded"} if runs else set()


def _has_run(db_path: Path) -> bool:
    return _status(db_path) is not None


def _status(db_path: Path) -> str | None:
    """The newest run's stored status (``None`` before there is one)."""
    if not db_path.exists():
        return None
    with Store.open(db_path) as db:
        runs = db.runs(limit=1)
        return runs[0].status if runs else None


def _kill_at_random(folder: Path, args: list[str], rng: random.Random) -> None:
    """Start ``goatclaw apply``, SIGKILL it once a random number of steps ran (plus a random moment)."""
    before = len(_effects(folder))
    proc = _goatclaw(folder, "apply", "p.yaml", "--output", "json", *args)
    target = before + rng.randrange(0, STEP_TASKS)
    deadline = time.monotonic() + 60
    while len(_effects(folder)) < target and proc.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def clean_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = _folder(tmp_path_factory.mktemp("clean"), "clean")
    code, out, err = _finish(_goatclaw(folder, "apply", "p.yaml", "--output", "json"))
    assert code == 0, err
    assert Counter(_effects(folder)) == dict.fromkeys(_effects(folder), 1)
    return {tid: t["output"] for tid, t in json.loads(out)["tasks"].items()}


@pytest.mark.parametrize("seed", range(5))
def test_kill_9_at_random_points_then_resume_ends_like_a_clean_run(tmp_path: Path, clean_outputs: dict[str, Any],
                                                                   seed: int) -> None:
    rng = random.Random(seed)
    folder = _folder(tmp_path, f"crash{seed}")
    db_path = folder / ".goatclaw" / "goatclaw.db"
    kills = 1 + rng.randrange(2)  # some runs are killed again while they resume
    for _ in range(kills):
        _kill_at_random(folder, ["--resume"] if _has_run(db_path) else [], rng)
    committed, seen = _committed(db_path), len(_effects(folder))
    if _status(db_path) != "succeeded":  # (a kill can come just after the run's end)
        resume = ["--resume"] if _has_run(db_path) else []
        code, out, err = _finish(_goatclaw(folder, "apply", "p.yaml", "--output", "json", *resume))
        assert code == 0, f"seed {seed}: {err}"
        assert {tid: t["output"] for tid, t in json.loads(out)["tasks"].items()} == clean_outputs, f"seed {seed}"
    rerun = set(_effects(folder)[seen:])
    assert not committed & rerun, f"seed {seed}: committed tasks ran again: {sorted(committed & rerun)}"
    assert set(_effects(folder)) == set(clean_outputs) - {"report"}
    with Store.open(db_path) as db:
        assert db.integrity() == "ok"
        stored = db.runs(limit=5)
        assert len(stored) == 1 and stored[0].status == "succeeded", f"seed {seed}: {stored}"
        assert {t.task_id: t.output for t in db.tasks(stored[0].id)} == clean_outputs, f"seed {seed}"
        seqs = [e["seq"] for e in db.events(stored[0].id)]
        assert seqs == sorted(set(seqs)), f"seed {seed}: event numbers repeat"
        assert [r[4] for r in db.audit_rows()].count("file.written") == 1
    code, out, err = _finish(_goatclaw(folder, "audit", "verify"))
    assert code == 0 and "intact" in out, f"seed {seed}: {out}{err}"


# -- a disk that fills mid-run -----------------------------------------------------------------------

FILLING = """
version: 1
name: filling
concurrency: 1
tasks:
  w0: {uses: file.write, with: {path: out/0.txt, content: "0"}}
  big: {uses: python, needs: [w0], with: {function: "steps:big", args: [400000]}}
  w1: {uses: file.write, needs: [big], with: {path: out/1.txt, content: "1"}}
  w2: {uses: file.write, needs: [w1], with: {path: out/2.txt, content: "2"}}
  w3: {uses: file.write, needs: [w2], with: {path: out/3.txt, content: "3"}}
"""


def _size_limit(limit: int) -> Any:
    def limited() -> None:  # in the child, before exec: no file it writes may grow past ``limit`` bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def test_a_disk_that_fills_mid_run_fails_the_cli_loudly_and_the_store_owns_up(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "full", FILLING)
    (folder / "steps.py").write_text(STEPS + "\n\ndef big(n):\n    return 'x' * n\n")
    code, _, err = _finish(_goatclaw(folder, "apply", "p.yaml", "--only", "w0"))  # the store exists, with a run
    assert code == 0, err
    db_path = folder / ".goatclaw" / "goatclaw.db"
    limit = db_path.stat().st_size + 200_000  # the WAL may grow by about 200 KB: the 400 KB output cannot fit
    proc = _goatclaw(folder, "apply", "p.yaml", "--no-cache", preexec_fn=_size_limit(limit))
    code, out, err = _finish(proc)
    assert code == 1, out + err
    assert "Traceback" not in err
    assert str(Path(".goatclaw") / "goatclaw.db") in err
    assert "disk I/O error" in err or "database or disk is full" in err, err
    assert not any(line.startswith("run ") and "succeeded" in line for line in out.splitlines()), out
    assert not (folder / "out" / "3.txt").exists()  # the run stopped
    with Store.open(db_path) as db:
        run = db.runs(limit=1)[0]
        written = [r[3] for r in db.audit_rows(run_id=run.id) if r[4] == "file.written"]
    assert run.status == "failed"
    assert written == sorted(f"w{f.name[0]}" for f in (folder / "out").iterdir())  # every side effect that happened
    code, out, err = _finish(_goatclaw(folder, "audit", "verify"))
    assert code == 1 and "intact" not in out and run.id in err, out + err
    code, out, _ = _finish(_goatclaw(folder, "health"))
    assert code == 1 and run.id in out, out


WRITER_DRIVER = """
import sys
import goatclaw
import goatclaw.store as store

limit = int(sys.argv[1])
original = store._set_wal

def limited(db):  # every connection, the writer process's too (forked), may grow the file to ``limit`` pages
    original(db)
    db.execute(f"PRAGMA max_page_count = {limit}")

store._set_wal = limited
try:
    goatclaw.run("many.yaml", cache=False)
except goatclaw.StoreError as exc:
    print(exc)
    sys.exit(1)
"""


def test_a_disk_that_fills_under_the_writer_process_fails_the_run_loudly(tmp_path: Path) -> None:
    """4,000 tasks through the writer process, whose connection meets SQLite's max_page_count."""
    folder = _folder(tmp_path, "many")
    lines = ["version: 1", "name: many", "tasks:"]
    lines += [f"  t{i}: {{uses: echo, with: {{message: \"{i:04d}{'x' * 200}\"}}}}" for i in range(4000)]
    (folder / "many.yaml").write_text("\n".join(lines) + "\n")
    (folder / "driver.py").write_text(WRITER_DRIVER)
    db_path = folder / ".goatclaw" / "goatclaw.db"
    with Store.open(db_path) as db:
        pages = int(db.db.execute("PRAGMA page_count").fetchone()[0])
    proc = subprocess.Popen([sys.executable, "driver.py", str(pages + 150)], cwd=folder,
                            env={**_env(), "GOATCLAW_WRITER": "process"}, text=True,  # however busy the machine is
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, out, err = _finish(proc)
    assert code == 1, out + err
    assert str(db_path.relative_to(folder)) in out and "database or disk is full" in out, out
    assert "lost:" in out
    with Store.open(db_path) as db:
        run = db.runs(limit=1)[0]
        stored = len(db.tasks(run.id))
        lost = [json.loads(r[5]) for r in db.audit_rows(run_id=run.id) if r[4] == "store.lost"]
    assert run.status == "failed"
    assert lost and stored + lost[0]["lost"].get("tasks", 0) <= 4000
    assert not goatclaw.verify_audit(db_path).ok


# -- a store from a newer goatclaw ---------------------------------------------------------------------


def test_a_store_from_the_future_is_refused_by_the_cli_before_anything_runs(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "future")
    db_path = folder / ".goatclaw" / "goatclaw.db"
    with Store.open(db_path) as db:
        db.db.execute("INSERT INTO migrations (name, applied_at) VALUES ('042_later', 0)")
    code, _, err = _finish(_goatclaw(folder, "apply", "p.yaml"))
    assert code == 1 and "Traceback" not in err
    assert "042_later" in err and MIGRATIONS[-1][0] in err and goatclaw.__version__ in err, err
    assert not (folder / "effects.log").exists()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


# -- 50 runs at once on one store ----------------------------------------------------------------------

CONCURRENT_DRIVER = """
import asyncio, json, sys
import goatclaw

async def main(who):
    runs = [goatclaw.arun("p.yaml", vars={"who": f"{who}-{i}"}, cache=False) for i in range(5)]
    done = await asyncio.gather(*runs, return_exceptions=True)
    print(json.dumps([{"error": f"{type(r).__name__}: {r}"} if isinstance(r, BaseException) else
                      {"run_id": r.run_id, "status": r.status.value} for r in done]))

asyncio.run(main(sys.argv[1]))
"""

CONCURRENT_PIPELINE = """
version: 1
name: many-at-once
vars: {who: nobody}
tasks:
  a: {uses: echo, with: {message: "${{ vars.who }}"}}
  w: {uses: file.write, needs: [a], with: {path: "out/${{ vars.who }}.txt", content: "${{ tasks.a.output.message }}"}}
  b: {uses: echo, needs: [w], with: {message: "done ${{ vars.who }}"}}
"""


def test_50_concurrent_runs_on_one_store_lose_nothing(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "crowd", CONCURRENT_PIPELINE)
    (folder / "driver.py").write_text(CONCURRENT_DRIVER)
    Store.open(folder / ".goatclaw" / "goatclaw.db").close()  # migrated once, as a first run would
    procs = [subprocess.Popen([sys.executable, "driver.py", f"p{k}"], cwd=folder, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(10)]
    answers: list[dict[str, Any]] = []
    for proc in procs:
        code, out, err = _finish(proc, timeout=150)
        assert code == 0, err
        answers += json.loads(out.strip().splitlines()[-1])
    assert len(answers) == 50
    failed = [a for a in answers if "error" in a]
    for answer in failed:  # failing is allowed only loudly, naming the store
        assert "goatclaw.db" in answer["error"], answer
    with Store.open(folder / ".goatclaw" / "goatclaw.db") as db:
        assert db.integrity() == "ok"
        runs = {r.id: r for r in db.runs(limit=100)}
        assert len(runs) == 50
        for answer in answers:
            if "error" in answer:
                continue
            run = runs[answer["run_id"]]
            assert run.status == answer["status"] == "succeeded"
            assert {t.task_id: t.status for t in db.tasks(run.id)} == dict.fromkeys("awb", "succeeded")
            seqs = [e["seq"] for e in db.events(run.id)]
            assert seqs == list(range(1, len(seqs) + 1)) and db.events(run.id)[-1]["topic"] == "run.succeeded"
        written = [r[2] for r in db.audit_rows() if r[4] == "file.written"]
    assert sorted(written) == sorted(a["run_id"] for a in answers if "error" not in a)
    assert len(list((folder / "out").iterdir())) == 50 - len(failed)
    verdict = goatclaw.verify_audit(folder / ".goatclaw" / "goatclaw.db")
    assert verdict.ok and verdict.rows == len(written), verdict
