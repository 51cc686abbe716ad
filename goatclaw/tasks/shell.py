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

Each run emits a ``task.resources`` event, which ``goatclaw stats`` and ``runs show``
report: ``cpu_user_s`` and ``cpu_system_s`` are exact (the command is reaped with
``wait4``: its own CPU time and that of the descendants it waited for); ``max_rss_mb``
is the peak resident memory of the command's main process after it started (Linux
``VmHWM``, sampled from 5 ms up to every 100 ms while it runs: ``None`` for a command
that ends before the first sample, and a peak reached in the last moments before the
exit can be missed). ``wait4``'s own peak is not used: Linux
counts the memory of the goatclaw process that forked the command in it.
"""

from __future__ import annotations

import logging  # asyncio is imported in the functions that run a process: `validate` loads this module
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from goatclaw.plugin import TaskContext, fail, task

if TYPE_CHECKING:
    import asyncio

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
#: A stream's lines go to the task's log up to this many bytes (an attempt's log keeps 256 KiB of text at most).
_LOG_BYTES = 256 * 1024


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
    import asyncio

    argv = _argv(run, script, shell)
    ctx.require_shell(argv[0])  # for a script: the shell itself (which can then run anything)
    workdir = _workdir(ctx, cwd)
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        fail(f"timeout must be a positive number of seconds, not {timeout!r}", error_class="invalid_input")
    await ctx.throttle("process")  # rate_limits.side_effects.processes_per_minute: wait, never fail
    proc = await _spawn(argv, workdir, _environment(ctx.environment(), ctx.env, env), piped_stdin=input is not None)
    ctx.audit("process.started", program=argv[0], argv=argv, pid=proc.pid, cwd=str(workdir))
    command = _Running(proc, input, ctx.logger)
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
    if proc.rusage is not None:
        usage = proc.rusage
        ctx.emit("task.resources", pid=proc.pid, cpu_user_s=round(usage.ru_utime, 6),
                 cpu_system_s=round(usage.ru_stime, 6),
                 max_rss_mb=None if command.peak_kb is None else round(command.peak_kb / 1024, 3))
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


async def _spawn(argv: list[str], workdir: Path, env: dict[str, str], *, piped_stdin: bool) -> _Process:
    """Start ``argv`` in its own process group (so the whole tree can be killed)."""
    try:
        popen = subprocess.Popen(  # an argv list, never a shell string
            argv, cwd=workdir, env=env, start_new_session=True,
            stdin=subprocess.PIPE if piped_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        fail(f"program '{argv[0]}' was not found (is it installed and on PATH?)", error_class="invalid_input",
             program=argv[0])
    except PermissionError:
        fail(f"program '{argv[0]}' cannot be executed (permission denied)", error_class="invalid_input",
             program=argv[0])
    except OSError as exc:
        fail(f"cannot start '{argv[0]}': {exc.strerror or exc}", error_class="invalid_input", program=argv[0])
    return await _Process.attach(popen)


class _Process:
    """A started command: its output pipes on the event loop, its exit and resource use from ``wait4``.

    A daemon thread blocks in ``os.wait4`` for the child (the syscall releases the GIL)
    and hands the exit status and ``rusage`` to the loop. The ``Popen`` object is kept and
    given the return code, so the ``subprocess`` module never reaps the child itself.
    """

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        self.popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.rusage: Any = None
        self.stdin = popen.stdin
        self.stdout = asyncio.StreamReader(limit=_CHUNK * 4, loop=loop)
        self.stderr = asyncio.StreamReader(limit=_CHUNK * 4, loop=loop)
        self.transports: list[asyncio.BaseTransport] = []
        self._loop = loop
        self._exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(target=self._reap, name=f"goatclaw-wait-{self.pid}", daemon=True).start()

    @classmethod
    async def attach(cls, popen: subprocess.Popen[bytes]) -> _Process:
        """Wrap ``popen`` and connect its stdout and stderr to stream readers."""
        import asyncio

        loop = asyncio.get_running_loop()
        proc = cls(popen, loop)
        try:
            for pipe, reader in ((popen.stdout, proc.stdout), (popen.stderr, proc.stderr)):
                transport, _ = await loop.connect_read_pipe(
                    lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop), pipe)
                proc.transports.append(transport)
        except BaseException:  # cancelled while connecting: leave no process and no open pipe behind
            _signal_group(proc.pid, signal.SIGKILL)
            proc.close_pipes()
            raise
        return proc

    def _reap(self) -> None:
        try:
            _, status, usage = os.wait4(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: the status is lost
            code, usage = -1, None
        self.popen.returncode = code
        try:
            self._loop.call_soon_threadsafe(self._settle, code, usage)
        except RuntimeError:  # the loop is gone (the run ended while this command lived on)
            pass

    def _settle(self, code: int, usage: Any) -> None:
        self.returncode, self.rusage = code, usage
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        """The exit code, once the command has exited (negative: killed by that signal)."""
        import asyncio

        return await asyncio.shield(self._exited)

    def close_pipes(self) -> None:
        """Close the output pipes now (reading stops; a no-op once they reached their end).

        The transports close their pipes in a later loop turn, which may never come when
        the run ends at once; the pipe files are closed here too (closing twice is fine).
        """
        for transport in self.transports:
            transport.close()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


class _Running:
    """A started command: its output being read, its stdin being fed, and how to end it.

    ``proc.wait()`` alone cannot tell when a command is done: it returns at once if the exit
    is already known, and otherwise waits for every process that inherited the pipes
    (``sleep 60 &``). Done here means: the command exited *and* both pipes reached their end.
    """

    def __init__(self, proc: _Process, input: str | None, log: Any = None) -> None:
        import asyncio

        self.proc = proc
        self.stdout, self.stderr = _Capture("stdout"), _Capture("stderr", log)
        self.io = [asyncio.ensure_future(self.stdout.read(proc.stdout)),
                   asyncio.ensure_future(self.stderr.read(proc.stderr)),
                   asyncio.ensure_future(_feed(proc, input))]
        self.peak_kb: int | None = None  # the main process's VmHWM, sampled while it runs
        self.sampler = asyncio.ensure_future(self._sample_memory())

    async def _sample_memory(self) -> None:
        import asyncio

        delay = 0.005
        while self.proc.returncode is None:
            hwm = _vm_hwm(self.proc.pid)
            if hwm is not None:
                self.peak_kb = max(self.peak_kb or 0, hwm)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_SECONDS)

    async def finish(self) -> None:
        """Wait until the command is done; kill what it left running that holds its pipes open."""
        import asyncio

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
        import asyncio

        for job in (*self.io, self.sampler):
            job.cancel()
        await asyncio.gather(*self.io, self.sampler, return_exceptions=True)
        self.proc.close_pipes()

    async def _settled(self, within: float) -> bool:
        """Whether the command has exited and its pipes have closed within ``within`` seconds."""
        import asyncio

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


async def _feed(proc: _Process, input: str | None) -> None:
    """Write ``input`` to stdin and close it, in a daemon thread; a command that stops reading early is fine.

    The write blocks while the pipe is full; it ends when the command reads everything,
    exits, or is killed (the pipe breaks). A daemon thread never holds the run's end.
    """
    import asyncio

    stdin = proc.stdin
    if input is None or stdin is None:
        return
    data = str(input).encode("utf-8")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def write() -> None:
        try:
            stdin.write(data)
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass

    threading.Thread(target=write, name=f"goatclaw-stdin-{proc.pid}", daemon=True).start()
    await done


class _Capture:
    """One output stream: the first :data:`MAX_OUTPUT_BYTES` kept, the rest counted and dropped."""

    def __init__(self, name: str, log: Any = None) -> None:
        self.name = name
        self.kept = bytearray()
        self.dropped = 0
        self.log = log  # the task's logger: each line goes to the task's log as it comes (source: the stream)
        self.partial = bytearray()
        self.logged = 0  # bytes sent to the log: past _LOG_BYTES the lines stay in the output alone

    async def read(self, stream: asyncio.StreamReader) -> None:
        """Read ``stream`` to its end (draining it, so the command never blocks on a full pipe)."""
        while chunk := await stream.read(_CHUNK):
            room = max(0, MAX_OUTPUT_BYTES - len(self.kept))
            self.kept += chunk[:room]
            self.dropped += len(chunk) - len(chunk[:room])
            if self.log is not None and self.logged <= _LOG_BYTES:
                self._lines(chunk)
        if self.log is not None and self.partial and self.logged <= _LOG_BYTES:
            self._say(bytes(self.partial))

    def _lines(self, chunk: bytes) -> None:
        """Log each complete line of ``chunk`` (a line longer than a chunk goes out in pieces)."""
        self.partial += chunk
        *lines, rest = self.partial.split(b"\n")
        self.partial = bytearray(rest) if len(rest) < _CHUNK else bytearray()
        if len(rest) >= _CHUNK:
            lines.append(rest)
        for line in lines:
            if self.logged > _LOG_BYTES:
                self.log.warning("[goatclaw: %s lines past %s bytes are not logged; the task's %s output holds them]",
                                 self.name, f"{_LOG_BYTES:,}", self.name, extra={"goatclaw_source": self.name})
                return
            self._say(line)

    def _say(self, line: bytes) -> None:
        self.logged += len(line) + 1
        self.log.info("%s", line.decode("utf-8", errors="replace").rstrip("\r"), extra={"goatclaw_source": self.name})

    def text(self) -> str:
        """The output as text, with a note at the end if it was cut at the cap."""
        text = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            text += (f"\n[goatclaw: {self.name} truncated at {MAX_OUTPUT_BYTES:,} bytes; "
                     f"{self.dropped:,} more bytes dropped]")
        return text


def _vm_hwm(pid: int) -> int | None:
    """Peak resident memory (kB) of ``pid`` since its exec, if it is still our command (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the process group (field 5, after the parenthesised name): our command leads its own group,
        # so a pid reused by an unrelated process after the exit is not read
        if int(stat[stat.rindex(b")") + 2:].split()[2]) != pid:
            return None
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; one that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(argv: list[str]) -> str:
    """A short, readable form of the command for messages: a script by its first line, never whole."""
    text = " ".join(a.strip().split("\n", 1)[0] + " …" if "\n" in a.strip() else a for a in argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _fail_exit(argv: list[str], result: dict[str, Any]) -> NoReturn:
    """Fail with the exit code (or signal), the command (a script by its first line) and the end of stderr.

    The first line ends with the last line of stderr (usually the reason), so a one-line view says why.
    """
    code = result["exit_code"]
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exited with code {code}"
    tail = (result["stderr"] or result["stdout"])[-_TAIL_CHARS:].strip()
    last = tail.splitlines()[-1].strip() if tail else ""  # usually the reason: on the message's first line
    more = f"\n{tail}" if "\n" in tail else ""
    fail(f"command {how}: {_describe(argv)}" + (f": {last}" if last else "") + more, error_class="internal",
         exit_code=code, stderr=result["stderr"][-_TAIL_CHARS:], stdout=result["stdout"][-_TAIL_CHARS:])
