"""Self-healing runs against real failing things: an HTTP server, scripts, hanging process trees.

Nothing here is mocked. A scripted ``ThreadingHTTPServer`` on 127.0.0.1 answers each path
from a list of responses (the last one repeats) and counts the requests it sees; shell
tasks fail by exit code and count their attempts in a file; hanging tasks start real
grandchildren that must die. Retries sleep through an injected fake ``sleep`` that
records the delays, so no test waits for a backoff; breakers use sub-second resets.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw import TaskState
from goatclaw.cli.app import app
from goatclaw.engine.runner import RunOptions, execute
from goatclaw.registry import default_registry
from goatclaw.store import Store

REPO = Path(__file__).resolve().parent.parent

# -- a scripted HTTP server ------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Scripted:
    """A real local HTTP server; each path answers from its script, the last reply repeating."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply = scripted.next(self.path)
                body = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def script(self, path: str, *replies: Reply) -> str:
        with self.lock:
            self.scripts[path] = list(replies)
        return self.url + path

    def next(self, path: str) -> Reply:
        with self.lock:
            self.hits[path] += 1
            script = self.scripts.get(path) or [Reply(404, {"error": "no script"})]
            return script.pop(0) if len(script) > 1 else script[0]


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so that a leaked pipe or subprocess fails the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture
def server() -> Iterator[Scripted]:
    srv = Scripted()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.server.shutdown()
        srv.server.server_close()
        srv.thread.join(5)


# -- running pipelines -----------------------------------------------------------------


class FakeClock:
    """An injected ``sleep`` that records each delay and returns at once."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


def run_engine(path: Path, store: Path | None, *, sleep: Callable[[float], Any] | None = None) -> goatclaw.RunResult:
    """Run a pipeline file through the engine itself (the API does not take ``sleep``)."""
    pipeline = goatclaw.load(path)
    options = RunOptions(vars=dict(pipeline.vars), store_path=store, workspace=path.parent,
                         registry=default_registry(), sleep=sleep or asyncio.sleep)
    return asyncio.run(execute(goatclaw.plan(pipeline), options))


def events(store: Path, run_id: str, prefix: str = "") -> list[dict[str, Any]]:
    with Store.open(store) as db:
        return [e for e in db.events(run_id) if e["topic"].startswith(prefix)]


def attempts(store: Path, run_id: str, task: str | None = None) -> list[dict[str, Any]]:
    with Store.open(store) as db:
        return db.attempts(run_id, task)


def gone(pid: int, within: float = 3.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts: it runs nothing)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                return True
        time.sleep(0.02)


def resource_warnings() -> list[str]:
    """What garbage collection finds left open (unclosed pipes, unreaped subprocesses), as messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


# -- HTTP retries ----------------------------------------------------------------------


def test_429_then_503_then_200_succeeds_on_the_third_attempt(server: Scripted, write_pipeline: Callable[..., Path],
                                                             store_path: Path) -> None:
    url = server.script("/flaky", Reply(429, {"error": "slow down"}, {"Retry-After": "1"}),
                        Reply(503, {"error": "unavailable"}), Reply(200, {"answer": 42}))
    path = write_pipeline(f"""
        version: 1
        tasks:
          call:
            uses: http
            with: {{url: "{url}"}}
            retry: {{attempts: 4, backoff: exponential, delay: 0.01}}
        """)
    clock = FakeClock()
    result = run_engine(path, store_path, sleep=clock.sleep)

    call = result.tasks["call"]
    assert result.ok, result.to_dict()
    assert (call.attempts, call.output["status"], call.output["body"]) == (3, 200, {"answer": 42})
    assert server.hits["/flaky"] == 3
    assert len(clock.sleeps) == 2
    assert clock.sleeps[0] >= 1.0  # Retry-After: 1 beats the 0.01 s backoff
    assert clock.sleeps[1] == pytest.approx(0.02)  # then plain exponential: 0.01 * 2
    rows = attempts(store_path, result.run_id, "call")
    assert [(r["attempt"], r["status"], r["error_class"]) for r in rows] == [
        (1, "failed", "rate_limit"), (2, "failed", "server_error")]
    retrying = events(store_path, result.run_id, "task.retrying")
    assert [(e["data"]["attempt"], e["data"]["error_class"]) for e in retrying] == [
        (1, "rate_limit"), (2, "server_error")]
    assert retrying[0]["data"]["delay"] >= 1.0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried(server: Scripted, write_pipeline: Callable[..., Path], store_path: Path,
                                       status: int) -> None:
    url = server.script("/secret", Reply(status, {"error": "who are you"}), Reply(200, {"ok": True}))
    path = write_pipeline(f"""
        version: 1
        tasks:
          call:
            uses: http
            with: {{url: "{url}"}}
            retry: {{attempts: 5, backoff: fixed, delay: 0.01}}
        """)
    clock = FakeClock()
    result = run_engine(path, store_path, sleep=clock.sleep)
    call = result.tasks["call"]
    assert (call.status, call.error_class, call.attempts) == (TaskState.FAILED, "auth", 1)
    assert server.hits["/secret"] == 1 and clock.sleeps == []
    assert events(store_path, result.run_id, "task.retrying") == []


def test_retries_stop_at_the_attempt_limit(server: Scripted, write_pipeline: Callable[..., Path],
                                           store_path: Path) -> None:
    url = server.script("/down", Reply(503))
    path = write_pipeline(f"""
        version: 1
        tasks:
          call:
            uses: http
            with: {{url: "{url}"}}
            retry: {{attempts: 4, backoff: fibonacci, delay: 0.5, max_delay: 1}}
        """)
    clock = FakeClock()
    result = run_engine(path, store_path, sleep=clock.sleep)
    call = result.tasks["call"]
    assert (call.status, call.error_class, call.attempts) == (TaskState.FAILED, "server_error", 4)
    assert server.hits["/down"] == 4
    assert clock.sleeps == [0.5, 1.0, 1.0]  # 0.5 * F(n): 0.5, 1.0, 1.5 capped at 1
    assert len(attempts(store_path, result.run_id, "call")) == 4


# -- a script that fails N times -------------------------------------------------------

COUNTING = 'n=$(cat count.txt 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > count.txt; [ "$n" -gt "$FAILS" ]'


@pytest.mark.parametrize("fails", [1, 3])
def test_a_script_that_fails_n_times_succeeds_on_attempt_n_plus_one(write_pipeline: Callable[..., Path],
                                                                   store_path: Path, project: Path,
                                                                   fails: int) -> None:
    path = write_pipeline(f"""
        version: 1
        tasks:
          flaky:
            uses: shell
            with:
              script: '{COUNTING} && echo "attempt $n"'
              env: {{FAILS: "{fails}"}}
            retry: {{attempts: 6, backoff: linear, delay: 0.1}}
        """)
    clock = FakeClock()
    result = run_engine(path, store_path, sleep=clock.sleep)
    flaky = result.tasks["flaky"]
    assert result.ok, result.to_dict()
    assert flaky.attempts == fails + 1
    assert (project / "count.txt").read_text().strip() == str(fails + 1)  # the side effect ran each time
    assert flaky.output["stdout"].strip() == f"attempt {fails + 1}"
    assert clock.sleeps == pytest.approx([0.1 * k for k in range(1, fails + 1)])
    assert [r["attempt"] for r in attempts(store_path, result.run_id, "flaky")] == list(range(1, fails + 1))


def test_a_script_that_keeps_failing_runs_exactly_attempts_times(write_pipeline: Callable[..., Path],
                                                                 project: Path) -> None:
    path = write_pipeline(f"""
        version: 1
        tasks:
          flaky:
            uses: shell
            with: {{script: '{COUNTING}', env: {{FAILS: "99"}}}}
            retry: {{attempts: 3, delay: 0}}
          after: {{uses: echo, needs: flaky, with: {{value: 1}}}}
        """)
    result = run_engine(path, None, sleep=FakeClock().sleep)
    assert (result.tasks["flaky"].status, result.tasks["flaky"].attempts) == (TaskState.FAILED, 3)
    assert result.tasks["after"].status is TaskState.UPSTREAM_FAILED
    assert (project / "count.txt").read_text().strip() == "3"


# -- hanging tasks ---------------------------------------------------------------------

HANG = "sleep 60 & echo $! > grandchild.pid; wait"


def test_a_task_timeout_kills_the_whole_process_tree(write_pipeline: Callable[..., Path], project: Path) -> None:
    path = write_pipeline(f"""
        version: 1
        tasks:
          hang: {{uses: shell, with: {{script: "{HANG}"}}, timeout: 0.5}}
        """)
    began = time.monotonic()
    result = run_engine(path, None)
    took = time.monotonic() - began
    pid = int((project / "grandchild.pid").read_text())
    try:
        hang = result.tasks["hang"]
        assert (hang.status, hang.error_class) == (TaskState.FAILED, "timeout")
        assert took < 3.0
        assert gone(pid), f"grandchild {pid} survived the timeout"
    finally:
        kill_if_alive(pid)


def test_a_timeout_is_retried_like_any_transient_failure(write_pipeline: Callable[..., Path], project: Path,
                                                         store_path: Path) -> None:
    path = write_pipeline(f"""
        version: 1
        tasks:
          hang:
            uses: shell
            with: {{script: '{COUNTING} || sleep 30'}}
            env: {{FAILS: "1"}}
            timeout: 0.3
            retry: {{attempts: 3, delay: 0}}
        """)
    result = run_engine(path, store_path, sleep=FakeClock().sleep)
    assert result.ok, result.to_dict()
    assert result.tasks["hang"].attempts == 2
    assert [r["error_class"] for r in attempts(store_path, result.run_id, "hang")] == ["timeout"]


def test_a_pipeline_timeout_stops_the_run_and_its_process_tree(write_pipeline: Callable[..., Path],
                                                               project: Path) -> None:
    path = write_pipeline(f"""
        version: 1
        timeout: 0.5
        tasks:
          hang: {{uses: shell, with: {{script: "{HANG}"}}}}
        """)
    began = time.monotonic()
    result = run_engine(path, None)
    took = time.monotonic() - began
    pid = int((project / "grandchild.pid").read_text())
    try:
        assert not result.ok
        assert result.error == "the pipeline timed out after 0.5s"
        assert (result.tasks["hang"].status, result.tasks["hang"].error_class) == (TaskState.CANCELLED, "cancelled")
        assert took < 3.0
        assert gone(pid), f"grandchild {pid} survived the pipeline timeout"
        assert resource_warnings() == []
    finally:
        kill_if_alive(pid)


def test_a_pipeline_timeout_lets_the_cancelled_task_clean_up(write_pipeline: Callable[..., Path],
                                                             project: Path) -> None:
    # two tasks make two workers; the idle one ends gather() at once, and the busy one is cancelled twice
    path = write_pipeline(f"""
        version: 1
        timeout: 0.5
        tasks:
          hang: {{uses: shell, with: {{script: "{HANG}"}}}}
          later: {{uses: echo, needs: hang, with: {{value: never}}}}
        """)
    result = run_engine(path, None)
    pid = int((project / "grandchild.pid").read_text())
    try:
        assert (result.tasks["hang"].status, result.tasks["later"].status) == (TaskState.CANCELLED,
                                                                              TaskState.CANCELLED)
        assert gone(pid)
        assert resource_warnings() == []
    finally:
        kill_if_alive(pid)


@goatclaw.task(cpu_bound=True)
def spin(ctx: goatclaw.TaskContext, pidfile: str) -> None:
    """Write the worker's pid, then burn CPU forever."""
    Path(pidfile).write_text(str(os.getpid()))
    while True:
        pass


def test_a_timed_out_cpu_bound_task_has_its_worker_process_killed(write_pipeline: Callable[..., Path],
                                                                   project: Path) -> None:
    reg = goatclaw.Registry(entry_points=False)
    reg.register_task("spin", spin)
    path = write_pipeline(f"""
        version: 1
        tasks:
          burn: {{uses: spin, with: {{pidfile: "{project / 'worker.pid'}"}}, timeout: 1}}
        """)
    pipeline = goatclaw.load(path, registry=reg)
    began = time.monotonic()
    result = goatclaw.run(pipeline, registry=reg, store=False)
    assert time.monotonic() - began < 4.0
    pid = int((project / "worker.pid").read_text())
    try:
        assert (result.tasks["burn"].status, result.tasks["burn"].error_class) == (TaskState.FAILED, "timeout")
        assert gone(pid), f"worker {pid} still burning after the timeout"
    finally:
        kill_if_alive(pid)


# -- circuit breakers ------------------------------------------------------------------


def breaker_pipeline(urls: list[str], *, reset: str = "0.5s", key: str = "svc", wait: bool = False,
                     pause_before: int | None = None) -> str:
    """Tasks ``t0``, ``t1`` … in a chain, each calling one URL behind the same breaker, one at a time."""
    lines = ["version: 1", "concurrency: 1", "tasks:"]
    previous = None
    for i, url in enumerate(urls):
        if pause_before == i:
            lines += ["  pause:", "    uses: shell", "    with: {script: 'sleep 0.6'}"]
            lines += [f"    needs: {previous}"] if previous else []
            previous = "pause"
        lines += [f"  t{i}:", "    uses: http", f'    with: {{url: "{url}"}}', "    continue_on_error: true",
                  f"    breaker: {{failures: 2, window: 1m, reset: {reset}, key: {key}, wait: {str(wait).lower()}}}"]
        lines += [f"    needs: {previous}"] if previous else []
        previous = f"t{i}"
    return "\n".join(lines) + "\n"


def test_an_open_breaker_fails_fast_then_a_probe_after_reset_closes_it(
        server: Scripted, write_pipeline: Callable[..., Path], store_path: Path) -> None:
    down = server.script("/down", Reply(503))
    up = server.script("/up", Reply(200, {"ok": True}))
    path = write_pipeline(breaker_pipeline([down, down, down, down, up], pause_before=4))
    result = run_engine(path, store_path)

    t = result.tasks
    assert [t[f"t{i}"].error_class for i in range(5)] == ["server_error", "server_error", "breaker_open",
                                                          "breaker_open", None]
    assert server.hits["/down"] == 2  # the third and fourth calls never reached the server
    assert "circuit breaker 'svc' is open" in (t["t2"].error or "")
    assert t["t4"].status is TaskState.SUCCEEDED and server.hits["/up"] == 1
    assert result.ok  # every failure was continue_on_error
    topics = [(e["topic"], e["data"].get("key")) for e in events(store_path, result.run_id, "breaker.")]
    assert topics == [("breaker.opened", "svc"), ("breaker.half_open", "svc"), ("breaker.closed", "svc")]
    with Store.open(store_path) as db:
        (row,) = db.breakers()
    assert (row["key"], row["state"]) == ("svc", "closed")


def test_a_failed_probe_reopens_the_breaker(server: Scripted, write_pipeline: Callable[..., Path],
                                            store_path: Path) -> None:
    down = server.script("/down", Reply(503))
    path = write_pipeline(breaker_pipeline([down, down, down, down], pause_before=3))
    result = run_engine(path, store_path)
    assert [result.tasks[f"t{i}"].error_class for i in range(4)] == [
        "server_error", "server_error", "breaker_open", "server_error"]
    assert server.hits["/down"] == 3  # two failures and one probe
    topics = [e["topic"] for e in events(store_path, result.run_id, "breaker.")]
    assert topics == ["breaker.opened", "breaker.half_open", "breaker.opened"]
    with Store.open(store_path) as db:
        assert db.breakers()[0]["state"] == "open"


def test_the_default_key_is_the_plugin_and_host(server: Scripted, write_pipeline: Callable[..., Path],
                                                store_path: Path) -> None:
    down = server.script("/a", Reply(503))
    other = server.script("/b", Reply(200))  # another path on the same host fails fast too
    text = breaker_pipeline([down, down, other]).replace(", key: svc", "")
    result = run_engine(write_pipeline(text), store_path)
    assert result.tasks["t2"].error_class == "breaker_open" and server.hits["/b"] == 0
    with Store.open(store_path) as db:
        assert [r["key"] for r in db.breakers()] == [f"http:{server.url.removeprefix('http://')}"]


def test_breaker_state_outlives_the_run_and_the_cli_lists_and_resets_it(
        server: Scripted, write_pipeline: Callable[..., Path], store_path: Path) -> None:
    down = server.script("/down", Reply(503))
    up = server.script("/up", Reply(200, {"ok": True}))
    first = run_engine(write_pipeline(breaker_pipeline([down, down], reset="30s"), "one.yaml"), store_path)
    assert [first.tasks[t].error_class for t in ("t0", "t1")] == ["server_error", "server_error"]

    second_file = write_pipeline(breaker_pipeline([up], reset="30s"), "two.yaml")
    second = run_engine(second_file, store_path)
    assert second.tasks["t0"].error_class == "breaker_open"  # opened by run 1, reset not yet elapsed
    assert server.hits["/up"] == 0

    cli = CliRunner()
    listed = cli.invoke(app, ["breakers", "list", "--store", str(store_path), "--json"], catch_exceptions=False)
    assert listed.exit_code == 0
    (row,) = json.loads(listed.stdout)
    assert (row["key"], row["state"], len(row["failures"])) == ("svc", "open", 2)
    table = cli.invoke(app, ["breakers", "list", "--store", str(store_path)], catch_exceptions=False)
    assert "svc" in table.stdout and "open" in table.stdout

    reset = cli.invoke(app, ["breakers", "reset", "svc", "--store", str(store_path)], catch_exceptions=False)
    assert reset.exit_code == 0
    unknown = cli.invoke(app, ["breakers", "reset", "nope", "--store", str(store_path)], catch_exceptions=False)
    assert unknown.exit_code != 0

    third = run_engine(second_file, store_path)
    assert third.tasks["t0"].status is TaskState.SUCCEEDED and server.hits["/up"] == 1


def test_wait_true_waits_for_half_open_instead_of_failing(server: Scripted, write_pipeline: Callable[..., Path],
                                                          store_path: Path) -> None:
    down = server.script("/down", Reply(503))
    up = server.script("/up", Reply(200, {"ok": True}))
    run_engine(write_pipeline(breaker_pipeline([down, down]), "one.yaml"), store_path)
    began = time.monotonic()
    result = run_engine(write_pipeline(breaker_pipeline([up], wait=True), "two.yaml"), store_path)
    waited = time.monotonic() - began
    assert result.tasks["t0"].status is TaskState.SUCCEEDED
    assert 0.2 < waited < 3.0  # it waited out (most of) the 0.5 s reset rather than failing
    assert server.hits["/up"] == 1
    assert [e["topic"] for e in events(store_path, result.run_id, "breaker.")] == ["breaker.half_open",
                                                                                  "breaker.closed"]


def test_a_half_open_breaker_lets_exactly_one_probe_through(server: Scripted, write_pipeline: Callable[..., Path],
                                                            store_path: Path) -> None:
    down = server.script("/down", Reply(503))
    slow = server.script("/up", Reply(200, {"ok": True}))
    run_engine(write_pipeline(breaker_pipeline([down, down], reset="0.2s"), "one.yaml"), store_path)
    time.sleep(0.3)
    text = "\n".join([
        "version: 1", "concurrency: 4", "tasks:",
        *[line for i in range(4) for line in (
            f"  p{i}:", "    uses: http", f'    with: {{url: "{slow}"}}', "    continue_on_error: true",
            "    breaker: {failures: 2, reset: 0.2s, key: svc}")],
    ]) + "\n"
    result = run_engine(write_pipeline(text, "probes.yaml"), store_path)
    classes = sorted(str(result.tasks[f"p{i}"].error_class) for i in range(4))
    assert server.hits["/up"] >= 1
    # the first probe goes through; the others arrive while it is in flight (fail fast) or after it closed
    assert classes.count("breaker_open") == 4 - server.hits["/up"]


def test_adaptive_backoff_shortens_after_successes_on_the_same_breaker(
        server: Scripted, write_pipeline: Callable[..., Path], store_path: Path) -> None:
    flaky = server.script("/flaky", Reply(503), Reply(503), Reply(200, {"ok": True}))
    up = server.script("/up", Reply(200, {"ok": True}))
    ok = [f"""
          ok{i}:
            uses: http
            needs: pause
            with: {{url: "{up}"}}
            breaker: {{key: svc, failures: 50}}""" for i in range(3)]
    path = write_pipeline(f"""
        version: 1
        concurrency: 4
        tasks:
          pause: {{uses: shell, with: {{script: "sleep 0.1"}}}}
          flaky:
            uses: http
            with: {{url: "{flaky}"}}
            breaker: {{key: svc, failures: 50}}
            retry: {{attempts: 3, backoff: adaptive, delay: 0.4, multiplier: 1}}""" + "".join(ok) + "\n")
    delays: list[float] = []

    async def sleep(seconds: float) -> None:  # real waiting, so the other tasks succeed meanwhile
        delays.append(seconds)
        await asyncio.sleep(seconds)

    result = run_engine(path, store_path, sleep=sleep)
    assert result.ok, result.to_dict()
    assert server.hits["/up"] == 3 and result.tasks["flaky"].attempts == 3
    # the three successes on 'svc' came between the two delays: the second should be shorter
    assert delays[0] == pytest.approx(0.4)
    assert delays[1] < delays[0]


# -- fallback, on_failure, finally ---------------------------------------------------------------


FAILURE_HANDLING = """
    version: 1
    tasks:
      primary:
        uses: http
        with: {{url: "{url}"}}
        retry: {{attempts: 2, delay: 0}}
        fallback: spare
      spare:
        uses: echo
        with: {{status: 200, body: {{source: cache, answer: 41}}}}
      use:
        uses: echo
        needs: primary
        with: {{value: "${{{{ tasks.primary.output.body.answer + 1 }}}}"}}
      {extra}
    on_failure:
      alert:
        uses: echo
        with: {{value: "${{{{ run.errors }}}}"}}
    finally:
      cleanup:
        uses: echo
        with: {{value: "${{{{ run.status }}}}"}}
    """


def test_fallback_stands_in_when_the_primary_fails_for_good(server: Scripted, write_pipeline: Callable[..., Path],
                                                            store_path: Path) -> None:
    url = server.script("/down", Reply(503))
    path = write_pipeline(FAILURE_HANDLING.format(url=url, extra=""))
    result = run_engine(path, store_path, sleep=FakeClock().sleep)
    primary = result.tasks["primary"]
    assert result.ok, result.to_dict()
    assert (primary.status, primary.fallback, primary.attempts) == (TaskState.SUCCEEDED, "spare", 2)
    assert primary.output == {"status": 200, "body": {"source": "cache", "answer": 41}}
    assert primary.output == result.tasks["spare"].output
    assert result.tasks["use"].output == 42
    assert server.hits["/down"] == 2  # retried first, then fell back
    (used,) = events(store_path, result.run_id, "task.fallback")
    assert (used["task"], used["data"]["fallback"], used["data"]["error_class"]) == ("primary", "spare",
                                                                                    "server_error")
    assert "alert" not in result.tasks  # on_failure only runs when the run failed
    assert result.tasks["cleanup"].output == "succeeded"  # finally always runs and sees the status


def test_the_standby_does_not_run_when_the_primary_succeeds(server: Scripted, write_pipeline: Callable[..., Path],
                                                            store_path: Path) -> None:
    url = server.script("/ok", Reply(200, {"answer": 1}))
    result = run_engine(write_pipeline(FAILURE_HANDLING.format(url=url, extra="")), store_path)
    assert result.ok and result.tasks["primary"].fallback is None
    assert result.tasks["use"].output == 2
    assert "spare" not in result.tasks or result.tasks["spare"].status is TaskState.PENDING
    assert events(store_path, result.run_id, "task.fallback") == []


def test_on_failure_and_finally_see_the_failed_run(server: Scripted, write_pipeline: Callable[..., Path],
                                                   store_path: Path) -> None:
    url = server.script("/ok", Reply(200, {"answer": 1}))
    broken = server.script("/broken", Reply(401))
    extra = f'bad: {{uses: http, with: {{url: "{broken}"}}}}'
    result = run_engine(write_pipeline(FAILURE_HANDLING.format(url=url, extra=extra)), store_path)
    assert not result.ok
    assert result.tasks["alert"].status is TaskState.SUCCEEDED
    (error,) = result.tasks["alert"].output
    assert (error["task"], error["error_class"]) == ("bad", "auth")
    assert "401" in error["error"]
    assert result.tasks["cleanup"].output == "failed"


def test_runs_show_tells_of_breaker_changes_and_fallbacks(server: Scripted, write_pipeline: Callable[..., Path],
                                                          store_path: Path) -> None:
    down = server.script("/down", Reply(503))
    path = write_pipeline(f"""
        version: 1
        tasks:
          primary:
            uses: http
            with: {{url: "{down}"}}
            breaker: {{key: svc, failures: 1, reset: 30s}}
            fallback: spare
          spare: {{uses: echo, with: {{value: from the spare}}}}
        """)
    result = run_engine(path, store_path)
    assert result.ok and result.tasks["primary"].fallback == "spare"
    assert {e["topic"] for e in events(store_path, result.run_id)} >= {"breaker.opened", "task.fallback"}
    shown = CliRunner().invoke(app, ["runs", "show", result.run_id, "--store", str(store_path)],
                               catch_exceptions=False)
    assert shown.exit_code == 0
    text = shown.stdout.lower()
    assert "fallback" in text and "spare" in text
    assert "opened" in text and "svc" in text


# -- fan-out ---------------------------------------------------------------------------------

FANOUT = """
    version: 1
    tasks:
      each:
        uses: shell
        foreach: [0, 1, 2]
        concurrency: 3
        fail_fast: {fail_fast}
        with:
          script: 'if [ "$ITEM" = 0 ]; then exit 1; fi; sleep {pause}; echo done > "out-$ITEM.txt"'
          env: {{ITEM: "${{{{ item }}}}"}}
    """


@pytest.mark.slow
def test_fail_fast_cancels_the_other_items(write_pipeline: Callable[..., Path], project: Path) -> None:
    began = time.monotonic()
    result = run_engine(write_pipeline(FANOUT.format(fail_fast="true", pause=1.5)), None)
    assert time.monotonic() - began < 1.2  # it did not wait for the siblings
    each = result.tasks["each"]
    assert (each.status, each.error_class) == (TaskState.FAILED, "internal")
    time.sleep(max(0.0, began + 2.0 - time.monotonic()))  # past the moment the siblings would have written
    assert list(project.glob("out-*.txt")) == []


def test_without_fail_fast_every_item_finishes(write_pipeline: Callable[..., Path], project: Path) -> None:
    result = run_engine(write_pipeline(FANOUT.format(fail_fast="false", pause=0.2)), None)
    each = result.tasks["each"]
    assert each.status is TaskState.FAILED
    assert "1 of 3 items failed; item 0" in (each.error or "")
    assert sorted(p.name for p in project.glob("out-*.txt")) == ["out-1.txt", "out-2.txt"]


def test_fan_out_items_retry_on_their_own(write_pipeline: Callable[..., Path], project: Path) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          each:
            uses: shell
            foreach: [a, b, c]
            with:
              script: |
                f="n-$ITEM"; n=$(cat "$f" 2>/dev/null || echo 0); echo $((n + 1)) > "$f"
                { [ "$ITEM" != b ] || [ "$n" -ge 2 ]; } && echo "$ITEM"
              env: {ITEM: "${{ item }}"}
            retry: {attempts: 4, delay: 0}
        """)
    result = run_engine(path, None, sleep=FakeClock().sleep)
    each = result.tasks["each"]
    assert result.ok, result.to_dict()
    assert [o["stdout"].strip() for o in each.output] == ["a", "b", "c"]
    assert each.attempts == 3  # the busiest item
    assert [(project / f"n-{i}").read_text().strip() for i in "abc"] == ["1", "3", "1"]


# -- the example pipeline ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_flaky_service_example_runs_offline_twice(project: Path) -> None:
    (project / "pipelines").mkdir()
    shutil.copy(REPO / "pipelines" / "flaky-service.yaml", project / "pipelines" / "flaky-service.yaml")
    shutil.copytree(REPO / "pipelines" / "flaky", project / "pipelines" / "flaky",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "NO_COLOR": "1"}
    for run in (1, 2):  # the breaker state left by the first run must not break the second
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "pipelines/flaky-service.yaml",
                               "--output", "json"], cwd=project, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (run, done.stdout[-3000:], done.stderr[-3000:])
        assert time.monotonic() - began < 20
        report = json.loads(done.stdout)
        assert report["status"] == "succeeded"
        assert report["tasks"]["recovering"]["attempts"] == 3
        assert report["tasks"]["rate_limited"]["attempts"] == 2
    with Store.open(project / ".goatclaw" / "goatclaw.db") as db:
        assert any(r["key"] == "flaky-broken" for r in db.breakers())

