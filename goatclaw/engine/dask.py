"""The ``dask`` executor: task bodies run on a Dask cluster; everything else stays here.

Only the plugin call travels: the driver (this process) renders the inputs, then submits
``(plugin name, context, arguments)`` to the cluster. A worker loads the plugin *by its
name* from what is installed there (entry points, built-ins), runs it, and sends back
the output together with the events the task emitted. Scheduling, retries, breakers,
validation, budgets and the store never leave the driver, so they behave the same on
every backend.

Three things map Dask's world onto goatclaw's:

* **Worker loss** (``KilledWorker``, a closed comm, a lost scheduler) is a
  :class:`~goatclaw.errors.TaskError` of class ``connection``, so a retry policy submits
  the task again. A cluster this executor starts lets no task be re-run by Dask itself
  (``allowed_failures=0``): the retry is goatclaw's, recorded as an attempt.
* **Timeouts and cancellation** reach the remote task: the driver cancels the Dask
  future and asks the workers to stop the task's thread, which then raises at its next
  Python instruction (a call blocked in C, such as ``time.sleep``, stops when it
  returns). A worker also stops a task itself shortly after its ``timeout``, so a task
  stops even when the driver is gone.
* **A plugin missing on a worker** fails the task with class ``invalid_input`` and a
  message naming the package (and version) to install there.

Tasks with ``run_on: local`` run on the driver through the local executor, and so do the
built-in tasks that use what only the driver holds (``llm``: the run's budget, cassette
and rate limits; ``memory``: the run's store) unless they say ``run_on: cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import ctypes
import dataclasses
import functools
import io
import logging
import os
import pickle
import signal
import threading
import time
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import distributed
from distributed.client import FutureCancelledError
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker

from goatclaw.engine.executor import Executor, LocalExecutor
from goatclaw.errors import GoatclawError, PluginError, TaskError, TaskTimeout
from goatclaw.plugin import TaskContext
from goatclaw.registry import Plugin, default_registry
from goatclaw.security.ratelimit import LIMITS

__all__ = ["DRIVER_ONLY", "RATE_LIMITED", "WORKER_WAIT", "DaskExecutor", "dask_setup"]

#: Built-in tasks that stay on the driver unless ``run_on: cluster`` says otherwise.
DRIVER_ONLY = frozenset({"llm", "agent", "memory"})
#: Built-in tasks that also stay on the driver while the run limits their side effect
#: (``rate_limits.side_effects``): the sliding windows are the driver's, a worker has none.
RATE_LIMITED = {"http": "http", "shell": "process", "file.write": "file"}
#: How long after its ``timeout`` a worker stops a task on its own (the driver normally asks first).
REMOTE_GRACE = 1.0
#: Seconds to wait for a scheduler's first worker (``executor: {wait_for_workers: ...}`` in goatclaw.yaml).
WORKER_WAIT = 30.0

_REGISTERED = "(registered)"  # the package of a plugin registered from Python (Registry.register_task)


class DaskExecutor(Executor):
    """Sends task bodies to a Dask cluster: the one at ``address``, or a local one started for the run.

    A local cluster has ``workers`` worker processes (default: one per core) of one thread
    each, since CPU-bound Python holds the GIL. :meth:`start` connects (or starts the
    cluster) and :meth:`close` disconnects (and stops it); ``call`` starts on first use
    when nobody called :meth:`start`. ``connect_timeout`` bounds the wait for the scheduler
    (default: Dask's ``distributed.comm.timeouts.connect``), ``worker_wait`` the wait for
    its first worker (default :data:`WORKER_WAIT`): a scheduler that has none by then is a
    clear error, not a run whose tasks wait in its queue for ever.
    """

    name = "dask"

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 connect_timeout: float | None = None, worker_wait: float = WORKER_WAIT) -> None:
        self.address = address
        self.workers = workers
        self.connect_timeout = connect_timeout
        self.worker_wait = worker_wait
        self._local = LocalExecutor()
        self._client: distributed.Client | None = None
        self._cluster: distributed.LocalCluster | None = None
        self._starting: asyncio.Lock | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> distributed.Client | None:
        """The connected (asynchronous) Dask client, once started."""
        return self._client

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the scheduler, or start a local cluster when there is no address; idempotent."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._client is None:
                self._client = await (self._connect() if self.address else self._start_local())

    async def _connect(self) -> distributed.Client:
        # no timeout given: Dask's own (distributed.comm.timeouts.connect, 30s unless configured)
        timeout = {} if self.connect_timeout is None else {"timeout": self.connect_timeout}
        try:
            client = await distributed.Client(self.address, asynchronous=True, set_as_default=False, **timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise GoatclawError(f"cannot reach the Dask scheduler at {self.address}: {exc}") from None
        try:
            await client.wait_for_workers(1, timeout=self.worker_wait)
        except (TimeoutError, OSError) as exc:
            with contextlib.suppress(Exception):
                await client.close()
            if not isinstance(exc, TimeoutError):
                raise GoatclawError(f"lost the Dask scheduler at {self.address}: {exc}") from None
            raise GoatclawError(
                f"the Dask scheduler at {self.address} has no workers (waited {self.worker_wait:g}s): start some "
                f"with 'dask worker {self.address}', or wait longer with executor: {{wait_for_workers: ...}} in "
                "goatclaw.yaml") from None
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.close())
            raise
        return client

    async def _start_local(self) -> distributed.Client:
        # goatclaw reports worker loss itself (error class connection); the scheduler's and
        # nannies' log lines about it would only repeat that on stderr
        self._cluster = await distributed.LocalCluster(
            n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
            asynchronous=True, dashboard_address=":0", silence_logs=logging.CRITICAL,
            preload=[__name__],  # dask_setup: a Ctrl-C at the terminal is the driver's to handle, not the workers'
            # a lost task is goatclaw's retry, not Dask's; HTTP (health, metrics) on a free port, no dashboard
            scheduler_kwargs={"allowed_failures": 0, "dashboard": False})
        return await distributed.Client(self._cluster, asynchronous=True, set_as_default=False)

    async def close(self) -> None:
        """Let pending stop requests finish, then disconnect (and stop a cluster started for the run)."""
        await self._local.close()
        if self._stopping:
            await asyncio.wait(self._stopping, timeout=5)
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            await client.close()
        if cluster is not None:
            await cluster.close()

    # -- calls -----------------------------------------------------------------------

    def runs_remotely(self, plugin: Plugin, run_on: str | None) -> bool:
        """Whether a call goes to the cluster: ``run_on`` if given, else all but :data:`DRIVER_ONLY` built-ins.

        ``http`` and ``shell`` also stay here while the run rate-limits them, so their limits hold.
        """
        if run_on is not None:
            return run_on != "local"
        if plugin.package != "goatclaw":
            return True
        if plugin.name in DRIVER_ONLY:
            return False
        kind = RATE_LIMITED.get(plugin.name)
        limits = LIMITS.get() if kind is not None else None
        return limits is None or kind not in limits.per_minute

    async def call(self, plugin: Plugin, ctx: TaskContext, kwargs: Mapping[str, Any], *,
                   run_on: str | None = None) -> Any:
        """Run the plugin on a worker (or here, for ``run_on: local``) and return its output."""
        if not self.runs_remotely(plugin, run_on):
            return await self._local.call(plugin, ctx, kwargs)
        if self._client is None:
            await self.start()
        client = self._client
        assert client is not None
        call = RemoteCall.of(plugin)
        future = client.submit(run_remote, call, pack_context(ctx), dict(kwargs), pure=False,
                               key=f"{ctx.task_id}-{call.token}")
        try:
            outcome: Outcome = await future
        except asyncio.CancelledError:
            self._stop_remote(client, future, call.token)
            raise
        except (KilledWorker, CommClosedError, FutureCancelledError, OSError) as exc:
            raise TaskError(f"the Dask worker running '{plugin.name}' was lost: {type(exc).__name__}: {exc}",
                            error_class="connection") from None
        return outcome.settle(ctx)

    def _stop_remote(self, client: distributed.Client, future: distributed.Future, token: str) -> None:
        """Cancel the future (a queued task never starts) and stop a running one on whichever worker has it."""

        async def stop() -> None:
            with contextlib.suppress(Exception):  # a worker or the scheduler may be gone: nothing left to stop
                await future.cancel()
                await client.run(stop_task, token, "cancelled", on_error="ignore")

        task = asyncio.get_running_loop().create_task(stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)


# -- what travels --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RemoteCall:
    """Which plugin a worker should load (by name, from its own installation) and how to call it."""

    name: str
    package: str
    version: str
    ref: str
    is_async: bool
    token: str

    @classmethod
    def of(cls, plugin: Plugin) -> RemoteCall:
        """Describe ``plugin`` for a worker, with a fresh token that names this one call."""
        fn = plugin.fn
        ref = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
        return cls(plugin.name, plugin.package, plugin.version, ref, plugin.is_async, uuid.uuid4().hex)

    @property
    def origin(self) -> str:
        """``package version`` for messages."""
        return f"{self.package} {self.version}".strip()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a worker sends back: the output or the error, and the events the task emitted."""

    ok: bool
    value: Any
    events: tuple[tuple[str, dict[str, Any]], ...] = ()

    def settle(self, ctx: TaskContext) -> Any:
        """Replay the events into the driver's context, then return the output or raise the error."""
        if ctx._emit is not None:
            for topic, data in self.events:
                ctx._emit(topic, data)
        if not self.ok:
            raise self.value
        return self.value


def pack_context(ctx: TaskContext) -> bytes:
    """The context as bytes a worker can load: no callback, plain mappings for read-only views.

    The run's redactor masks the audit key too; a worker gets one built from the task's own
    secrets only, so the key never leaves the driver (a worker on another machine could
    otherwise seal audit rows). What the worker returns is masked again by the driver.
    """
    redactor = _task_redactor(tuple(sorted(ctx.secrets.items()))) if ctx.redactor is not None else None
    plain = dataclasses.replace(ctx, _emit=None, tools=None, mcp=None, env=dict(ctx.env), secrets=dict(ctx.secrets),
                                redactor=redactor)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    # read-only mapping proxies (in grants) cannot be pickled; they travel as the dicts they show
    pickler.dispatch_table = {**copyreg.dispatch_table, types.MappingProxyType: _proxy_reduce}  # type: ignore[misc]
    pickler.dump(plain)
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def _task_redactor(secrets: tuple[tuple[str, str], ...]) -> Any:
    """A redactor of these secrets only, built once per set (its patterns compile once, not per task)."""
    from goatclaw.security.secrets import Redactor

    return Redactor(dict(secrets))


def _proxy_reduce(proxy: types.MappingProxyType[Any, Any]) -> tuple[Any, ...]:
    return read_only, (dict(proxy),)


def read_only(data: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    """A read-only view of ``data`` (how a mapping proxy is rebuilt on a worker)."""
    return types.MappingProxyType(data)


# -- on the worker -------------------------------------------------------------------


def dask_setup(worker: Any) -> None:
    """Dask's preload hook (``--preload goatclaw.engine.dask``): the worker process ignores SIGINT and SIGHUP.

    A Ctrl-C at a terminal (or its hangup) reaches every process of the foreground group,
    the local cluster's workers too: they would die with a traceback each while the driver
    is cancelling the run and closing the cluster in order. The driver stops them itself.
    """
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None:
                signal.signal(sig, signal.SIG_IGN)



class _Stopped(BaseException):  # BaseException, so that a plugin's `except Exception` lets it by
    """Raised inside a task's thread when the driver (or the task's own timeout) stops it."""


_LOCK = threading.Lock()
_RUNNING: dict[str, int] = {}  # call token -> the ident of the thread running it
_STOPPED: dict[str, str] = {}  # call token -> why it was stopped (kept for a call that has not started yet)
_MAX_STOPPED = 10_000
_PLUGINS: dict[tuple[str, str, str], Callable[..., Any]] = {}


def stop_task(token: str, reason: str) -> bool:
    """Stop the call ``token`` if this process runs it (or before it starts); ``True`` if it was running.

    Runs on every worker (``client.run``) when the driver cancels, and in a timer when a
    task outlives its timeout. At most one stop is ever raised into a thread, and only
    while it is still inside that call (see :func:`_interruptible`).
    """
    with _LOCK:
        _STOPPED[token] = reason
        while len(_STOPPED) > _MAX_STOPPED:
            del _STOPPED[next(iter(_STOPPED))]
        ident = _RUNNING.pop(token, None)
        if ident is None:
            return False
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_Stopped))
        return True


def run_remote(call: RemoteCall, packed: bytes, kwargs: dict[str, Any]) -> Outcome:
    """The function Dask runs on a worker: load the plugin by name, call it, return an :class:`Outcome`.

    Errors are returned, not raised, so that they reach the driver as the plugin raised
    them (and Dask does not log every failed task as a crash).
    """
    events: list[tuple[str, dict[str, Any]]] = []
    ctx: TaskContext = pickle.loads(packed)
    ctx._emit = lambda topic, data: events.append((topic, data))
    try:
        fn = _resolve(call)
        output = _interruptible(call, ctx, fn, kwargs)
    except BaseException as exc:  # the plugin's error, carried back to the driver
        return Outcome(False, _portable(exc), tuple(events))
    return Outcome(True, output, tuple(events))


def _interruptible(call: RemoteCall, ctx: TaskContext, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call the plugin in this thread so that :func:`stop_task` can stop it.

    The stop is raised asynchronously, at the thread's next Python instruction. Once
    :func:`stop_task` has taken the token out of ``_RUNNING``, the stop is on its way:
    if the call returns first, wait here for it, so it never lands outside this function
    (in Dask's own code).
    """
    token = call.token
    timer = None
    try:
        with _LOCK:
            if token in _STOPPED:
                raise _Stopped
            _RUNNING[token] = threading.get_ident()
        if ctx.timeout is not None:
            timer = threading.Timer(ctx.timeout + REMOTE_GRACE, stop_task, (token, "timeout"))
            timer.daemon = True
            timer.start()
        try:
            result: Any = ("ok", asyncio.run(fn(ctx, **kwargs)) if call.is_async else fn(ctx, **kwargs))
        except _Stopped:
            raise
        except BaseException as exc:
            result = ("error", exc)
        with _LOCK:
            mine = _RUNNING.pop(token, None) is not None
        if not mine:
            _await_stop()
    except _Stopped:
        reason = _STOPPED.get(token, "cancelled")
        if reason == "timeout":
            raise TaskTimeout(f"timed out after {ctx.timeout:g}s (stopped on the Dask worker)") from None
        raise TaskError("cancelled by the driver (stopped on the Dask worker)", error_class="cancelled") from None
    finally:
        if timer is not None:
            timer.cancel()
    if result[0] == "error":
        raise result[1]
    return result[1]


def _await_stop() -> None:
    """Wait for a stop that was already raised into this thread (it lands within a few instructions)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.001)


def _resolve(call: RemoteCall) -> Callable[..., Any]:
    """The plugin's callable, loaded on this worker by name (a Python-registered one by its module)."""
    key = (call.name, call.package, call.ref)
    fn = _PLUGINS.get(key)
    if fn is None:
        fn = _import_registered(call) if call.package == _REGISTERED else _load_installed(call)
        _PLUGINS[key] = fn
    return fn


def _load_installed(call: RemoteCall) -> Callable[..., Any]:
    try:
        plugin = default_registry().task(call.name)
    except PluginError as exc:
        raise TaskError(f"task plugin '{call.name}' is not installed on the Dask worker {_worker()}: install "
                        f"{call.origin} there, as on the driver ({exc.message})", error_class="invalid_input",
                        details={"package": call.package, "version": call.version}) from None
    if plugin.package != call.package:
        raise TaskError(f"task plugin '{call.name}' comes from {plugin.origin} on the Dask worker {_worker()} but "
                        f"from {call.origin} on the driver: install {call.origin} there",
                        error_class="invalid_input", details={"package": call.package, "version": call.version})
    return plugin.fn


def _import_registered(call: RemoteCall) -> Callable[..., Any]:
    from goatclaw.registry import _import_ref

    try:
        return _import_ref(call.ref)  # type: ignore[no-any-return]
    except Exception as exc:
        raise TaskError(f"task plugin '{call.name}' was registered from Python on the driver ({call.ref}) and "
                        f"cannot be imported on the Dask worker {_worker()}: {type(exc).__name__}: {exc}; make "
                        "its module importable there, or publish it as an entry point in a package installed "
                        "on every worker", error_class="invalid_input") from None


def _worker() -> str:
    try:
        return str(distributed.get_worker().address)
    except ValueError:
        return f"(pid {os.getpid()})"


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a TaskError that says the same."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        error_class = exc.error_class if isinstance(exc, TaskError) else type(exc).__name__
        return TaskError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, error_class=error_class)
    return exc
