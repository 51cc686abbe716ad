"""Side-effect rate limits: a task over the limit waits (and says so); it does not fail."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import goatclaw
from goatclaw.plugin import TaskContext
from goatclaw.security.ratelimit import LIMITS, SideEffectLimits, SlidingWindow
from goatclaw.store import Store
from goatclaw.tasks.shell import shell


def test_the_sliding_window_admits_limit_per_window_and_makes_the_rest_wait() -> None:
    window = SlidingWindow(3, window=0.4)

    async def main() -> list[float]:
        began = time.monotonic()

        async def one() -> float:
            await window.acquire()
            return time.monotonic() - began

        return sorted(await asyncio.gather(*(one() for _ in range(7))))

    times = asyncio.run(main())
    assert all(t < 0.1 for t in times[:3]), times  # the first three at once
    assert all(0.38 <= t < 0.6 for t in times[3:6]), times  # the next three when the first leave the window
    assert 0.78 <= times[6] < 1.2, times  # the seventh one window later again


def test_shell_tasks_wait_for_the_process_limit_and_emit_an_event(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def ctx(i: int) -> TaskContext:
        return TaskContext("run", f"t{i}", workspace=tmp_path, permissions=_everything(tmp_path),
                           _emit=lambda topic, data: events.append((topic, data)))

    async def main() -> list[float]:
        token = LIMITS.set(SideEffectLimits({"process": 2}, window=0.5))
        began = time.monotonic()
        try:
            async def one(i: int) -> float:
                await shell(ctx(i), run=["true"])
                return time.monotonic() - began

            return sorted(await asyncio.gather(*(one(i) for i in range(3))))
        finally:
            LIMITS.reset(token)

    times = asyncio.run(main())
    assert times[1] < 0.4 and 0.45 <= times[2] < 1.5, times  # two at once, the third half a second later
    waits = [d for topic, d in events if topic == "ratelimit.wait"]
    assert len(waits) == 1 and waits[0]["kind"] == "process" and waits[0]["limit"] == 2
    assert 0.3 < waits[0]["wait"] <= 0.5
    assert [d["program"] for topic, d in events if topic == "audit.process.started"] == ["true"] * 3


def _everything(workspace: Path) -> Any:
    """What the pipeline-level tests' project grants: every permission (whatever shape the grant takes)."""
    try:
        from goatclaw.security.permissions import Grant
    except ImportError:  # before permissions exist, the context checks nothing
        return None
    return Grant.everything(workspace) if hasattr(Grant, "everything") else None


def test_the_projects_limits_reach_the_tasks_of_a_run(project: Path, write_pipeline: Any,
                                                      store_path: Path) -> None:
    # 4 per minute (a number no other test uses: limits are shared by the whole process)
    config = (project / "goatclaw.yaml").read_text()
    (project / "goatclaw.yaml").write_text(config + "rate_limits:\n  side_effects: {processes_per_minute: 4}\n")
    path = write_pipeline("""
        version: 1
        concurrency: 1
        tasks:
          a: {uses: shell, with: {run: ["true"]}}
          b: {uses: shell, needs: [a], with: {run: ["true"]}}
          c: {uses: shell, needs: [b], with: {run: ["true"]}}
          d: {uses: shell, needs: [c], with: {run: ["true"]}}
          e: {uses: shell, needs: [d], timeout: 0.5, with: {run: ["true"]}}
        """)
    began = time.monotonic()
    result = goatclaw.run(path)
    assert time.monotonic() - began < 5
    assert [result.tasks[t].status.value for t in "abcd"] == ["succeeded"] * 4
    assert result.tasks["e"].error_class == "timeout"  # it was waiting for the window, not refused
    with Store.open(store_path) as db:
        waits = [e for e in db.events(result.run_id) if e["topic"] == "ratelimit.wait"]
    assert len(waits) == 1 and waits[0]["task"] == "e" and waits[0]["data"]["limit"] == 4
    assert 55 < waits[0]["data"]["wait"] <= 60 and waits[0]["data"]["per_seconds"] == 60


def test_every_task_that_writes_files_counts_against_the_file_write_limit(project: Path, write_pipeline: Any,
                                                                          store_path: Path) -> None:
    # 7 a minute (a number no other test uses: limits are shared by the whole process): the archive (1 file),
    # its extraction (3) and a folder's copy (3) fill the window; the conversion's output then waits
    config = (project / "goatclaw.yaml").read_text()
    (project / "goatclaw.yaml").write_text(config + "rate_limits:\n  side_effects: {file_writes_per_minute: 7}\n")
    for name in ("a", "b", "c"):
        (project / "in" / name).parent.mkdir(exist_ok=True)
        (project / "in" / f"{name}.csv").write_text("x,y\n1,2\n")
    path = write_pipeline("""
        version: 1
        concurrency: 1
        tasks:
          pack: {uses: file.archive, with: {source: in, output: out/in.zip}}
          unpack: {uses: file.extract, needs: [pack], with: {archive: out/in.zip, destination: out/x}}
          copy: {uses: file.copy, needs: [unpack], with: {source: in, destination: out/copy}}
          convert:
            uses: data.convert
            needs: [copy]
            timeout: 0.5
            with: {input: in/a.csv, output: out/a.json}
        """)
    result = goatclaw.run(path)
    assert [result.tasks[t].status.value for t in ("pack", "unpack", "copy")] == ["succeeded"] * 3
    assert result.tasks["convert"].error_class == "timeout"  # waiting for the window, not refused
    assert not (project / "out" / "a.json").exists()
    with Store.open(store_path) as db:
        waits = [e for e in db.events(result.run_id) if e["topic"] == "ratelimit.wait"]
    assert [(w["task"], w["data"]["kind"], w["data"]["limit"]) for w in waits] == [("convert", "file", 7)]


def test_file_writes_wait_for_their_limit_in_the_thread_they_run_in(tmp_path: Path) -> None:
    """file.write is a blocking plugin: it runs in a thread that gets the run's limits (context variables)."""
    from goatclaw.engine.executor import LocalExecutor
    from goatclaw.registry import default_registry

    events: list[tuple[str, dict[str, Any]]] = []
    write = default_registry().task("file.write")

    async def main() -> list[float]:
        token = LIMITS.set(SideEffectLimits({"file": 2}, window=0.5))
        executor = LocalExecutor()
        began = time.monotonic()
        try:
            async def one(i: int) -> float:
                ctx = TaskContext("run", f"w{i}", workspace=tmp_path, permissions=_everything(tmp_path),
                                  _emit=lambda topic, data: events.append((topic, data)))
                await executor.call(write, ctx, {"path": f"out/{i}.txt", "content": str(i)})
                return time.monotonic() - began

            return sorted(await asyncio.gather(*(one(i) for i in range(3))))
        finally:
            LIMITS.reset(token)
            await executor.close()

    times = asyncio.run(main())
    assert times[1] < 0.4 and 0.45 <= times[2] < 1.5, times
    waits = [d for topic, d in events if topic == "ratelimit.wait"]
    assert len(waits) == 1 and waits[0]["kind"] == "file" and waits[0]["limit"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.txt", "1.txt", "2.txt"]
