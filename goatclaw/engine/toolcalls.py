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
the audit chain). The tool loop itself lives in
the LLM room (:func:`goatclaw.llm.converse`) and only ever sees the toolbox's ``call``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from goatclaw.engine.executor import Executor
from goatclaw.engine.guard import Guard, unmet_needs
from goatclaw.engine.recorder import Recorder
from goatclaw.engine.state import to_json
from goatclaw.errors import GoatclawError, TaskError, TaskTimeout
from goatclaw.plugin import TaskContext
from goatclaw.registry import Registry
from goatclaw.spec.model import Task
from goatclaw.tools import Tool, Toolbox, plugin_tool

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
                       index: int | None) -> Callable[[Sequence[Any]], Toolbox]:
        """``ctx.tools`` for one attempt of ``task``: entries → the toolbox of what it is granted."""
        return functools.partial(self._toolbox, task, attempt, item, index)

    def _toolbox(self, task: Task, attempt: int, item: Any, index: int | None, entries: Sequence[Any]) -> Toolbox:
        assert self.recorder is not None
        if not isinstance(entries, (list, tuple)):
            raise TaskError("tools must be a list of {uses, with, name, description}", error_class="invalid_input")
        tools = [plugin_tool(i, e, self.registry.task) for i, e in enumerate(entries)]
        grant = self.guard.grant(task)
        offered, refused = [], {}
        for tool in tools:
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
                "untrusted": tool.plugin.spec.untrusted_output, "bytes": len(text)}
        rec.event("tool.succeeded", task.id, done)
        rec.audited("tool.called", task.id, {**about, "status": "succeeded"})
        return rec.redactor.mask(text) or ""

    async def _tool_output(self, tool: Tool, ctx: TaskContext, kwargs: dict[str, Any]) -> str:
        plugin = tool.plugin
        if plugin.spec.warmup is not None:
            await plugin.spec.warmup()
        if self.inline_async and plugin.is_async:
            output = await plugin.fn(ctx, **kwargs)
        else:
            output = await self.executor.call(plugin, ctx, kwargs)
        return to_json(output)


def _tool_error(exc: BaseException) -> TaskError:
    """A tool's failure as the error class and message the model reads."""
    if isinstance(exc, TaskError):
        return exc
    if isinstance(exc, TaskTimeout):
        return TaskError(exc.message, error_class="timeout")
    if isinstance(exc, GoatclawError):
        return TaskError(exc.message, error_class="internal")
    return TaskError(f"{type(exc).__name__}: {exc}", error_class=type(exc).__name__)
