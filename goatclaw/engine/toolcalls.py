"""A model's tool calls as attempts of its task: the runner's half of the tool loop.

:class:`ToolCalls` gives a task's :class:`~goatclaw.plugin.TaskContext` its ``tools``
maker. The ``tools:`` entries become a :class:`~goatclaw.tools.Toolbox` holding only the
tools the task is granted (a plugin needing a permission the task lacks is never
offered; ``tool.refused`` says so), and each call the model makes runs here like the
task's own attempt: the plugin gets a context with the task's grant, secrets and event
channel (so its permission checks, refusals and side effects are audited under the
task; so is a call to a tool that was never offered), the result's secrets are masked
before the model reads them, and the call is recorded as a child of the task
(``tool.started``, then ``tool.succeeded`` or ``tool.failed``, and ``tool.called`` in
the audit chain). Each call is an attempt: the entry's ``retry:`` (else the task's) retries
it, and a cacheable plugin's call with the same arguments is answered from the task cache
(``tool.succeeded`` with ``cached: true``). A ``pipeline:`` entry runs its file as a child
run in the same store (``run.parent`` names the calling run, task and call), every task of
it granted no more than the calling task. ``{mcp: server}`` entries offer the tools that
server lists, as far as ``permissions.mcp`` grants them; a call of one goes the same way,
to the run's server (:mod:`goatclaw.tools.mcp`), with ``mcp.called`` in the audit chain
besides. The tool loop itself lives in
the LLM room (:func:`goatclaw.llm.converse`) and only ever sees the toolbox's ``call``.

A call of a tool the task's ``approve:`` names (its ``uses``, its ``name``, ``mcp:SERVER`` or
``mcp:SERVER:TOOL``; ``approve: true`` for every tool) first asks the run's approver
(``RunOptions.approver``: the CLI's question on the terminal, or a caller's function). A run
without one refuses the call (``approval_required``); either way ``tool.approval`` in the audit
chain says who decided what.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from goatclaw.engine.breaker import Breakers, breaker_key
from goatclaw.engine.executor import Executor
from goatclaw.engine.guard import Guard, sink_vars, unmet_needs, untrusted_sink_reason
from goatclaw.engine.recorder import Recorder
from goatclaw.engine.retry import Backoff, should_retry
from goatclaw.engine.state import to_json
from goatclaw.engine.taskcache import TaskCache, key_text
from goatclaw.errors import GoatclawError, PluginError, SpecError, TaskError, TaskTimeout, TemplateError
from goatclaw.graph import compile_plan
from goatclaw.plugin import TaskContext
from goatclaw.registry import Registry
from goatclaw.security.permissions import Grant
from goatclaw.spec.model import BreakerPolicy, RetryPolicy, Task
from goatclaw.template import compile_value
from goatclaw.tools import Tool, Toolbox, mcp_tool, pipeline_tool, plugin_tool
from goatclaw.tools.mcp import current as mcp_servers

__all__ = ["MAX_PIPELINE_DEPTH", "Approval", "Approver", "ToolCalls", "approve_list"]

#: How deep pipeline tools may nest (a pipeline that offers itself as a tool stops here).
MAX_PIPELINE_DEPTH = 3


@dataclasses.dataclass(frozen=True)
class Approval:
    """One tool call waiting for a person's yes: the task, the tool and its arguments (secrets masked)."""

    task: str
    tool: str
    uses: str
    arguments: Mapping[str, Any]

    @property
    def question(self) -> str:
        """The question as the terminal asks it, the arguments escaped and bounded."""
        return f"task {self.task} wants to call {_escaped(self.tool, 64)}({_preview(self.arguments)}) — allow? [y/N] "


#: Decides an :class:`Approval`: ``True`` runs the call. It may block (it runs in a thread) or be a coroutine
#: function; an attribute ``who`` names the decider in the audit row (default ``caller``).
Approver = Callable[[Approval], "bool | Awaitable[bool]"]


def approve_list(value: Any) -> bool | frozenset[str]:
    """A task's ``approve:`` as ``True`` (every tool), or the names whose calls need approval."""
    if value is None or value is False:
        return frozenset()
    if value is True:
        return True
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise TaskError("approve must be true or a list of tool names (a uses, a name, mcp:SERVER or "
                        "mcp:SERVER:TOOL)", error_class="invalid_input")
    return frozenset(value)


def _needs_approval(tool: Tool, approve: bool | frozenset[str]) -> bool:
    if approve is True:
        return True
    assert isinstance(approve, frozenset)
    names = {tool.name, tool.uses}
    if tool.server is not None:
        names |= {f"mcp:{tool.server}", f"mcp:{tool.server}:{tool.remote}"}
    return not approve.isdisjoint(names)


async def _in_thread(fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)`` in a daemon thread: a question nobody answers never keeps a cancelled run from ending."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if not future.done():
            future.set_exception(exc) if exc is not None else future.set_result(value)

    def work() -> None:
        value, error = None, None
        try:
            value = fn(arg)
        except BaseException as exc:  # handed to the awaiting call
            error = exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop is closed: the run ended without the answer
            pass

    threading.Thread(target=work, name="goatclaw-approval", daemon=True).start()
    return await future


def _escaped(value: str, limit: int) -> str:
    text = json.dumps(value, ensure_ascii=True)[1:-1]  # control characters and non-ASCII as escapes
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _preview(arguments: Mapping[str, Any], limit: int = 300) -> str:
    """``k=v, ...``: each value as escaped JSON at most 80 characters, all of them at most ``limit``."""
    parts = []
    for k, v in arguments.items():
        try:
            text = json.dumps(v, ensure_ascii=True, default=str)
        except (TypeError, ValueError):
            text = json.dumps(repr(v), ensure_ascii=True)
        parts.append(f"{_escaped(str(k), 40)}={text if len(text) <= 80 else text[:79] + '…'}")
    joined = ", ".join(parts)
    return joined if len(joined) <= limit else joined[:limit - 1] + "…"


class ToolCalls:
    """Tool calls of a task's model, mixed into the runner.

    The runner provides what is declared here and ``_task_context(...)``.
    """

    recorder: Recorder | None
    registry: Registry
    guard: Guard
    executor: Executor
    inline_async: bool
    cache: TaskCache | None
    opts: Any
    result: Any
    pipeline: Any
    rng: Any
    context: dict[str, Any]
    _task_context: Callable[..., TaskContext]
    _breakers: Callable[[], Breakers]

    def _toolbox_maker(self, task: Task, attempt: int, item: Any,
                       index: int | None) -> Callable[[Sequence[Any]], Awaitable[Toolbox]]:
        """``ctx.tools`` for one attempt of ``task``: entries → (awaited) the toolbox of what it is granted."""
        return functools.partial(self._toolbox, task, attempt, item, index)

    async def _toolbox(self, task: Task, attempt: int, item: Any, index: int | None,
                       entries: Sequence[Any], approve: Any = None) -> Toolbox:
        assert self.recorder is not None
        if not isinstance(entries, (list, tuple)):
            raise TaskError("tools must be a list of {uses, with, name, description}, {pipeline} or {mcp}",
                            error_class="invalid_input")
        approving = approve_list(approve)
        grant = self.guard.grant(task)
        tools: list[Tool] = []
        refused: dict[str, str] = {}
        for i, entry in enumerate(entries):
            if isinstance(entry, Mapping) and "mcp" in entry:
                tools += await self._mcp_tools(task, index, i, entry, grant, refused)
            else:
                tools.append(self._tool_of(task, i, entry))
        offered = []
        for tool in tools:
            if tool.plugin is None:  # an MCP tool: _mcp_tools offered only what the task is granted
                offered.append(tool)
                continue
            unmet = unmet_needs(tool.plugin.spec, grant)
            if not unmet and not tool.untrusted_sinks:
                offered.append(tool)
                continue
            if unmet:
                fields = " or ".join(f"permissions.{f}" for _, f_list in unmet for f in f_list)
                refused[tool.name] = f"'{tool.uses}' needs {fields}, which task {task.id} is not granted"
            else:
                refused[tool.name] = untrusted_sink_reason(tool.name, tool.uses, tool.untrusted_sinks)
            self.recorder.event("tool.refused", task.id, {"item": index, "tool": tool.name, "uses": tool.uses,
                                                          "reason": refused[tool.name]})
        counter = itertools.count(1)
        rec = self.recorder
        uses = {t.name: t.uses for t in tools}

        def rejected(name: str, err: TaskError) -> None:  # a call refused before it ran: recorded all the same
            about = {"item": index, "tool": name, "uses": uses.get(name), "call": next(counter)}
            rec.event("tool.failed", task.id, {**about, "duration": 0.0, "error_class": err.error_class,
                                               "error": err.message})
            rec.audited("tool.called", task.id, {**about, "status": "failed", "error_class": err.error_class})
            if err.error_class == "permission_denied":  # the model called a tool it was never offered
                rec.audited("permission.denied", task.id, {"item": index, "rule": "tools", "tool": name,
                                                           "message": err.message})

        return Toolbox(offered, functools.partial(self._run_tool, task, attempt, item, index, counter, approving),
                       refused, rejected)

    async def _mcp_tools(self, task: Task, index: int | None, i: int, entry: Mapping[str, Any], grant: Grant,
                         refused: dict[str, str]) -> list[Tool]:
        """The tools of ``tools[i]`` (``{mcp: NAME}`` or ``{mcp: {server, tools}}``) that ``task`` is granted.

        A server the task is granted none of is not even started; a tool it is not granted is
        never offered (``tool.refused``), like a plugin it is not granted.
        """
        assert self.recorder is not None
        where = f"tools[{i}]"
        spec = entry["mcp"]
        extra = sorted(set(entry) - {"mcp"})
        if extra:
            raise TaskError(f"{where} takes no {', '.join(extra)} besides mcp:", error_class="invalid_input")
        server, only = (spec, None) if isinstance(spec, str) else (
            (spec.get("server"), spec.get("tools")) if isinstance(spec, Mapping) else (None, None))
        if not isinstance(server, str) or not server or (only is not None and (
                not isinstance(only, list) or not all(isinstance(t, str) for t in only))):
            raise TaskError(f"{where}.mcp must be a server name or {{server, tools: [names]}}",
                            error_class="invalid_input")
        servers = mcp_servers()
        if servers is None:
            raise TaskError(f"{where}: MCP tools need a run of goatclaw (it owns the servers)",
                            error_class="invalid_input")
        servers.config(server)  # an unknown server: invalid_input naming the known ones
        if not grant.allows_mcp(server):
            why = (f"the MCP server '{server}' needs permissions.mcp, which task {task.id} is not granted "
                   f"({grant.sources.get('mcp', 'embedded default')})")
            refused[f"mcp:{server}"] = why
            self.recorder.event("tool.refused", task.id, {"item": index, "tool": f"mcp:{server}",
                                                          "uses": f"mcp:{server}", "reason": why})
            return []
        listed = await servers.tools(server)
        names = {t.name for t in listed}
        unknown = sorted(set(only or ()) - names)
        if unknown:
            raise TaskError(f"{where}: the MCP server '{server}' lists no tool {', '.join(unknown)} "
                            f"(it lists {', '.join(sorted(names)) or 'none'})", error_class="invalid_input")
        found = []
        for t in listed:
            if only is not None and t.name not in only:
                continue
            tool = mcp_tool(server, t.name, t.description, t.input_schema)
            if grant.allows_mcp(server, t.name):
                found.append(tool)
                continue
            why = f"'{server}:{t.name}' is not in permissions.mcp of task {task.id}"
            refused[tool.name] = why
            self.recorder.event("tool.refused", task.id, {"item": index, "tool": tool.name, "uses": tool.uses,
                                                          "reason": why})
        return found

    def _tool_of(self, task: Task, index: int, entry: Any) -> Tool:
        """One ``tools:`` entry as a tool: a pipeline file (``pipeline:``) or a task plugin (``uses:``)."""
        if isinstance(entry, Mapping) and "pipeline" in entry:
            return self._pipeline_tool(task, index, entry)
        return plugin_tool(index, entry, self.registry.task)

    async def _run_tool(self, task: Task, attempt: int, item: Any, index: int | None, counter: Any,
                        approve: bool | frozenset[str], tool: Tool, kwargs: dict[str, Any]) -> str:
        """One tool call, run as an attempt of ``task``; the output's JSON text, secrets masked.

        A tool ``approve`` names is first put to the run's approver; a call it does not allow fails
        (``approval_denied``, or ``approval_required`` when the run has no approver) without running.
        """
        rec = self.recorder
        assert rec is not None
        n = next(counter)
        about = {"item": index, "tool": tool.name, "uses": tool.uses, "call": n}
        rec.event("tool.started", task.id, {**about, "arguments": kwargs})
        started = time.monotonic()
        try:
            if _needs_approval(tool, approve):
                await self._approval(task, tool, kwargs, about)
            key = self._tool_key(task, tool, kwargs)
            text = self._tool_cached(task, key) if key is not None else None
            if text is not None:
                rec.event("tool.succeeded", task.id, {**about, "duration": round(time.monotonic() - started, 6),
                                                      "untrusted": tool.plugin.spec.untrusted_output,
                                                      "bytes": len(text), "cached": True})
                rec.audited("tool.called", task.id, {**about, "status": "cached"})
                return rec.redactor.mask(text) or ""
            text = await self._tool_attempts(task, attempt, item, index, tool, kwargs, about)
        except asyncio.CancelledError:
            raise
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            err = _tool_error(exc)
            message = rec.redactor.mask(err.message) or ""
            done = {**about, "duration": round(time.monotonic() - started, 6), "error_class": err.error_class,
                    "error": message}
            rec.event("tool.failed", task.id, done)
            rec.audited("tool.called", task.id, {**about, "status": "failed", "error_class": err.error_class})
            raise TaskError(message, error_class=err.error_class) from None
        done = {**about, "duration": round(time.monotonic() - started, 6),
                "untrusted": tool.plugin is None or tool.plugin.spec.untrusted_output, "bytes": len(text)}
        rec.event("tool.succeeded", task.id, done)
        rec.audited("tool.called", task.id, {**about, "status": "succeeded"})
        if key is not None:
            self._tool_answers()[key] = text
            assert self.cache is not None
            self.cache.put(key, tool.plugin, text)
        return rec.redactor.mask(text) or ""

    async def _approval(self, task: Task, tool: Tool, kwargs: Mapping[str, Any], about: Mapping[str, Any]) -> None:
        """Ask the run's approver about one call (one question at a time); audited; raise unless it said yes."""
        rec = self.recorder
        assert rec is not None
        approver = getattr(self.opts, "approver", None)
        masked = rec.redactor.mask_data(dict(kwargs))
        asking = Approval(task.id, tool.name, tool.uses, masked)
        what = {**about, "arguments": _preview(masked)}
        if approver is None:
            rec.audited("tool.approval", task.id, {**what, "who": "nobody", "decision": "refused: no terminal"})
            raise TaskError(f"tool {tool.name} needs approval; run on a terminal to be asked",
                            error_class="approval_required")
        lock = self.__dict__.setdefault("_approval_lock", asyncio.Lock())
        async with lock:  # one question on the terminal at a time
            said = await (approver(asking) if asyncio.iscoroutinefunction(approver) else _in_thread(approver, asking))
            if asyncio.iscoroutine(said):
                said = await said
        who = str(getattr(approver, "who", "caller"))
        decision = "approved" if said is True else "denied"
        rec.audited("tool.approval", task.id, {**what, "who": who, "decision": decision})
        if said is not True:
            raise TaskError(f"tool {tool.name} was not approved ({who} said no)", error_class="approval_denied")

    async def _tool_attempts(self, task: Task, attempt: int, item: Any, index: int | None, tool: Tool,
                             kwargs: dict[str, Any], about: Mapping[str, Any]) -> str:
        """The call under its retry policy (the entry's ``retry:``, else the task's): each try a fresh context."""
        policy = RetryPolicy.from_data(tool.retry, task.retry) if tool.retry is not None else task.retry
        breaker = BreakerPolicy.from_data(tool.breaker, task.breaker) if tool.breaker is not None else task.breaker
        backoff = Backoff(policy, self.rng)
        tries = 1
        while True:
            ctx = self._task_context(task, attempt, item, index)
            ctx.tools = None  # a tool does not get tools of its own
            try:
                if breaker is None:
                    return await self._tool_output(tool, ctx, kwargs)
                return await self._tool_guarded(tool, ctx, kwargs, breaker)
            except asyncio.CancelledError:
                raise
            except (Exception, KeyboardInterrupt, SystemExit) as exc:
                err = _tool_error(exc)
                if tries >= policy.attempts or not should_retry(policy, err.error_class):
                    raise
                delay = backoff.next_delay(tries, err.error_class, err.retry_after)
                assert self.recorder is not None
                self.recorder.event("tool.retrying", task.id, {**about, "try": tries, "delay": round(delay, 3),
                                                               "error_class": err.error_class,
                                                               "error": self.recorder.redactor.mask(err.message)})
                await self.opts.sleep(delay)
                tries += 1

    async def _tool_guarded(self, tool: Tool, ctx: TaskContext, kwargs: dict[str, Any], policy: BreakerPolicy) -> str:
        """One try of a call behind its circuit breaker.

        Keyed like a task's (the plugin and its host or model, or ``breaker: {key}``), so a tool
        call and a task calling the same service share one breaker.
        """
        breakers = self._breakers()
        key = breaker_key(policy, tool.uses, kwargs)
        await breakers.before(key, policy)
        try:
            text = await self._tool_output(tool, ctx, kwargs)
        except asyncio.CancelledError:
            raise
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            breakers.failure(key, policy, _tool_error(exc).error_class)
            raise
        breakers.success(key)
        return text

    # -- the task cache, per call ------------------------------------------------------

    def _tool_key(self, task: Task, tool: Tool, kwargs: Mapping[str, Any]) -> str | None:
        """The cache key of a call whose answer may be reused (a cacheable plugin, the cache on), else ``None``."""
        plugin = tool.plugin
        if plugin is None:  # an MCP server's tool: goatclaw cannot know it has no side effects
            return None
        if self.cache is None or not tool.cache or not plugin.spec.cacheable or not task.cache.enabled:
            return None
        try:
            args = key_text(kwargs)
        except (TypeError, ValueError):
            return None
        raw = f"tool\0{plugin.name}\0{plugin.package}\0{plugin.version}\0{tool.uses}\0{args}"
        return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    def _tool_cached(self, task: Task, key: str) -> str | None:
        """An earlier answer to the same call: this run's, else the store's (younger than the task's ``cache.ttl``)."""
        text = self._tool_answers().get(key)
        if text is None and self.recorder is not None:
            text = self.recorder.cached(key, task.cache.ttl)
        return text

    def _tool_answers(self) -> dict[str, str]:
        """The answers of this run by key (the store sees them only when the task's rows commit)."""
        return self.__dict__.setdefault("_tool_answer_memo", {})

    # -- pipeline tools: a child run ------------------------------------------------------

    def _pipeline_tool(self, task: Task, index: int, entry: Mapping[str, Any]) -> Tool:
        """A ``pipeline:`` entry: its file (inside the project), what its tasks need, whether they are untrusted."""
        where = f"tools[{index}].pipeline"
        depth = int((self.opts.parent or {}).get("depth", 0))
        if depth >= MAX_PIPELINE_DEPTH:
            raise TaskError(f"{where}: pipeline tools nest at most {MAX_PIPELINE_DEPTH} deep (this run is a child "
                            f"{depth} deep)", error_class="invalid_input")
        if self.opts.load is None:
            raise TaskError(f"{where}: pipeline tools need a run started by goatclaw.run or goatclaw.arun",
                            error_class="invalid_input")
        path = entry["pipeline"]
        root = Path(self.opts.workspace).resolve()
        try:
            file = (root / str(path)).resolve() if isinstance(path, str) and path else None
        except (OSError, ValueError):  # a NUL byte, a name too long
            file = None
        if file is None or not file.is_relative_to(root):
            raise TaskError(f"{where}: {path!r} must be a pipeline file inside the project folder",
                            error_class="invalid_input")
        try:
            child = self.opts.load(file)
        except SpecError as exc:
            raise TaskError(f"{where}: {exc}", error_class="invalid_input") from None
        except OSError as exc:
            raise TaskError(f"{where}: cannot read {path}: {exc.strerror or exc}",
                            error_class="invalid_input") from None
        needs: dict[str, None] = {}
        untrusted = False
        for t in (*child.tasks.values(), *child.on_failure.values(), *child.finally_.values()):
            try:
                spec = self.registry.task(t.uses).spec
            except PluginError:
                continue  # the child run reports it
            needs.update(dict.fromkeys(spec.permissions))
            untrusted = untrusted or spec.untrusted_output or "tools" in t.with_
        run = functools.partial(self._run_child, task, child, depth + 1)
        return pipeline_tool(index, entry, child, tuple(needs), untrusted, run, tuple(sink_vars(child, self.registry)))

    async def _run_child(self, task: Task, child: Any, depth: int, ctx: TaskContext, given: dict[str, Any]) -> Any:
        """Run ``child`` with ``given`` vars in the same store, under ``ctx``'s grant; its ``outputs:``."""
        assert self.recorder is not None
        parent = {"run_id": self.result.run_id, "task": task.id, "pipeline": self.pipeline.name, "depth": depth}
        options = dataclasses.replace(
            self.opts, vars={**child.vars, **given}, concurrency=None, only=(), bus=None, run_id=None, hooks=(),
            resume=False, seed_from=None, stubs={}, executor=self.executor, parent=parent, ceiling=ctx.grant,
            secrets={k: v for k, v in self.opts.secrets.items() if k in child.secrets})  # never more than the caller's
        runner = type(self)(compile_plan(child), options)
        result = await runner.run()
        self.recorder.event("tool.child", task.id, {"run_id": result.run_id, "pipeline": child.name,
                                                    "status": result.status.value})
        if not result.ok:
            failed = next((t for t in result.tasks.values() if t.error), None)
            why = f": task {failed.id}: {failed.error}" if failed else f": {result.error}" if result.error else ""
            raise TaskError(f"pipeline {child.name} (run {result.run_id}) {result.status.value}{why}",
                            error_class=(failed.error_class if failed else None) or "internal")
        if not child.outputs:  # no outputs: declared: what the tasks nothing needs gave
            needed = {n for t in child.tasks.values() for n in t.needs}
            return {tid: r.output for tid, r in result.tasks.items() if tid in child.tasks and tid not in needed}
        try:
            return compile_value(_plain(child.outputs)).render(runner.context)
        except TemplateError as exc:
            raise TaskError(f"pipeline {child.name} outputs: {exc.message}", error_class="invalid_output") from None

    async def _tool_output(self, tool: Tool, ctx: TaskContext, kwargs: dict[str, Any]) -> str:
        plugin = tool.plugin
        if plugin is None:
            return await self._mcp_output(tool, ctx, kwargs)
        if plugin.spec.warmup is not None:
            await plugin.spec.warmup()
        if plugin.kind == "pipeline" or (self.inline_async and plugin.is_async):  # a child run is the driver's
            output = await plugin.fn(ctx, **kwargs)
        else:
            output = await self.executor.call(plugin, ctx, kwargs)
        return to_json(output)


    async def _mcp_output(self, tool: Tool, ctx: TaskContext, kwargs: dict[str, Any]) -> str:
        """A call of an MCP server's tool: checked against the grant again, audited (``mcp.called``), its JSON text.

        The model reads the tool's text (or its structured content); a tool that answers with an
        error is a failed call (class ``tool_error``), and the model reads the error.
        """
        assert tool.server is not None and tool.remote is not None
        servers = mcp_servers()
        if servers is None:
            raise TaskError("MCP tools need a run of goatclaw (it owns the servers)", error_class="invalid_input")
        ctx.permissions.check_mcp(tool.server, tool.remote)
        try:
            result = await servers.call(tool.server, tool.remote, kwargs)
        except TaskError as err:
            ctx.audit("mcp.called", server=tool.server, tool=tool.remote, status="failed", error_class=err.error_class)
            raise
        ctx.audit("mcp.called", server=tool.server, tool=tool.remote,
                  status="failed" if result["is_error"] else "succeeded")
        if result["is_error"]:
            raise TaskError(f"{tool.remote}: {result['text'][:2000]}", error_class="tool_error")
        return to_json(result["structured"] if result["structured"] is not None else result["text"])


def _tool_error(exc: BaseException) -> TaskError:
    """A tool's failure as the error class and message the model reads."""
    if isinstance(exc, TaskError):
        return exc
    if isinstance(exc, TaskTimeout):
        return TaskError(exc.message, error_class="timeout")
    if isinstance(exc, GoatclawError):
        return TaskError(exc.message, error_class="internal")
    return TaskError(f"{type(exc).__name__}: {exc}", error_class=type(exc).__name__)


def _plain(value: Any) -> Any:
    """Frozen spec data (mapping proxies, tuples) as plain dicts and lists, for the template compiler."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
