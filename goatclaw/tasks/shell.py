"""``shell``: run a program or a script and return its exit code and output.

Two forms, exactly one per task:

* ``run: [git, log, -n, "5"]`` runs the program directly, never through a shell, so
  arguments need no quoting and templated values cannot inject commands.
* ``script: |`` passes text to ``bash -c`` (or the chosen ``shell``). Pass templated
  values through ``env:`` and refer to them as ``"$NAME"`` in the script; a value spliced
  into the script text with ``${{ }}`` is parsed by the shell and can run commands::

      uses: shell
      with:
        script: grep -c "$WORD" notes.txt
        env: {WORD: "${{ vars.word }}"}

The command runs in a new process group. When the task is cancelled (a timeout, Ctrl-C)
the whole group gets ``SIGTERM``, then ``SIGKILL`` after a grace period, so no
grandchild outlives its task. A command that exits while processes it started in the
background still hold its output open (``server &``) would never finish; after a short
grace those processes are killed. To keep one running, redirect its output
(``server > server.log 2>&1 &``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from goatclaw.plugin import TaskContext, fail, task

__all__ = ["shell"]

_log = logging.getLogger(__name__)

#: Output kept per stream; the rest is read and dropped so the command never blocks.
MAX_OUTPUT_BYTES = 10 * 1024 * 1024
#: How long a process group gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 2.0
#: How long to wait for the pipes to close after the command exits (background children may hold them).
PIPE_GRACE_SECONDS = 2.0
_TAIL_CHARS = 2000
_POLL_SECONDS = 0.1
_CHUNK = 64 * 1024


@task(cacheable=False, side_effects=True, permissions=("shell",),
      sinks=("run", "script", "env", "cwd", "shell", "input"))
async def shell(ctx: TaskContext, *, run: list[str] | None = None, script: str | None = None,
                env: dict[str, str] | None = None, cwd: str | None = None, shell: str = "bash",
                check: bool = True, input: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run a command (``run:`` argv, no shell) or a ``script:`` and return exit code, stdout and stderr.

    ``env`` is added to the environment (the variables ``permissions.env`` lets the task see,
    then the task's ``env:``); pass
    templated values this way rather than splicing them into ``script``. ``cwd`` is
    relative to the workspace. ``input`` is sent to stdin. With ``check`` (the default) a
    non-zero exit fails the task. ``timeout`` (seconds) bounds the command itself.
    """
    argv = _argv(run, script, shell)
    ctx.require_shell(argv[0])  # for a script: the shell itself (which can then run anything)
    workdir = _workdir(ctx, cwd)
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        fail(f"timeout must be a positive number of seconds, not {timeout!r}", error_class="invalid_input")
    await ctx.throttle("process")  # rate_limits.side_effects.processes_per_minute: wait, never fail
    proc = await _spawn(argv, workdir, _environment(ctx.environment(), ctx.env, env), piped_stdin=input is not None)
    ctx.audit("process.started", program=argv[0], argv=argv, pid=proc.pid, cwd=str(workdir))
    command = _Running(proc, input)
    try:
        async with asyncio.timeout(timeout):
            await command.finish()
    except TimeoutError:
        await command.kill()
        fail(f"command timed out after {timeout:g}s: {_describe(argv)}", error_class="timeout")
    except BaseException:  # CancelledError above all: never leave the process tree behind
        await command.kill()
        raise
    finally:
        await command.stop_io()
    result = {"exit_code": proc.returncode, "stdout": command.stdout.text(), "stderr": command.stderr.text()}
    if check and proc.returncode != 0:
        _fail_exit(argv, result)
    return result


def _argv(run: list[str] | None, script: str | None, shell: str) -> list[str]:
    """The argument vector for exactly one of ``run`` and ``script``."""
    if (run is None) == (script is None):
        fail("shell needs exactly one of 'run' (a list of arguments) or 'script' (text for the shell)",
             error_class="invalid_input")
    if script is not None:
        if not isinstance(script, str):
            fail(f"'script' must be text, not {type(script).__name__}", error_class="invalid_input")
        return [shell, "-c", script]
    if isinstance(run, str) or not isinstance(run, (list, tuple)) or not run:
        fail("'run' must be a non-empty list of arguments, e.g. [git, status]; use 'script' for shell text",
             error_class="invalid_input")
    for i, arg in enumerate(run):
        if isinstance(arg, (list, tuple, dict, set)) or arg is None:
            fail(f"'run' argument {i} is {arg!r}; every argument must be a string or a number",
                 error_class="invalid_input")
    return [str(arg) for arg in run]


def _workdir(ctx: TaskContext, cwd: str | None) -> Path:
    """The directory the command starts in: ``cwd`` inside the workspace, or the workspace."""
    workdir = ctx.path(cwd) if cwd is not None else ctx.workspace.resolve()
    if not workdir.is_dir():
        fail(f"cwd '{cwd}' is not a directory in the workspace", error_class="invalid_input")
    return workdir


def _environment(visible: Mapping[str, str], task_env: Mapping[str, Any],
                 env: Mapping[str, Any] | None) -> dict[str, str]:
    """The variables the task may see, then the task's ``env:``, then ``env``; a ``None`` value removes one."""
    if env is not None and not isinstance(env, Mapping):
        fail(f"'env' must be a mapping of names to values, not {type(env).__name__}", error_class="invalid_input")
    merged: dict[str, str] = dict(visible)
    for layer in (task_env, env or {}):
        for name, value in layer.items():
            if value is None:
                merged.pop(str(name), None)
            else:
                merged[str(name)] = str(value)
    return merged


async def _spawn(argv: list[str], workdir: Path, env: dict[str, str], *,
                 piped_stdin: bool) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own process group (so the whole tree can be killed)."""
    try:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=workdir, env=env, start_new_session=True,
            stdin=asyncio.subprocess.PIPE if piped_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        fail(f"program '{argv[0]}' was not found (is it installed and on PATH?)", error_class="invalid_input",
             program=argv[0])
    except PermissionError:
        fail(f"program '{argv[0]}' cannot be executed (permission denied)", error_class="invalid_input",
             program=argv[0])
    except OSError as exc:
        fail(f"cannot start '{argv[0]}': {exc.strerror or exc}", error_class="invalid_input", program=argv[0])


class _Running:
    """A started command: its output being read, its stdin being fed, and how to end it.

    ``proc.wait()`` alone cannot tell when a command is done: it returns at once if the exit
    is already known, and otherwise waits for every process that inherited the pipes
    (``sleep 60 &``). Done here means: the command exited *and* both pipes reached their end.
    """

    def __init__(self, proc: asyncio.subprocess.Process, input: str | None) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stdout, self.stderr = _Capture("stdout"), _Capture("stderr")
        self.io = [asyncio.ensure_future(self.stdout.read(proc.stdout)),
                   asyncio.ensure_future(self.stderr.read(proc.stderr)),
                   asyncio.ensure_future(_feed(proc, input))]

    async def finish(self) -> None:
        """Wait until the command is done; kill what it left running that holds its pipes open."""
        pending = set(self.io)
        while pending and self.proc.returncode is None:
            _, pending = await asyncio.wait(pending, timeout=_POLL_SECONDS)
        if not pending:
            await self.proc.wait()  # the pipes are closed: this waits for the exit alone
        elif not await self._settled(PIPE_GRACE_SECONDS):
            _log.warning("killing processes left running by pid %s that hold its output open", self.proc.pid)
            _signal_group(self.proc.pid, signal.SIGKILL)
            await self._settled_or_warn()

    async def kill(self) -> None:
        """SIGTERM the command's process group, wait a little, then SIGKILL whatever is left."""
        _signal_group(self.proc.pid, signal.SIGTERM)
        settled = False
        try:
            settled = await self._settled(KILL_GRACE_SECONDS)
        finally:
            # Always: the leader may have exited on SIGTERM while children that ignore it live on.
            _signal_group(self.proc.pid, signal.SIGKILL)
        if not settled:
            await self._settled_or_warn()

    async def stop_io(self) -> None:
        """Stop reading and feeding (a no-op once the pipes have closed)."""
        for job in self.io:
            job.cancel()
        await asyncio.gather(*self.io, return_exceptions=True)

    async def _settled(self, within: float) -> bool:
        """Whether the command has exited and its pipes have closed within ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        pending = [job for job in self.io if not job.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=within)
            if still:
                return False
        try:
            await asyncio.wait_for(self.proc.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return False
        return True

    async def _settled_or_warn(self) -> None:
        """After SIGKILL: wait for the pipes to close; only a process outside the group can keep them open."""
        if not await self._settled(KILL_GRACE_SECONDS):
            _log.warning("processes started by pid %s survive outside its process group", self.proc.pid)


async def _feed(proc: asyncio.subprocess.Process, input: str | None) -> None:
    """Write ``input`` to stdin and close it; a command that stops reading early is fine."""
    if input is None or proc.stdin is None:
        return
    try:
        proc.stdin.write(str(input).encode("utf-8"))
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        proc.stdin.close()


class _Capture:
    """One output stream: the first :data:`MAX_OUTPUT_BYTES` kept, the rest counted and dropped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kept = bytearray()
        self.dropped = 0

    async def read(self, stream: asyncio.StreamReader) -> None:
        """Read ``stream`` to its end (draining it, so the command never blocks on a full pipe)."""
        while chunk := await stream.read(_CHUNK):
            room = max(0, MAX_OUTPUT_BYTES - len(self.kept))
            self.kept += chunk[:room]
            self.dropped += len(chunk) - len(chunk[:room])

    def text(self) -> str:
        """The output as text, with a note at the end if it was cut at the cap."""
        text = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            text += (f"\n[goatclaw: {self.name} truncated at {MAX_OUTPUT_BYTES:,} bytes; "
                     f"{self.dropped:,} more bytes dropped]")
        return text


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; one that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(argv: list[str]) -> str:
    """A short, readable form of the command for messages."""
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _fail_exit(argv: list[str], result: dict[str, Any]) -> NoReturn:
    """Fail with the exit code (or signal) and the end of stderr in the message."""
    code = result["exit_code"]
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exited with code {code}"
    tail = (result["stderr"] or result["stdout"])[-_TAIL_CHARS:].strip()
    fail(f"command {how}: {_describe(argv)}" + (f"\n{tail}" if tail else ""), error_class="internal",
         exit_code=code, stderr=result["stderr"][-_TAIL_CHARS:], stdout=result["stdout"][-_TAIL_CHARS:])
