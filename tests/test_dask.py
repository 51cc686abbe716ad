"""The dask executor on a real LocalCluster with two worker processes.

Most tests share one cluster (``cluster``, started once for the module, reached by its
address the way a user's ``--address`` reaches a real scheduler); the tests of the
executor's own cluster start one per run, as ``executor: dask`` with no address does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask_tasks
import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.engine.executor import make_executor
from goatclaw.registry import Registry

distributed = pytest.importorskip("distributed")

@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two single-threaded worker processes; Dask itself re-runs no task whose worker died."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL,
                                  scheduler_kwargs={"allowed_failures": 0, "dashboard": False}) as c:
        yield c


def registry() -> Registry:
    reg = Registry()
    for name in ("burn", "where", "die_once", "spin", "masked_forms"):
        reg.register_task(name, getattr(dask_tasks, name))
    return reg


def where_events(bus: goatclaw.Bus) -> list[int]:
    pids: list[int] = []
    bus.subscribe("test.where", lambda e: pids.append(e.data["pid"]))
    return pids


FAN_OUT = """
    version: 1
    name: fan-out
    tasks:
      primes:
        uses: burn
        foreach: [3001, 4001, 5001, 6001, 7001, 8001, 9001, 10001]
        with: {n: "${{ item }}"}
      total:
        uses: echo
        needs: [primes]
        run_on: local
        with:
          primes: "${{ tasks.primes.outputs | map(attribute='primes') | sum }}"
          digests: "${{ tasks.primes.outputs | map(attribute='digest') | list }}"
"""


@pytest.mark.slow
def test_cpu_bound_fan_out_gives_the_same_outputs_as_local(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(FAN_OUT)
    local = goatclaw.run(path, registry=registry(), store=False)
    bus = goatclaw.Bus()
    pids = where_events(bus)
    started = time.perf_counter()
    remote = goatclaw.run(path, registry=registry(), store=False, executor="dask", bus=bus)
    assert time.perf_counter() - started < 60
    assert local.ok and remote.ok, (local.tasks, remote.tasks)
    assert remote.outputs == local.outputs
    assert local.outputs["total"]["primes"] == sum(dask_tasks._primes_below(n) for n in range(3001, 10002, 1000))
    # every item ran in a worker process (its event came back to the driver), on both workers
    assert len(pids) == 8 and os.getpid() not in pids
    assert len(set(pids)) == 2


@pytest.mark.slow
def test_run_on_local_keeps_a_task_on_the_driver(cluster: Any, write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        name: placement
        tasks:
          here: {uses: where, run_on: local}
          there: {uses: where}
          also_there: {uses: where, run_on: cluster}
    """)
    result = goatclaw.run(path, registry=registry(), store=False, executor="dask",
                          executor_address=cluster.scheduler_address)
    assert result.ok, result.tasks
    out = result.outputs
    assert out["here"] == os.getpid()
    assert out["there"] != os.getpid() and out["also_there"] != os.getpid()


@pytest.mark.slow
def test_events_and_outputs_are_stored_by_the_driver(cluster: Any, write_pipeline: Callable[..., Path],
                                                     store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: stored
        tasks:
          hash: {uses: burn, with: {n: 500, rounds: 10}}
    """)
    result = goatclaw.run(path, registry=registry(), executor="dask", executor_address=cluster.scheduler_address)
    assert result.ok
    from goatclaw.store import Store

    db = Store.open(store_path)
    try:
        topics = [e["topic"] for e in db.events(result.run_id)]
        stored = {row.task_id: row.output for row in db.tasks(result.run_id)}["hash"]
    finally:
        db.close()
    assert "test.where" in topics  # emitted on a worker, recorded in the driver's store
    assert stored == result.outputs["hash"]


@pytest.mark.slow
def test_the_audit_key_never_travels_to_a_worker(cluster: Any, write_pipeline: Callable[..., Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from goatclaw.security.auditkey import KEY_ENV, forget_audit_key

    monkeypatch.setenv(KEY_ENV, "the-audit-key-of-this-test-0123456789")
    path = write_pipeline("""
        version: 1
        name: keyless
        tasks:
          there: {uses: masked_forms}
          here: {uses: masked_forms, run_on: local}
    """)
    try:
        result = goatclaw.run(path, registry=registry(), executor="dask", executor_address=cluster.scheduler_address)
    finally:
        forget_audit_key()
    assert result.ok, result.error
    assert result.outputs["here"] > 0  # on the driver the key (and its encoded forms) is masked
    assert result.outputs["there"] == 0  # a worker knows no secret this pipeline did not declare


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_a_connection_error_and_the_retry_succeeds(
        write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    path = write_pipeline(f"""
        version: 1
        name: killed
        tasks:
          fragile:
            uses: die_once
            with: {{marker: "{marker}"}}
            retry: {{attempts: 3, delay: 100ms, jitter: false}}
    """)
    bus = goatclaw.Bus()
    retries: list[dict[str, Any]] = []
    bus.subscribe("task.retrying", lambda e: retries.append(e.data))

    async def scenario() -> goatclaw.RunResult:
        run = asyncio.create_task(goatclaw.arun(path, registry=registry(), store=False, executor="dask", bus=bus))
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline and not run.done(), "the task never started on a worker"
            await asyncio.sleep(0.05)
        pid = int(marker.read_text())
        assert pid != os.getpid()  # a worker process, never this one
        os.kill(pid, signal.SIGKILL)
        return await run

    result = asyncio.run(scenario())
    assert result.ok, result.tasks
    assert result.outputs["fragile"] == {"attempt": 2, "killed": True}
    assert result.tasks["fragile"].attempts == 2
    assert [r["error_class"] for r in retries] == ["connection"]
    assert "was lost" in retries[0]["error"] and "KilledWorker" in retries[0]["error"]


@pytest.mark.slow
def test_a_plugin_missing_on_the_workers_is_reported_with_its_package(
        cluster: Any, write_pipeline: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a real installed distribution with an entry point, on the driver's sys.path only: the
    # cluster's workers were started before it existed
    site = tmp_path / "driver-site"
    (site / "goatclaw_driveronly-0.3.0.dist-info").mkdir(parents=True)
    (site / "goatclaw_driveronly-0.3.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: goatclaw-driveronly\nVersion: 0.3.0\n")
    (site / "goatclaw_driveronly-0.3.0.dist-info" / "entry_points.txt").write_text(
        "[goatclaw.tasks]\ndriveronly.double = driveronly_plugin:double\n")
    (site / "driveronly_plugin.py").write_text("def double(ctx, *, x: int) -> int:\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(site))
    path = write_pipeline("""
        version: 1
        name: missing
        tasks:
          twice:
            uses: driveronly.double
            with: {x: 21}
            retry: {attempts: 3, delay: 10ms}
          here:
            uses: driveronly.double
            run_on: local
            with: {x: 21}
    """)
    result = goatclaw.run(path, registry=Registry(), store=False, executor="dask",
                          executor_address=cluster.scheduler_address)
    twice = result.tasks["twice"]
    assert twice.status.value == "failed"
    assert twice.error_class == "invalid_input" and twice.attempts == 1  # not retried: it cannot get better
    assert "task plugin 'driveronly.double' is not installed on the Dask worker tcp://" in (twice.error or "")
    assert "install goatclaw-driveronly 0.3.0 there" in (twice.error or "")
    assert result.outputs["here"] == 42  # the driver has it


@pytest.mark.slow
def test_a_timeout_stops_the_remote_task(cluster: Any, write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    path = write_pipeline(f"""
        version: 1
        name: spinning
        tasks:
          forever:
            uses: spin
            timeout: 1s
            retry: {{attempts: 1}}
            with: {{beat: "{beat}"}}
    """)
    result = goatclaw.run(path, registry=registry(), store=False, executor="dask",
                          executor_address=cluster.scheduler_address)
    assert result.tasks["forever"].error_class == "timeout"
    assert beat.exists()  # it really ran on a worker ...
    time.sleep(0.5)
    before = beat.read_text()
    time.sleep(0.5)
    assert beat.read_text() == before  # ... and stopped there, instead of spinning on


@pytest.mark.slow
def test_cancelling_a_run_stops_its_remote_tasks(cluster: Any, write_pipeline: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    path = write_pipeline(f"""
        version: 1
        name: spinning
        tasks:
          forever: {{uses: spin, with: {{beat: "{beat}"}}}}
    """)

    async def scenario() -> None:
        run = asyncio.create_task(goatclaw.arun(path, registry=registry(), store=False, executor="dask",
                                                executor_address=cluster.scheduler_address))
        deadline = time.monotonic() + 30
        while not beat.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(scenario())
    time.sleep(0.5)
    before = beat.read_text()
    time.sleep(0.5)
    assert beat.read_text() == before


@pytest.mark.slow
def test_cli_runs_on_a_scheduler_address(cluster: Any, write_pipeline: Callable[..., Path]) -> None:
    from goatclaw.cli.app import app

    path = write_pipeline("""
        version: 1
        name: cli
        tasks:
          hello: {uses: echo, with: {text: hi}}
    """)
    result = CliRunner().invoke(app, ["apply", str(path), "--executor", "dask", "--address",
                                      cluster.scheduler_address, "-o", "json"])
    assert result.exit_code == 0, result.output
    assert '"hello"' in result.output


@pytest.mark.slow
def test_an_unreachable_scheduler_is_a_clear_error(write_pipeline: Callable[..., Path]) -> None:
    import socket

    import dask

    from goatclaw.cli.app import app

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_pipeline("""
        version: 1
        name: nowhere
        tasks:
          hello: {uses: echo, with: {text: hi}}
    """)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(app, ["apply", str(path), "--address", f"tcp://127.0.0.1:{port}", "-o", "plain"])
    assert result.exit_code == 1
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_goatclaw_yaml_chooses_the_executor(project: Path, cluster: Any, write_pipeline: Callable[..., Path]) -> None:
    (project / "goatclaw.yaml").write_text(f"version: 1\nexecutor: {cluster.scheduler_address}\n")
    path = write_pipeline("""
        version: 1
        name: configured
        tasks:
          there: {uses: where}
    """)
    result = goatclaw.run(path, registry=registry(), store=False)
    assert result.ok and result.outputs["there"] != os.getpid()
    address = cluster.scheduler_address
    (project / "goatclaw.yaml").write_text(f"version: 1\nexecutor: {{type: dask, address: '{address}'}}\n")
    result = goatclaw.run(path, registry=registry(), store=False, executor="local")  # the argument wins
    assert result.ok and result.outputs["there"] == os.getpid()


def test_unknown_executor_and_stray_address_are_refused() -> None:
    with pytest.raises(goatclaw.GoatclawError, match="unknown executor 'ray'"):
        make_executor("ray")
    with pytest.raises(goatclaw.GoatclawError, match="needs the dask executor"):
        make_executor("local", address="tcp://127.0.0.1:8786")


IMPORTS = textwrap.dedent("""
    import sys
    import goatclaw
    result = goatclaw.run(sys.argv[1], store=sys.argv[2])
    assert result.ok, result
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
    print("leaked:", leaked)
    from goatclaw.engine.executor import make_executor
    make_executor("dask")
    print("after:", "distributed" in sys.modules)
""")


def test_a_local_run_never_imports_dask(write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: plain
        tasks:
          hello: {uses: echo, with: {text: hi}}
    """)
    out = subprocess.run([sys.executable, "-c", IMPORTS, str(path), str(tmp_path / "s.db")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "leaked: []" in out
    assert "after: True" in out  # the check can see dask when it is imported


def test_a_missing_dask_install_names_the_extra() -> None:
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from goatclaw.engine.executor import make_executor\n"
            "try:\n    make_executor('dask')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("GoatclawError the dask executor needs Dask distributed")
    assert "pip install -e '" in out and "[dask]'" in out  # the install line that works for this checkout


def test_rate_limited_builtins_stay_on_the_driver() -> None:
    """The side-effect limits live on the driver: shell and http stay there while they are limited."""
    from goatclaw.engine.dask import DaskExecutor
    from goatclaw.registry import default_registry
    from goatclaw.security.ratelimit import LIMITS, SideEffectLimits

    executor = DaskExecutor()
    registry = default_registry()
    shell, http, echo, llm = (registry.task(n) for n in ("shell", "http", "echo", "llm"))
    assert executor.runs_remotely(shell, None) and executor.runs_remotely(http, None)
    assert not executor.runs_remotely(llm, None)
    token = LIMITS.set(SideEffectLimits({"process": 10}))
    try:
        assert not executor.runs_remotely(shell, None)
        assert executor.runs_remotely(http, None) and executor.runs_remotely(echo, None)
        assert executor.runs_remotely(shell, "cluster")  # run_on says otherwise: the user's call
    finally:
        LIMITS.reset(token)


# -- Ctrl-C with the executor's own local cluster; a scheduler without workers ------------


def _group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid`` (Linux /proc)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                alive.append(int(entry.name))
    return alive


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("count", [1, 2], ids=["once", "twice"])
def test_ctrl_c_with_the_local_cluster_exits_cleanly(project: Path, write_pipeline: Callable[..., Path],
                                                     count: int) -> None:
    """A terminal's Ctrl-C reaches the whole foreground group, the cluster's workers too: no worker traceback."""
    (project / "goatclaw.yaml").write_text("version: 1\nexecutor: {type: dask, workers: 1}\n"
                                           "permissions: {shell: true}\n")
    write_pipeline("""
        version: 1
        name: interrupted
        tasks:
          nap: {uses: shell, with: {run: [sleep, "60"]}}
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--executor", "dask", "-o", "plain"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "nap started" in line:
                break
        time.sleep(1.0)  # the task is on the worker by now
        for _ in range(count):
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: every process of the group
            time.sleep(0.5)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_alive(proc.pid) == [], "worker processes outlived the run"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_scheduler_without_workers_is_reported_after_a_bounded_wait(project: Path,
                                                                      write_pipeline: Callable[..., Path]) -> None:
    from goatclaw.cli.app import app

    path = write_pipeline("""
        version: 1
        name: nobody
        tasks:
          hello: {uses: echo, with: {text: hi}}
    """)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as empty:  # a scheduler, and no worker
        address = empty.scheduler_address
        (project / "goatclaw.yaml").write_text(f"version: 1\nexecutor: {{address: '{address}', "
                                               "wait_for_workers: 1s}\n")
        began = time.monotonic()
        result = CliRunner().invoke(app, ["apply", str(path), "-o", "plain"])
        took = time.monotonic() - began
    assert result.exit_code == 1, result.output
    assert f"the Dask scheduler at {address} has no workers (waited 1s)" in result.output
    assert f"dask worker {address}" in result.output
    assert "Traceback" not in result.output
    assert took < 20
