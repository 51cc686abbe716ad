"""A plugin that blocks the event loop cannot outlive its timeout, and Ctrl-C still wins over it.

The plugins are real ``async def`` functions that call ``time.sleep`` or spin the CPU
without ever awaiting: the loop's own timeout callback cannot run while they hold it, so
the watchdog (goatclaw/engine/watchdog.py) and the run border (goatclaw/cli/border.py)
have to reach into them.
"""

from __future__ import annotations

import asyncio
import os
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
from goatclaw.registry import Registry

STOPPED: list[str] = []  # what the blocking plugins' `finally` saw (they really stop)


async def sleeps(ctx: Any, *, seconds: float = 30) -> str:
    """Blocks the loop inside one system call."""
    try:
        time.sleep(seconds)
        return "woke"
    finally:
        STOPPED.append("sleeps")


async def spins(ctx: Any, *, seconds: float = 30) -> str:
    """Blocks the loop with a pure-Python CPU loop."""
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            pass
        return "spun"
    finally:
        STOPPED.append("spins")


async def swallows(ctx: Any, *, seconds: float = 30) -> str:
    """Catches the first interruption (``except BaseException``) and blocks again."""
    try:
        time.sleep(seconds)
    except BaseException:
        time.sleep(seconds)
    return "stubborn"


def _registry() -> Registry:
    reg = Registry()
    for fn in (sleeps, spins, swallows):
        reg.register_task(fn.__name__, fn)
    return reg


PIPELINE = """
    version: 1
    name: blocking
    tasks:
      held:
        uses: {uses}
        timeout: 0.5s
        retry: {{attempts: 1}}
        with: {{seconds: {seconds}}}
      free: {{uses: echo, with: {{value: 1}}}}
      after: {{uses: echo, needs: free, with: {{value: 2}}}}
    """


@pytest.mark.timeout(60)
@pytest.mark.parametrize("uses", ["sleeps", "spins", "swallows"])
def test_a_plugin_that_blocks_the_loop_fails_at_its_timeout(write_pipeline: Callable[..., Path], uses: str) -> None:
    STOPPED.clear()
    path = write_pipeline(PIPELINE.format(uses=uses, seconds=30))
    began = time.monotonic()
    result = goatclaw.run(path, registry=_registry(), store=False)
    took = time.monotonic() - began
    held = result.tasks["held"]
    assert held.status.value == "failed"
    assert held.error_class == "timeout"
    assert "held the event loop" in (held.error or "")
    assert took < 10, f"the run took {took:.1f}s: the 30 s plugin outlived its 0.5 s timeout"
    assert result.tasks["after"].status.value == "succeeded"  # the rest of the run went on
    if uses != "swallows":
        assert [uses] == STOPPED  # the body itself was stopped, not left running


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("uses", "seconds", "longest"), [("spins", 30, 10), ("sleeps", 3, 8)])
def test_a_loop_in_another_thread(write_pipeline: Callable[..., Path], uses: str, seconds: float,
                                  longest: float) -> None:
    """Off the main thread a CPU loop is interrupted; a sleep is not, but the late attempt fails all the same."""
    path = write_pipeline(PIPELINE.format(uses=uses, seconds=seconds))
    outcome: dict[str, Any] = {}

    def run() -> None:
        began = time.monotonic()
        outcome["result"] = goatclaw.run(path, registry=_registry(), store=False)
        outcome["took"] = time.monotonic() - began

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(50)
    assert not thread.is_alive()
    held = outcome["result"].tasks["held"]
    assert held.status.value == "failed" and held.error_class == "timeout", held.error
    assert outcome["took"] < longest


@pytest.mark.timeout(60)
def test_a_blocking_function_of_the_python_task_does_not_hold_the_run(write_pipeline: Callable[..., Path],
                                                                      project: Path) -> None:
    """``python`` runs a plain function in a thread that a timeout abandons: the run returns at once."""
    (project / "steps.py").write_text("import time\n\ndef nap(s):\n    time.sleep(s)\n    return 'late'\n")
    path = write_pipeline("""
        version: 1
        name: nap
        tasks:
          nap: {uses: python, timeout: 0.5s, retry: {attempts: 1}, with: {function: "steps:nap", args: [20]}}
        """)
    began = time.monotonic()
    result = goatclaw.run(path, store=False)
    assert result.tasks["nap"].error_class == "timeout"
    assert time.monotonic() - began < 8


def test_a_watched_attempt_that_yields_is_left_to_the_loop() -> None:
    """A plugin that awaits is timed out by the loop, exactly at its timeout; the watchdog never steps in."""
    from goatclaw.engine.watchdog import deadline

    async def scenario() -> tuple[float, bool]:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                with deadline(0.2) as watch:
                    await asyncio.sleep(5)
        return time.monotonic() - began, watch.fired

    took, fired = asyncio.run(scenario())
    assert took < 2 and not fired


# -- Ctrl-C over a blocked loop, through real `python -m goatclaw apply` subprocesses ---------

STEPS = '''
import time

async def sleeps(s):
    time.sleep(s)
    return "woke"

async def spins(s):
    began = time.monotonic()
    while time.monotonic() - began < s:
        pass
    return "spun"
'''


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("function", ["sleeps", "spins"])
@pytest.mark.parametrize("count", [1, 2], ids=["once", "twice"])
def test_ctrl_c_wins_over_a_plugin_that_blocks_the_loop(write_pipeline: Callable[..., Path], project: Path,
                                                        function: str, count: int) -> None:
    (project / "steps.py").write_text(STEPS)
    write_pipeline(f"""
        version: 1
        name: held
        tasks:
          held: {{uses: python, with: {{function: "steps:{function}", args: [60]}}}}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "-o", "plain"], cwd=project,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "held started" in line:
                break
        time.sleep(0.5)  # inside the blocking call by now
        began = time.monotonic()
        for _ in range(count):
            os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.1)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert took < 15, f"Ctrl-C took {took:.1f}s to stop a run whose plugin holds the loop"
    shown = subprocess.run([sys.executable, "-m", "goatclaw", "runs", "show", "last", "--json"], cwd=project,
                           env=_env(), capture_output=True, text=True, timeout=60)
    assert '"cancelled"' in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_signal_after_a_held_second_ends_a_loop_held_outside_any_task(write_pipeline: Callable[..., Path],
                                                                         project: Path) -> None:
    """Nothing can be interrupted in a loop callback: the second signal, a second after the first, exits at once."""
    (project / "steps.py").write_text("import asyncio, time\n\nasync def hold(s):\n"
                                      "    asyncio.get_running_loop().call_soon(time.sleep, s)\n"
                                      "    await asyncio.sleep(0.2)\n    return 'held'\n")
    write_pipeline("""
        version: 1
        name: held
        tasks:
          held: {uses: python, with: {function: "steps:hold", args: [60]}}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "-o", "plain"], cwd=project,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "held started" in line:
                break
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(1.5)  # the border's own repeat found nothing to interrupt
        assert proc.poll() is None
        began = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "held outside any task" in err
    assert took < 10
