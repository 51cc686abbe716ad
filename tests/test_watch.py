"""Watch mode on a real file system: goatclaw.watcher in process, and `goatclaw watch` as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import goatclaw
from goatclaw.events import Event
from goatclaw.store import Store
from goatclaw.watcher import Watcher, pipelines_in

REPO = Path(__file__).resolve().parent.parent

PIPELINE = """
version: 1
vars: {pause: "0"}
tasks:
  fetch:
    uses: echo
    with: {value: fetched}
  shape:
    uses: echo
    needs: fetch
    with: {value: "${{ tasks.fetch.output }} and shaped"}
  count:
    uses: echo
    inputs: [data/*.csv]
    with: {value: counted}
  wait:
    uses: shell
    cache: true
    inputs: [data/never.txt]
    with: {run: [sleep, "${{ vars.pause }}"]}
"""


class Session:
    """A watch session in this process, with its events in a queue."""

    def __init__(self, target: Path, **options: Any) -> None:
        self.target = target
        self.options = {"debounce": 0.02, **options}
        self.bus = goatclaw.Bus()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.bus.subscribe("watch.*", self.events.put_nowait)
        self.bus.subscribe("task.started", self.events.put_nowait)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> Session:
        self.task = asyncio.create_task(goatclaw.watch(self.target, bus=self.bus, stop=self.stop, **self.options))
        await self.until("watch.ready")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)

    async def until(self, topic: str, timeout: float = 15) -> list[Event]:
        """The events up to and including the next one of ``topic``."""
        seen: list[Event] = []
        async with asyncio.timeout(timeout):
            while not seen or seen[-1].topic != topic:
                seen.append(await self.events.get())
        return seen

    async def finished(self) -> Event:
        return (await self.until("watch.finished"))[-1]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def stored_statuses(project: Path, run_id: str) -> dict[str, str]:
    with Store.open(project / ".goatclaw" / "goatclaw.db") as db:
        run = db.run(run_id)
        assert run is not None
        return {"(run)": run.status, **{t.task_id: t.status for t in db.tasks(run_id)}}


@pytest.fixture
def pipeline(write_pipeline: Callable[..., Path], project: Path) -> Path:
    (project / "data").mkdir()
    (project / "data" / "rows.csv").write_text("a,b\n")
    return write_pipeline(PIPELINE)


def test_edits_rerun_only_what_changed_and_an_invalid_save_waits_for_the_next(pipeline: Path,
                                                                              project: Path) -> None:
    async def scenario() -> None:
        async with Session(pipeline) as s:
            first = await s.finished()
            assert first.data["status"] == "succeeded" and first.data["cached"] == []

            edit(pipeline, "and shaped", "and reshaped")  # one task's definition
            events = await s.until("watch.finished")
            changed = next(e for e in events if e.topic == "watch.changed")
            assert changed.data["paths"] == ["p.yaml"]
            done = events[-1]
            assert done.data["ran"] == ["shape"]
            assert sorted(done.data["cached"]) == ["count", "fetch", "wait"]
            assert stored_statuses(project, done.data["run_id"]) == {
                "(run)": "succeeded", "fetch": "cached", "shape": "succeeded", "count": "cached", "wait": "cached"}

            (project / "data" / "rows.csv").write_text("a,b\n1,2\n")  # a file count's inputs: glob matches
            events = await s.until("watch.finished")
            assert next(e for e in events if e.topic == "watch.changed").data["paths"] == ["data/rows.csv"]
            assert events[-1].data["ran"] == ["count"]

            edit(pipeline, "uses: echo\n    needs: fetch", "uses: echo\n    needs: [fetch")  # invalid YAML
            invalid = (await s.until("watch.invalid"))[-1]
            assert re.match(r"p\.yaml:\d+:\d+: YAML syntax error", invalid.data["problems"][0]), invalid.data

            edit(pipeline, "needs: [fetch", "needs: nowhere")  # valid YAML, a located schema/graph problem
            invalid = (await s.until("watch.invalid"))[-1]
            assert any(re.match(r"p\.yaml:9:12: tasks\.shape\.needs.*nowhere", p) for p in invalid.data["problems"])

            edit(pipeline, "needs: nowhere", "needs: fetch")  # the next valid save runs again
            done = await s.finished()
            assert done.data["status"] == "succeeded"
            assert done.data["ran"] == [] and len(done.data["cached"]) == 4

    asyncio.run(scenario())


def test_a_save_that_changes_nothing_runs_nothing(pipeline: Path, project: Path) -> None:
    async def scenario() -> None:
        async with Session(pipeline) as s:
            await s.finished()
            pipeline.write_text(pipeline.read_text())  # same bytes
            (project / "data" / "notes.txt").write_text("not an input")
            (project / "unrelated.yaml").write_text("x: 1\n")
            await asyncio.sleep(0.3)  # several batches' worth of quiet time
            (project / "data" / "more.csv").write_text("1\n")  # a new file the glob matches
            events = await s.until("watch.finished")
            assert [e.topic for e in events if e.topic.startswith("watch.")] == [
                "watch.changed", "watch.run", "watch.finished"]
            assert events[0].data["paths"] == ["data/more.csv"]
            assert events[-1].data["ran"] == ["count"]

    asyncio.run(scenario())


def test_removing_an_input_reruns_its_task(pipeline: Path, project: Path) -> None:
    async def scenario() -> None:
        async with Session(pipeline) as s:
            await s.finished()
            (project / "data" / "rows.csv").unlink()
            events = await s.until("watch.finished")
            assert events[0].topic == "watch.changed" and events[0].data["paths"] == ["data/rows.csv"]
            assert events[-1].data["ran"] == ["count"]

    asyncio.run(scenario())


def test_a_pipeline_writing_a_file_it_follows_settles_after_one_more_run(write_pipeline: Callable[..., Path],
                                                                          project: Path) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          derive:
            uses: file.write
            with: {path: data/derived.csv, content: "x,y"}
          count:
            uses: echo
            needs: derive
            inputs: [data/*.csv]
            with: {value: counted}
    """)

    async def scenario() -> None:
        async with Session(path) as s:
            await s.finished()  # wrote data/derived.csv: a followed file that was not there when it started
            again = await s.until("watch.finished")
            # data/ is new: the watcher watches again over it, then sees what changed meanwhile
            assert [e.topic for e in again if e.topic.startswith("watch.")] == [
                "watch.ready", "watch.changed", "watch.run", "watch.finished"]
            assert again[1].data["paths"] == ["data/derived.csv"]
            assert again[-1].data["ran"] == ["derive", "count"]
            with pytest.raises(TimeoutError):  # the same bytes again: nothing to run
                await s.until("watch.run", timeout=0.5)

    asyncio.run(scenario())


def test_an_edit_while_a_run_is_in_flight_cancels_it_and_starts_again(pipeline: Path, project: Path) -> None:
    async def scenario() -> None:
        async with Session(pipeline) as s:
            await s.finished()
            edit(pipeline, 'pause: "0"', 'pause: "30"')
            events = await s.until("task.started")
            while events[-1].task != "wait":
                events = await s.until("task.started")
            edit(pipeline, 'pause: "30"', 'pause: "0"')
            cancelled = await s.finished()
            assert cancelled.data["status"] == "cancelled"
            assert stored_statuses(project, cancelled.data["run_id"])["(run)"] == "cancelled"
            assert stored_statuses(project, cancelled.data["run_id"])["wait"] == "cancelled"
            again = await s.finished()
            assert again.data["status"] == "succeeded"
            assert again.data["run_id"] != cancelled.data["run_id"]

    asyncio.run(scenario())


def test_once_per_change_lets_the_run_finish_and_runs_once_more(pipeline: Path, project: Path) -> None:
    async def scenario() -> None:
        async with Session(pipeline, once_per_change=True) as s:
            await s.finished()
            edit(pipeline, 'pause: "0"', 'pause: "0.6"')
            events = await s.until("task.started")
            while events[-1].task != "wait":
                events = await s.until("task.started")
            edit(pipeline, "and shaped", "and reshaped")  # two saves while it runs: one more run, not two
            await asyncio.sleep(0.1)
            edit(pipeline, "and reshaped", "and shaped again")
            slow = await s.finished()
            assert slow.data["status"] == "succeeded"
            events = await s.until("watch.finished")
            assert [e.topic for e in events if e.topic in ("watch.run", "watch.finished")] == [
                "watch.run", "watch.finished"]
            assert events[-1].data["ran"] == ["shape"]
            with pytest.raises(TimeoutError):
                await s.until("watch.run", timeout=0.4)

    asyncio.run(scenario())


def test_stopping_cancels_the_run_in_flight_and_records_it(pipeline: Path, project: Path) -> None:
    async def scenario() -> Any:
        s = Session(pipeline, vars={"pause": "30"})
        async with s:
            events = await s.until("task.started")
            while events[-1].task != "wait":
                events = await s.until("task.started")
        assert s.task is not None
        return s.task.result()

    summary = asyncio.run(scenario())
    assert summary.cancelled is not None and summary.runs == []
    assert stored_statuses(project, summary.cancelled)["(run)"] == "cancelled"


def test_a_folder_runs_each_pipeline_and_picks_up_new_ones(write_pipeline: Callable[..., Path],
                                                           project: Path) -> None:
    folder = project / "flows"
    write_pipeline("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n", "flows/one.yaml")
    write_pipeline("cases: []\n", "flows/one.test.yaml")  # tests and the project file are not pipelines
    assert [p.name for p in pipelines_in(folder)] == ["one.yaml"]

    async def scenario() -> None:
        async with Session(folder) as s:
            assert (await s.finished()).data["file"] == "flows/one.yaml"
            write_pipeline("version: 1\ntasks:\n  b: {uses: echo, with: {value: 2}}\n", "flows/two.yml")
            done = await s.finished()
            assert done.data["file"] == "flows/two.yml" and done.data["ran"] == ["b"]

    asyncio.run(scenario())


def test_a_missing_target_is_an_error(project: Path) -> None:
    with pytest.raises(goatclaw.GoatclawError, match="no such file or folder"):
        Watcher(project / "nope.yaml")


def test_only_the_watcher_imports_watchfiles() -> None:
    users = {str(p.relative_to(REPO)) for p in (REPO / "goatclaw").rglob("*.py")
             if re.search(r"^\s*(from|import) watchfiles", p.read_text(), re.M)}
    assert users == {"goatclaw/watcher.py"}


# -- the command, as a real subprocess ------------------------------------------------------


class Command:
    """`goatclaw watch` in a subprocess; its stdout read line by line on a thread."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        env.pop("CI", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "watch", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}; saw:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.slow
def test_the_command_reruns_the_changed_task_survives_an_invalid_save_and_stops_on_ctrl_c(
        pipeline: Path, project: Path) -> None:
    cmd = Command(project, "p.yaml", "--debounce", "20ms", "--output", "plain")
    try:
        cmd.expect(r"^watching p\.yaml \(follows goatclaw\.yaml, p\.yaml, data/\*\.csv, data/never\.txt")
        cmd.expect(r"^first run of p\.yaml")
        cmd.expect(r"^  ran: fetch, shape, count, wait; from cache: nothing")
        edit(pipeline, "and shaped", "and reshaped")
        cmd.expect(r"^change detected: p\.yaml$")
        cmd.expect(r"^  ▶ shape started")
        done = cmd.expect(r"^✓ run (\S+) succeeded .*\(3 cached, 1 succeeded\)")
        cmd.expect(r"^  ran: shape; from cache: fetch, count, wait$")
        assert stored_statuses(project, done.group(1))["shape"] == "succeeded"

        edit(pipeline, "needs: fetch", "needs: [fetch")
        cmd.expect(r"^✗ p\.yaml is invalid; waiting for the next save")
        cmd.expect(r"^  p\.yaml:\d+:\d+: YAML syntax error")
        edit(pipeline, "needs: [fetch", "needs: fetch")
        cmd.expect(r"^change detected: p\.yaml$")
        last = cmd.expect(r"^✓ run (\S+) succeeded")
        cmd.expect(r"^  ran: nothing; from cache: fetch, shape, count, wait$")

        assert cmd.interrupt() == 0  # idle: a clean stop
        cmd.expect(r"^stopped watching$")
        assert stored_statuses(project, last.group(1))["(run)"] == "succeeded"
    finally:
        cmd.kill()


@pytest.mark.slow
def test_ctrl_c_during_a_run_records_it_cancelled_and_exits_130(pipeline: Path, project: Path) -> None:
    cmd = Command(project, "p.yaml", "--debounce", "20ms", "--var", "pause=30")
    try:
        run_id = cmd.expect(r"^run (\S+) started: p")
        cmd.expect(r"^  ▶ wait started")
        started = time.monotonic()
        assert cmd.interrupt() == 130
        assert time.monotonic() - started < 10  # the sleeping shell task was stopped, not waited for
        cmd.expect(rf"^stopped watching \(run {run_id.group(1)} cancelled\)")
        assert stored_statuses(project, run_id.group(1)) == {
            "(run)": "cancelled", "fetch": "succeeded", "shape": "succeeded", "count": "succeeded",
            "wait": "cancelled"}
    finally:
        cmd.kill()


def test_watch_docs_name_every_option() -> None:
    docs = (REPO / "docs" / "watch.md").read_text()
    help_text = subprocess.run([sys.executable, "-m", "goatclaw", "watch", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    for option in re.findall(r"(--[a-z][a-z-]+)", help_text):
        if option != "--help":
            assert option in docs, option
