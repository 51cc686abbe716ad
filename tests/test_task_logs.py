"""Task logs: what each attempt logged, kept with its run (goatclaw.engine.tasklogs), and goatclaw's own logs.

Real runs, a real SQLite store, real ``bash`` subprocesses and ``python -m goatclaw``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.engine import tasklogs
from goatclaw.plugin import TaskContext
from goatclaw.store import Store

SECRET = "hunter2-very-secret-value"


async def chatty(ctx: TaskContext, *, word: str = "hello") -> dict[str, Any]:
    """Logs at four levels through ctx.logger, once through another logger, and a secret two ways."""
    ctx.logger.debug("debug %s", word)
    ctx.logger.info("info %s", word)
    ctx.logger.warning("warning %s", word)
    ctx.logger.error("error %s", word)
    ctx.logger.info("the token is %s", ctx.secret("LOG_TOKEN"))
    logging.getLogger("somelib").warning("somelib saw %s", ctx.secret("LOG_TOKEN"))  # not ctx.logger: masked later
    return {"word": word}


def blocking(ctx: TaskContext) -> str:
    """A plain function: the engine runs it in a thread, and its log still belongs to the attempt."""
    ctx.logger.warning("from a thread")
    warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
    return "ok"


async def flaky(ctx: TaskContext) -> str:
    """Fails its first attempt, logging something each time."""
    ctx.logger.error("attempt %d starting", ctx.attempt)
    if ctx.attempt == 1:
        goatclaw.fail("first try fails", error_class="transient")
    return "ok"


async def broken(ctx: TaskContext) -> str:
    """Always fails, after saying why."""
    ctx.logger.error("the upstream answered 503 for %s", ctx.task_id)
    goatclaw.fail("upstream down", error_class="internal")


async def flood(ctx: TaskContext, *, lines: int) -> int:
    """Logs far more than an attempt keeps."""
    for i in range(lines):
        ctx.logger.info("line %d", i)
    return lines


async def quiet(ctx: TaskContext) -> int:
    """Logs nothing."""
    return 1


def registry() -> goatclaw.Registry:
    reg = goatclaw.Registry()
    for name, fn in {"chatty": chatty, "blocking": blocking, "flaky": flaky, "broken": broken, "flood": flood,
                     "quiet": quiet}.items():
        reg.register_task(name, fn)
    return reg


def run(path: Path, store: Path, **options: Any) -> goatclaw.RunResult:
    reg = registry()
    return goatclaw.run(goatclaw.load(path, registry=reg), registry=reg, store=store, **options)


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


PIPELINE = """
    version: 1
    name: logs
    secrets: [LOG_TOKEN]
    tasks:
      talk: {uses: chatty, with: {word: goat}}
      noisy:
        uses: shell
        needs: [talk]
        with:
          script: |
            echo "to stdout"
            echo "first on stderr" >&2
            sleep 0.3
            echo "second on stderr" >&2
    """


@pytest.fixture
def logged_run(write_pipeline: Callable[..., Path], store_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> goatclaw.RunResult:
    monkeypatch.setenv("LOG_TOKEN", SECRET)
    result = run(write_pipeline(PIPELINE), store_path)
    assert result.ok, result.error
    return result


def test_runs_logs_shows_a_plugins_levels_and_shell_stderr_in_order(logged_run: goatclaw.RunResult,
                                                                     store_path: Path) -> None:
    out = cli("runs", "logs", logged_run.run_id, "--store", str(store_path))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    wanted = [("debug", "talk", "debug goat"), ("info", "talk", "info goat"), ("warning", "talk", "warning goat"),
              ("error", "talk", "error goat"), ("info", "talk", "the token is"), ("warning", "talk", "somelib saw"),
              ("info", "noisy", "stderr: first on stderr"), ("info", "noisy", "stderr: second on stderr")]
    assert len(lines) == len(wanted), out.output
    for line, (level, task, text) in zip(lines, wanted, strict=True):
        stamp, shown_level, who, *_ = line.split()
        assert shown_level == level and who == task and text in line, line
        time.strptime(stamp.split(".")[0], "%H:%M:%S")
    assert "to stdout" not in out.output  # stdout is the task's output, not its log
    rows = [json.loads(x) for x in cli("runs", "logs", logged_run.run_id, "--json", "--store",
                                       str(store_path)).output.splitlines()]
    assert [r["level"] for r in rows[:4]] == ["debug", "info", "warning", "error"]
    assert [r["source"] for r in rows] == ["goatclaw.task.talk"] * 5 + ["somelib", "stderr", "stderr"]
    assert all(r["attempt"] == 1 and r["run_id"] if "run_id" in r else True for r in rows)
    times = [r["ts"] for r in rows]
    assert times == sorted(times) and times[-1] - times[-2] >= 0.25  # stderr lines stamped as they came
    assert all(logged_run.started_at <= t <= logged_run.finished_at for t in times)
    only = cli("runs", "logs", logged_run.run_id, "noisy", "--store", str(store_path)).output.splitlines()
    assert len(only) == 2 and all(" noisy " in x for x in only)


def test_a_secret_a_plugin_logs_is_masked_in_the_store_and_the_output(logged_run: goatclaw.RunResult,
                                                                      store_path: Path) -> None:
    with sqlite3.connect(store_path) as db:
        stored = [m for (m,) in db.execute("SELECT message FROM task_logs WHERE run_id = ?", (logged_run.run_id,))]
        raw = b"".join(bytes(str(r), "utf-8") for r in db.execute("SELECT * FROM task_logs"))
    assert any("the token is" in m for m in stored) and any("somelib saw" in m for m in stored)
    assert SECRET.encode() not in raw
    assert all("***" in m for m in stored if "token is" in m or "somelib" in m)
    for args in (("runs", "logs", logged_run.run_id), ("runs", "logs", logged_run.run_id, "--json")):
        out = cli(*args, "--store", str(store_path)).output
        assert "the token is" in out and SECRET not in out


@pytest.mark.filterwarnings("always::DeprecationWarning")  # the suite makes warnings errors; this one is logged
def test_a_blocking_plugins_thread_and_its_warnings_are_in_its_attempts_log(
        write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: threads
        tasks:
          slow: {uses: blocking}
        """)
    result = run(path, store_path)
    assert result.ok, result.error
    with Store.open(store_path) as db:
        lines = db.logs(result.run_id)
    assert [(x["task"], x["level"], x["source"]) for x in lines] == [
        ("slow", logging.WARNING, "goatclaw.task.slow"), ("slow", logging.WARNING, "py.warnings")]
    assert "a deprecated thing" in lines[1]["message"]


def test_each_attempt_keeps_its_own_lines_and_runs_show_prints_a_failed_tasks_log(
        write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: attempts
        tasks:
          again: {uses: flaky, retry: {attempts: 2, delay: 10ms}}
          down: {uses: broken, retry: {attempts: 1}}
        """)
    result = run(path, store_path)
    assert not result.ok
    with Store.open(store_path) as db:
        again = [(x["attempt"], x["message"]) for x in db.logs(result.run_id, "again")]
    assert again == [(1, "attempt 1 starting"), (2, "attempt 2 starting")]
    out = cli("runs", "show", result.run_id, "--store", str(store_path))
    assert "log of down" in out.output and "the upstream answered 503 for down" in out.output
    assert "log of again" not in out.output  # it succeeded in the end
    shown = json.loads(cli("runs", "show", result.run_id, "--json", "--store", str(store_path)).output)
    assert [x["message"] for x in shown["failed_logs"]] == ["the upstream answered 503 for down"]


def test_the_junit_report_puts_a_tasks_log_in_its_system_err(
        write_pipeline: Callable[..., Path], store_path: Path, project: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: junit
        tasks:
          down: {uses: broken, retry: {attempts: 1}}
          fine: {uses: quiet}
        """)
    result = run(path, store_path)
    out = cli("runs", "report", result.run_id, "--format", "junit", "--store", str(store_path))
    assert out.exit_code == 0, out.output
    cases = {c.get("name"): c for c in ET.fromstring(out.output).iter("testcase")}
    err = cases["down"].find("system-err")
    assert err is not None and "error #1 goatclaw.task.down: the upstream answered 503 for down" in (err.text or "")
    assert cases["fine"].find("system-err") is None  # it logged nothing


def test_an_attempts_log_is_bounded_and_says_how_much_it_dropped(
        write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: flood
        tasks:
          many: {uses: flood, with: {lines: 2500}}
        """)
    result = run(path, store_path)
    assert result.ok, result.error
    with Store.open(store_path) as db:
        lines = db.logs(result.run_id)
    assert len(lines) == tasklogs.MAX_LINES + 1
    assert lines[-2]["message"] == f"line {tasklogs.MAX_LINES - 1}"
    assert "500 more log lines dropped" in lines[-1]["message"]


def test_records_outside_a_task_still_reach_pythons_last_resort(write_pipeline: Callable[..., Path],
                                                                store_path: Path) -> None:
    """While a run is in progress, the capture handler on the root logger must not swallow other code's warnings."""
    path = write_pipeline("""
        version: 1
        name: outside
        tasks:
          noisy: {uses: shell, with: {script: "echo first on stderr >&2; sleep 0.3"}}
        """)
    code = textwrap.dedent(f"""
        import asyncio, logging, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import goatclaw
        from test_task_logs import registry

        async def main():
            reg = registry()
            p = goatclaw.load({str(path)!r}, registry=reg)
            async def elsewhere():
                await asyncio.sleep(0.1)
                logging.getLogger("elsewhere").warning("outside any task")
            _, result = await asyncio.gather(elsewhere(), goatclaw.arun(p, registry=reg, store={str(store_path)!r}))
            assert result.ok, result.error

        asyncio.run(main())
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LOG_TOKEN": SECRET})
    assert done.returncode == 0, done.stderr
    assert "outside any task" in done.stderr
    assert "first on stderr" not in done.stderr  # a task's line is kept with its run, not printed


def test_log_format_json_to_a_file_while_output_json_stays_one_document(
        write_pipeline: Callable[..., Path], project: Path) -> None:
    (project / "helpers.py").write_text(textwrap.dedent("""
        import logging

        def work(n):
            logging.getLogger("helpers").warning("working on %s", n)
            return n * 2
        """))
    write_pipeline("""
        version: 1
        name: ci
        permissions: {python: [helpers], shell: true}
        tasks:
          calc: {uses: python, with: {function: "helpers:work", args: [21]}}
          say: {uses: shell, with: {script: "echo complaining >&2"}}
        """)
    done = subprocess.run([sys.executable, "-m", "goatclaw", "--log-level", "info", "--log-format", "json",
                           "--log-file", "logs/goatclaw.jsonl", "apply", "p.yaml", "--output", "json"],
                          cwd=project, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")})
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # one document, no log line in it
    assert document["status"] == "succeeded"
    lines = [json.loads(x) for x in (project / "logs" / "goatclaw.jsonl").read_text().splitlines()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    by_message = {x["message"]: x for x in lines}
    calc = by_message["working on 21"]
    assert calc["run"] == document["run_id"] and calc["task"] == "calc" and calc["attempt"] == 1
    assert calc["level"] == "warning" and calc["logger"] == "helpers"
    say = by_message["complaining"]
    assert say["task"] == "say" and say["source"] == "stderr" and say["level"] == "info"
    assert done.stderr == ""  # the logs went to the file


def test_bad_log_options_are_a_command_line_error(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    for args, extra in ((["--log-level", "loud", "runs", "list"], {}), (["runs", "list"], {"GOATCLAW_LOG": "loud"}),
                        (["--log-format", "xml", "runs", "list"], {})):
        done = subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=project, capture_output=True,
                              text=True, timeout=60, env={**env, **extra})
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert ("GOATCLAW_LOG" if extra else args[0]) in done.stderr


def test_with_otel_a_tasks_log_lines_are_log_records_in_its_span(
        write_pipeline: Callable[..., Path], store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from goatclaw.tracing import RunTracer

    span_exporter, log_exporter = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tracer_provider, log_provider = TracerProvider(), LoggerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    log_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    monkeypatch.setenv("LOG_TOKEN", SECRET)
    bus = goatclaw.Bus()
    RunTracer(bus, {"talk": "chatty", "noisy": "shell"}, tracer_provider, log_provider)
    reg = registry()
    result = goatclaw.run(goatclaw.load(write_pipeline(PIPELINE), registry=reg), registry=reg, store=store_path,
                          bus=bus)
    assert result.ok, result.error
    spans = {s.attributes["goatclaw.task"]: s for s in span_exporter.get_finished_spans() if s.name == "goatclaw.task"}
    records = [r.log_record for r in log_exporter.get_finished_logs()]
    assert [r.body for r in records][:4] == ["debug goat", "info goat", "warning goat", "error goat"]
    assert [r.severity_text for r in records][:4] == ["DEBUG", "INFO", "WARN", "ERROR"]
    assert len(records) == 8 and not any(SECRET in str(r.body) for r in records)
    for record in records:
        task = record.attributes["goatclaw.task"]
        assert record.span_id == spans[task].context.span_id and record.trace_id == spans[task].context.trace_id
        assert spans[task].start_time <= record.timestamp <= spans[task].end_time
        assert record.attributes["goatclaw.run_id"] == result.run_id
    assert {r.attributes["goatclaw.source"] for r in records if r.attributes["goatclaw.task"] == "noisy"} == {"stderr"}
    tracer_provider.shutdown()
    log_provider.shutdown()


def _has_run(store: Path) -> bool:
    if not store.exists():  # sqlite3.connect would make it
        return False
    try:
        with sqlite3.connect(store) as db:
            return bool(db.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return False


def test_runs_logs_follow_prints_a_running_tasks_lines_as_they_come(write_pipeline: Callable[..., Path],
                                                                    project: Path, store_path: Path) -> None:
    write_pipeline("""
        version: 1
        name: slow
        permissions: {shell: true}
        tasks:
          slow:
            uses: shell
            with: {script: "echo early >&2; sleep 4; echo late >&2"}
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    apply = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--output", "plain"], cwd=project,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _has_run(store_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        follow = subprocess.Popen([sys.executable, "-m", "goatclaw", "runs", "logs", "last", "--follow"], cwd=project,
                                  env=env, stdout=subprocess.PIPE, text=True)
        assert follow.stdout is not None
        first = follow.stdout.readline()
        first_at = time.monotonic()
        rest = follow.stdout.read()
        rest_at = time.monotonic()
        follow.stdout.close()
        assert follow.wait(timeout=60) == 0
    finally:
        apply.wait(timeout=60)
    assert "stderr: early" in first and rest_at - first_at > 1.5  # committed while the task still slept
    assert "stderr: late" in rest and apply.returncode == 0


def test_a_large_run_commits_its_logs_through_the_writer_process(write_pipeline: Callable[..., Path],
                                                                  store_path: Path, monkeypatch) -> None:
    from goatclaw.engine.recorder import _PROCESS_WRITER_TASKS, WRITER_ENV

    monkeypatch.setenv(WRITER_ENV, "process")  # however busy the machine is
    tasks = {f"t{i}": {"uses": "quiet"} for i in range(_PROCESS_WRITER_TASKS)}
    tasks["talker"] = {"uses": "broken", "retry": {"attempts": 1}}
    path = write_pipeline(json.dumps({"version": 1, "name": "big", "tasks": tasks}))
    result = run(path, store_path)
    assert result.tasks["talker"].status.value == "failed"
    with Store.open(store_path) as db:
        assert [x["message"] for x in db.logs(result.run_id)] == ["the upstream answered 503 for talker"]


def test_a_flood_on_stderr_is_logged_up_to_a_bound_and_kept_whole_in_the_output(
        write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: stderr-flood
        permissions: {shell: true}
        tasks:
          loud: {uses: shell, with: {script: "seq 1 200000 >&2"}}
        """)
    started = time.process_time()
    result = run(path, store_path)
    spent = time.process_time() - started
    assert result.ok, result.error
    assert result.tasks["loud"].output["stderr"].splitlines()[-1] == "200000"
    with Store.open(store_path) as db:
        lines = db.logs(result.run_id)
    assert lines[0]["message"] == "1" and len(lines) <= tasklogs.MAX_LINES + 1
    assert "more log lines dropped" in lines[-1]["message"]
    assert spent < 4  # 200,000 lines are not each made a log record (1.6 s here with the bound, 5.4 s without)


def test_apply_logs_shows_each_tasks_lines_as_they_come_in_the_plain_view(
        write_pipeline: Callable[..., Path], project: Path) -> None:
    (project / "helpers.py").write_text(textwrap.dedent("""
        import logging

        def work(n):
            logging.getLogger("helpers").warning("working on %s", n)
            return n * 2
        """))
    write_pipeline("""
        version: 1
        permissions: {python: [helpers], shell: true}
        tasks:
          calc: {uses: python, with: {function: "helpers:work", args: [21]}}
          say: {uses: shell, needs: [calc], with: {script: "printf 'complaining\\\\033[31m red\\\\n' >&2"}}
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}

    def apply(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--output", "plain", *extra],
                              cwd=project, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = apply("--logs").splitlines()
    calc = next(i for i, line in enumerate(shown) if "warning" in line and "calc #1 helpers: working on 21" in line)
    say = next(i for i, line in enumerate(shown) if "say #1 stderr: complaining" in line)
    assert calc < say  # in the order they came, each with its level, task and source
    assert "\x1b" not in shown[say] and "\\x1b[31m red" in shown[say]  # a task's text cannot drive the terminal
    assert not any("complaining" in line or "working on" in line for line in apply())  # only on demand
