"""A run's owner process: alive, gone (kill -9, a reused pid, a reboot) or unknown (another machine)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

import goatclaw
from goatclaw import liveness
from goatclaw.cli.app import app
from goatclaw.liveness import Liveness, current_owner, owner_pid, owner_state
from goatclaw.store import Store


def _tag(pid: int, start: str | None = None, boot: str | None = None, host: str | None = None) -> str:
    return (f"{host or socket.gethostname()}:{liveness._boot_id() if boot is None else boot}:{pid}:"
            f"{liveness._start_ticks(pid) if start is None else start}")


def test_this_process_is_alive() -> None:
    assert owner_state(current_owner()) is Liveness.ALIVE
    assert owner_pid(current_owner()) == __import__("os").getpid()


def test_a_process_that_ended_is_gone_even_before_it_is_reaped() -> None:
    child = subprocess.Popen(["sleep", "0.2"])
    tag = _tag(child.pid)
    assert owner_state(tag) is Liveness.ALIVE
    deadline = time.monotonic() + 10
    while owner_state(tag) is Liveness.ALIVE and time.monotonic() < deadline:  # a zombie until waited for
        time.sleep(0.05)
    assert owner_state(tag) is Liveness.GONE
    child.wait()
    assert owner_state(tag) is Liveness.GONE


def test_a_reused_pid_or_a_reboot_is_gone_and_another_machine_unknown() -> None:
    me = current_owner()
    pid = owner_pid(me)
    assert pid is not None
    assert owner_state(_tag(pid, start="1")) is Liveness.GONE  # same pid, another process
    assert owner_state(_tag(pid, boot="another-boot")) is Liveness.GONE
    boot, _, space = liveness._boot_id().partition("/")
    assert space  # this process's pid namespace is part of the tag
    assert owner_state(_tag(pid, boot=f"{boot}/4026000000")) is Liveness.UNKNOWN  # another container's pid
    assert owner_state(_tag(pid, host="elsewhere.example")) is Liveness.UNKNOWN
    for junk in (None, "", "x", "a:b:c:d", "a:b"):
        assert owner_state(junk) is Liveness.UNKNOWN


def test_runs_say_interrupted_when_their_process_is_gone(write_pipeline: Callable[..., Path],
                                                         store_path: Path) -> None:
    write_pipeline("""
        version: 1
        name: owned
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    result = goatclaw.run(goatclaw.load("p.yaml"))
    with Store.open(store_path) as db:
        row = db.run(result.run_id)
        assert row is not None and row.owner == current_owner() and not row.interrupted
        # as a kill -9 leaves it: still running, its process gone
        child = subprocess.Popen(["true"])
        child.wait()
        db.db.execute("UPDATE runs SET status = 'running', owner = ? WHERE id = ?", (_tag(child.pid, start="1"),
                                                                                     result.run_id))
        row = db.run(result.run_id)
        assert row is not None and row.interrupted
    listed = CliRunner().invoke(app, ["runs", "list"])
    assert listed.exit_code == 0 and "interrupted" in listed.output
    shown = CliRunner().invoke(app, ["runs", "show", "last"])
    assert shown.exit_code == 0 and "is gone; goatclaw apply FILE --resume finishes it" in shown.output
