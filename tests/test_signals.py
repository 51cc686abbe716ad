"""Stop signals and hostile inputs, through real ``python -m goatclaw`` subprocesses.

SIGTERM (docker stop, CI cancellation, systemd), SIGHUP (a closed terminal) and SIGINT
(Ctrl-C, once or twice) all cancel the run: the exit code is 128 + the signal, the store
records the run ``cancelled``, the shell task's process group is gone, and stderr holds
no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SLEEPER = """
    version: 1
    name: interrupted
    tasks:
      first: {uses: echo, with: {value: 1}}
      sleeper:
        uses: shell
        needs: first
        with: {script: "echo $$ > group.pid; sleep 300 & sleep 301 & wait"}
    """


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}


def _group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid`` (Linux /proc)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(entry.name))
    return alive


def _start(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", *args], cwd=project,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(proc: subprocess.Popen[str], text: str, within: float = 60) -> None:
    assert proc.stdout is not None
    began = time.monotonic()
    for line in proc.stdout:
        if text in line:
            return
        assert time.monotonic() - began < within, f"no '{text}' within {within}s"
    raise AssertionError(f"the run ended before '{text}': {proc.stderr.read() if proc.stderr else ''}")


def _finish(proc: subprocess.Popen[str], within: float = 30) -> str:
    try:
        _, err = proc.communicate(timeout=within)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return err


def _stored_run(project: Path) -> dict[str, object]:
    shown = subprocess.run([sys.executable, "-m", "goatclaw", "runs", "show", "last", "--json"], cwd=project,
                           env=_env(), capture_output=True, text=True, timeout=60)
    return json.loads(shown.stdout)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("signals", "code"), [
    ((signal.SIGTERM,), 143),
    ((signal.SIGHUP,), 129),
    ((signal.SIGINT,), 130),
    ((signal.SIGINT, signal.SIGINT), 130),
], ids=["sigterm", "sighup", "sigint", "sigint-twice"])
def test_a_stop_signal_cancels_the_run_and_its_process_groups(
        write_pipeline: Callable[..., Path], project: Path, signals: tuple[int, ...], code: int) -> None:
    write_pipeline(SLEEPER)
    proc = _start(project)
    try:
        _wait_for(proc, "sleeper started")
        pid_file = project / "group.pid"
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pgid = int(pid_file.read_text())
        time.sleep(0.3)
        for sig in signals:
            os.kill(proc.pid, sig)
            time.sleep(0.1)
        err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert "cancelled" in err
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_alive(pgid) == [], "the shell task's process group outlived the run"
    doc = _stored_run(project)
    assert doc["run"]["status"] == "cancelled"  # type: ignore[index]
    assert {t["task_id"]: t["status"] for t in doc["tasks"]} == {  # type: ignore[attr-defined]
        "first": "succeeded", "sleeper": "cancelled"}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_signal_ignored_at_start_stays_ignored(write_pipeline: Callable[..., Path], project: Path) -> None:
    """``nohup goatclaw apply`` survives a hangup: SIGHUP ignored by the parent is not taken over."""
    write_pipeline("""
        version: 1
        name: nohup
        tasks:
          nap: {uses: shell, with: {script: "sleep 1.5; echo done"}}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml"], cwd=project, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _wait_for(proc, "nap started")
    os.kill(proc.pid, signal.SIGHUP)
    err = _finish(proc)
    assert proc.returncode == 0, err
    assert _stored_run(project)["run"]["status"] == "succeeded"  # type: ignore[index]


# -- a plugin's KeyboardInterrupt or sys.exit() fails its task, not the process ----------


async def _interrupting(ctx: object) -> None:
    raise KeyboardInterrupt


def _exiting(ctx: object) -> None:
    sys.exit(3)


async def _exiting_async(ctx: object) -> None:
    raise SystemExit("bye")


@pytest.mark.parametrize("uses", ["interrupting", "exiting", "exiting_async"])
def test_a_plugin_that_raises_keyboardinterrupt_or_exits_fails_its_task(
        write_pipeline: Callable[..., Path], uses: str) -> None:
    import goatclaw
    from goatclaw.registry import Registry

    reg = Registry()
    for name, fn in (("interrupting", _interrupting), ("exiting", _exiting), ("exiting_async", _exiting_async)):
        reg.register_task(name, fn)
    path = write_pipeline(f"""
        version: 1
        name: rude
        tasks:
          rude: {{uses: {uses}, retry: {{attempts: 2, delay: 0}}}}
          other: {{uses: echo, with: {{value: 1}}}}
          after: {{uses: echo, needs: rude, with: {{value: 2}}}}
        """)
    result = goatclaw.run(path, registry=reg, store=False)
    assert result.status.value == "failed"
    rude = result.tasks["rude"]
    assert rude.status.value == "failed"
    assert rude.error_class in ("KeyboardInterrupt", "SystemExit")
    assert rude.attempts == 2
    assert result.tasks["other"].status.value == "succeeded"
    assert result.tasks["after"].status.value == "upstream_failed"


# -- input that is not a regular file is refused, never read until memory runs out --------


def _not_a_file(kind: str, where: Path) -> Path:
    """``/dev/zero``, a FIFO (no writer: opening it would block), or a symlink to either."""
    fifo = where / "pipe.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)
    target = Path("/dev/zero") if kind.endswith("zero") else fifo
    if not kind.startswith("link"):
        return target
    link = where / f"{kind}.yaml"
    link.symlink_to(target)
    return link


NOT_FILES = ["zero", "fifo", "link-to-zero", "link-to-fifo"]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", NOT_FILES)
def test_validate_and_apply_refuse_what_is_not_a_regular_file(project: Path, kind: str) -> None:
    path = _not_a_file(kind, project)
    for command in ("validate", "apply"):
        done = subprocess.run([sys.executable, "-m", "goatclaw", command, str(path)], cwd=project, env=_env(),
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert done.returncode == 2, done.stderr
        assert "not a regular file" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", NOT_FILES)
def test_every_user_named_file_is_read_through_the_bounded_reader(write_pipeline: Callable[..., Path],
                                                                  project: Path, kind: str) -> None:
    import goatclaw
    from goatclaw.errors import GoatclawError, SpecError
    from goatclaw.providers import read_dotenv

    bad = _not_a_file(kind, project)
    # file.read on it: the task fails with a clear message
    inside = bad if bad.parent == project else project / "dev-zero"  # file.read reaches the workspace only
    if not inside.exists():
        inside.symlink_to(bad)
    rel = inside.name
    path = write_pipeline(f"""
        version: 1
        name: reads
        tasks:
          read: {{uses: file.read, with: {{path: "{rel}"}}}}
        """)
    result = goatclaw.run(path, store=False)
    assert result.tasks["read"].status.value == "failed"
    error = result.tasks["read"].error or ""
    # /dev/zero is outside the workspace: the grant refuses it first; a FIFO inside is not a file
    assert "not a regular file" in error or ("zero" in kind and "permissions.files.read" in error), error
    # the project file
    (project / "goatclaw.yaml").unlink()
    (project / "goatclaw.yaml").symlink_to(bad)
    try:  # refused or passed over (find_project_file looks for a regular file): never read, never a hang
        goatclaw.load(path)
    except SpecError as exc:
        assert "not a regular file" in str(exc)
    # .env
    (project / ".env").symlink_to(bad)
    with pytest.raises(GoatclawError, match="not a regular file"):
        read_dotenv(project)


def test_the_bounded_reader_does_not_trust_stat(tmp_path: Path) -> None:
    from goatclaw.userfile import FileTooLarge, read_bytes

    assert Path("/proc/self/environ").stat().st_size == 0  # a file that says it is empty
    with pytest.raises(FileTooLarge):
        read_bytes("/proc/self/environ", limit=4)
    small = tmp_path / "small.txt"
    small.write_bytes(b"12345")
    assert read_bytes(small, limit=5) == b"12345"
    with pytest.raises(FileTooLarge, match="over the limit of 4 bytes"):
        read_bytes(small, limit=4)
