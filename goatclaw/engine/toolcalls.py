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
the audit chain). ``{mcp: server}`` entries offer the tools that server lists, as far as
``permissions.mcp`` grants them; a call of one goes the same way, to the run's server
(:mod:`goatclaw.tools.mcp`), with ``mcp.called`` in the audit chain besides. The tool loop itself lives in
the LLM room (:func:`goatclaw.llm.converse`) and only ever sees the toolbox's ``call``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from goatclaw.engine.executor import Executor
from goatclaw.engine.guard import Guard, unmet_needs
from goatclaw.engine.recorder import Recorder
from goatclaw.engine.state import to_json
from goatclaw.errors import GoatclawError, TaskError, TaskTimeout
from goatclaw.plugin import TaskContext
from goatclaw.registry import Registry
from goatclaw.security.permissions import Grant
from goatclaw.spec.model import Task
from goatclaw.tools import Tool, Toolbox, mcp_tool, plugin_tool
from goatclaw.tools.mcp import current as mcp_servers

__all__ = ["ToolCalls"]


class ToolCalls:
    """Tool calls of a task's model, mixed into the runner.

    The runner provides what is declared here and ``_task_context(...)``.
    """

    recorder: Recorder | None
    registry: Registry
    guard: Guard
    executor: Executor
    inline_async: bool
    _task_context: Callable[..., TaskContext]

    def _toolbox_maker(self, task: Task, attempt: int, item: Any,
                       index: int | None) -> Callable[[Sequence[Any]], Awaitable[Toolbox]]:
        """``ctx.tools`` for one attempt of ``task``: entries → (awaited) the toolbox of what it is granted."""
        return functools.partial(self._toolbox, task, attempt, item, index)

    async def _toolbox(self, task: Task, attempt: int, item: Any, index: int | None,
                       entries: Sequence[Any]) -> Toolbox:
        assert self.recorder is not None
        if not isinstance(entries, (list, tuple)):
            raise TaskError("tools must be a list of {uses, with, name, description} or {mcp}",
                            error_class="invalid_input")
        grant = self.guard.grant(task)
        tools: list[Tool] = []
        refused: dict[str, str] = {}
        for i, entry in enumerate(entries):
            if isinstance(entry, Mapping) and "mcp" in entry:
                tools += await self._mcp_tools(task, index, i, entry, grant, refused)
            else:
                tools.append(plugin_tool(i, entry, self.registry.task))
        offered = []
        for tool in tools:
            if tool.plugin is None:  # an MCP tool: _mcp_tools offered only what the task is granted
                offered.append(tool)
                continue
            unmet = unmet_needs(tool.plugin.spec, grant)
            if not unmet:
                offered.append(tool)
                continue
            fields = " or ".join(f"permissions.{f}" for _, f_list in unmet for f in f_list)
            refused[tool.name] = f"'{tool.uses}' needs {fields}, which task {task.id} is not granted"
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

        return Toolbox(offered, functools.partial(self._run_tool, task, attempt, item, index, counter), refused,
                       rejected)

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

    async def _run_tool(self, task: Task, attempt: int, item: Any, index: int | None, counter: Any, tool: Tool,
                        kwargs: dict[str, Any]) -> str:
        """One tool call, run as an attempt of ``task``; the output's JSON text, secrets masked."""
        rec = self.recorder
        assert rec is not None
        n = next(counter)
        about = {"item": index, "tool": tool.name, "uses": tool.uses, "call": n}
        rec.event("tool.started", task.id, {**about, "arguments": kwargs})
        ctx = self._task_context(task, attempt, item, index)
        ctx.tools = None  # a tool does not get tools of its own
        started = time.monotonic()
        try:
            text = await self._tool_output(tool, ctx, kwargs)
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
        return rec.redactor.mask(text) or ""

    async def _tool_output(self, tool: Tool, ctx: TaskContext, kwargs: dict[str, Any]) -> str:
        plugin = tool.plugin
        if plugin is None:
            return await self._mcp_output(tool, ctx, kwargs)
        if plugin.spec.warmup is not None:
            await plugin.spec.warmup()
        if self.inline_async and plugin.is_async:
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
