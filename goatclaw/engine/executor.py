"""Executor backends: where a plugin body actually runs.

The scheduler, retries, validation and the store stay with the driver; an executor only
calls a plugin with its context and rendered arguments and hands back the output. The
``local`` executor runs async plugins on the event loop, blocking ones in a thread, and
``cpu_bound`` ones in a worker process so the loop is never blocked. The ``dask``
executor (:mod:`goatclaw.engine.dask`, imported only when chosen) sends task bodies to
a Dask cluster. :func:`make_executor` builds one by name.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import dataclasses
import os
import resource
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from goatclaw.errors import GoatclawError, TaskError
from goatclaw.extras import install_line
from goatclaw.plugin import TaskContext
from goatclaw.registry import Plugin

if TYPE_CHECKING:  # the worker pool (multiprocessing, about 7 ms of imports) is imported by the first cpu_bound call
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "make_executor", "started"]

#: The executor backends :func:`make_executor` knows, by name.
EXECUTORS = ("local", "dask")


class Executor(abc.ABC):
    """Runs plugin bodies. Implement :meth:`call`; :meth:`start` and :meth:`close` bracket a run."""

    name: str = "executor"

    @abc.abstractmethod
    async def call(self, plugin: Plugin, ctx: TaskContext, kwargs: Mapping[str, Any], *,
                   run_on: str | None = None) -> Any:
        """Run ``plugin`` with ``ctx`` and ``kwargs`` and return its output (or raise its error).

        ``run_on`` is the task's ``run_on:`` (``local``, ``cluster`` or ``None``): where a
        backend with more than one place to run should put it.
        """

    async def start(self) -> None:  # noqa: B027 - a hook with a default, not an abstract method
        """Acquire what calls need (a cluster, a connection) before the first call (the default does nothing)."""

    async def close(self) -> None:  # noqa: B027 - a hook with a default, not an abstract method
        """Release pools and connections (the default does nothing)."""


def make_executor(kind: str = "local", *, address: str | None = None, workers: int | None = None,
                  worker_wait: float | None = None) -> Executor:
    """The executor backend ``kind``: ``local`` (``workers`` processes for CPU-bound tasks) or ``dask``.

    ``dask`` connects to the scheduler at ``address`` (and waits ``worker_wait`` seconds,
    default 30, for its first worker), or starts a local cluster of ``workers`` worker
    processes for the run when there is none. It needs the ``dask`` extra; Dask is
    imported here and nowhere else before that.
    """
    if kind == "dask":
        try:
            from goatclaw.engine.dask import DaskExecutor
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] not in ("dask", "distributed"):
                raise
            raise GoatclawError(f"the dask executor needs Dask distributed ({exc}): "
                                f"{install_line('dask')}") from None
        return DaskExecutor(address, workers=workers) if worker_wait is None else DaskExecutor(
            address, workers=workers, worker_wait=worker_wait)
    if kind != "local":
        raise GoatclawError(f"unknown executor '{kind}': use one of {', '.join(EXECUTORS)}")
    if address is not None:
        raise GoatclawError(f"a scheduler address ({address}) needs the dask executor: use --executor dask")
    return LocalExecutor(processes=workers)


@contextlib.asynccontextmanager
async def started(executor: Executor | None, *, owned: bool) -> AsyncIterator[Executor | None]:
    """Start an ``owned`` executor for the length of the block and close it after; others pass through."""
    if executor is None or not owned:
        yield executor
        return
    try:
        await executor.start()
        yield executor
    finally:
        await executor.close()


async def _in_thread(fn: Any, ctx: TaskContext, kwargs: Mapping[str, Any]) -> Any:
    """Run a blocking plugin in a daemon thread of its own.

    A thread cannot be killed: on a timeout or cancel it is abandoned and its result is
    dropped. Being a daemon, and not in the loop's default executor, it holds neither the
    run (``asyncio.run`` waits for the default executor) nor the process's exit. The CPU
    time the thread used is reported as a ``task.resources`` event (``process: thread``).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()  # the run's settings (rate limits, LLM session) go with the call

    def settle(ok: bool, value: Any, usage: dict[str, float]) -> None:
        if not future.done():
            ctx.emit("task.resources", **usage, process="thread")
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        before = _thread_cpu()
        try:
            result = context.run(fn, ctx, **kwargs)
        except BaseException as exc:  # handed to the awaiting task, which maps it
            ok, value = False, exc
        else:
            ok, value = True, result
        after = _thread_cpu()
        usage = {"cpu_user_s": round(after[0] - before[0], 6), "cpu_system_s": round(after[1] - before[1], 6)}
        try:
            loop.call_soon_threadsafe(settle, ok, value, usage)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name=f"goatclaw-task-{ctx.task_id}", daemon=True).start()
    return await future


def _thread_cpu() -> tuple[float, float]:
    """The calling thread's user and system CPU seconds (Linux); elsewhere its CPU time, all as user."""
    try:
        usage = resource.getrusage(resource.RUSAGE_THREAD)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return time.thread_time(), 0.0
    return usage.ru_utime, usage.ru_stime


def _call_in_process(fn: Any, ctx: TaskContext, kwargs: Mapping[str, Any]
                     ) -> tuple[bool, Any, dict[str, float], list[tuple[str, dict[str, Any]]]]:
    """In a pool worker: call ``fn`` and measure the CPU time it took (the worker runs one call at a time).

    Returns ``(ok, output or exception, resources, events)``; ``max_rss_mb`` is the worker
    process's peak so far, which bounds the call's own; ``events`` are what the plugin emitted,
    for the parent to record.
    """
    events: list[tuple[str, dict[str, Any]]] = []
    ctx._emit = lambda topic, data: events.append((topic, data))
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        ok, value = True, fn(ctx, **kwargs)
    except Exception as exc:
        ok, value = False, exc
    after = resource.getrusage(resource.RUSAGE_SELF)
    usage = {"cpu_user_s": round(after.ru_utime - before.ru_utime, 6),
             "cpu_system_s": round(after.ru_stime - before.ru_stime, 6),
             "max_rss_mb": round(after.ru_maxrss / 1024, 3), "pid": os.getpid()}
    return ok, value, usage, events


class LocalExecutor(Executor):
    """Runs on this machine: asyncio for async plugins, threads for blocking ones, processes for CPU-bound ones."""

    name = "local"

    def __init__(self, *, processes: int | None = None) -> None:
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def call(self, plugin: Plugin, ctx: TaskContext, kwargs: Mapping[str, Any], *,
                   run_on: str | None = None) -> Any:
        """Await an async plugin; run a blocking one in a thread, a CPU-bound one in a process (here, always)."""
        if plugin.is_async:
            return await plugin.fn(ctx, **kwargs)
        if plugin.spec.cpu_bound:
            return await self._in_process(plugin, ctx, kwargs)
        return await _in_thread(plugin.fn, ctx, kwargs)

    async def _in_process(self, plugin: Plugin, ctx: TaskContext, kwargs: Mapping[str, Any]) -> Any:
        """Run in the worker pool.

        A cancelled call (timeout, Ctrl-C) kills the pool's processes, since a running call
        cannot be stopped any other way; calls that were in flight in them fail with error
        class ``connection`` (retryable), and the next call starts a new pool.
        """
        from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._processes)
        pool = self._pool
        # callbacks cannot cross processes; read-only mapping proxies cannot be pickled
        plain_ctx = dataclasses.replace(ctx, _emit=None, tools=None, mcp=None, env=dict(ctx.env),
                                        secrets=dict(ctx.secrets))
        loop = asyncio.get_running_loop()
        try:
            ok, value, usage, events = await loop.run_in_executor(pool, _call_in_process, plugin.fn, plain_ctx,
                                                                  dict(kwargs))
        except asyncio.CancelledError:
            self._kill(pool)
            raise
        except BrokenProcessPool as exc:
            self._kill(pool)
            raise TaskError(f"the worker process running '{plugin.name}' died: {exc}",
                            error_class="connection") from None
        if ctx._emit is not None:  # what the plugin emitted in the pool, recorded as if emitted here
            for topic, data in events:
                ctx._emit(topic, data)
        ctx.emit("task.resources", **usage, process="pool")
        if not ok:
            raise value
        return value

    def _kill(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        for proc in list(getattr(pool, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Shut the worker pool down without waiting for abandoned calls."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
