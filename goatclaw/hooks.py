"""Lifecycle hooks: code that watches a run without being part of it.

A hook is any object, class or module with some of these methods, each called with
keyword arguments only (accept ``**_`` to stay compatible when new ones are added; a
method that does not takes only the arguments it names)::

    on_run_start(*, run_id, pipeline, tasks, workspace)
    before_task(*, run_id, pipeline, task_id, uses)
    after_task(*, run_id, pipeline, task_id, status, output, error, error_class, attempts, duration)
    on_task_success(*, run_id, pipeline, task_id, output, attempts, duration)
    on_task_failure(*, run_id, pipeline, task_id, error, error_class, attempts, duration)
    on_run_end(*, run_id, pipeline, status, error, duration, workspace)

Methods may be ``async``. Synchronous ones run on the event loop, so they should be quick.
A method that names a ``mask`` parameter also gets the run's secret masker: ``mask(value)``
returns ``value`` (a string, or data holding strings) with every declared secret replaced by
``***``, so a hook that sends anything out of the process masks it as the store does.
Hooks come from the ``goatclaw.hooks`` entry-point group (named in a pipeline's
``hooks:``; a class is instantiated with the entry's ``with:``) or from Python
(``goatclaw.run(..., hooks=[obj])``). A hook that raises is reported (event
``hook.failed``, a warning in the run's output) and the run goes on; with
``fail_run: true`` the run ends failed.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goatclaw.errors import PluginError
from goatclaw.registry import HOOK_EVENTS, Registry

__all__ = ["HOOK_EVENTS", "Hooks"]

_log = logging.getLogger("goatclaw.hooks")
Emit = Callable[[str, str | None, dict[str, Any]], None]


@dataclass
class _Bound:
    """One hook in use: its name, whether its failure fails the run, and its methods by event."""

    name: str
    fail_run: bool
    methods: dict[str, tuple[Callable[..., Any], frozenset[str] | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, obj: Any, fail_run: bool) -> _Bound:
        bound = cls(name, fail_run)
        for event in HOOK_EVENTS:
            method = getattr(obj, event, None)
            if callable(method):
                bound.methods[event] = (method, _accepted(method))
        return bound


def _accepted(method: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``method`` takes; ``None`` when it takes ``**kwargs`` (all of them)."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                          inspect.Parameter.POSITIONAL_OR_KEYWORD))


class Hooks:
    """The hooks of one run, called in order; failures are reported, never raised.

    Build with :meth:`build` (``None`` when there are no hooks, so the engine's hot path
    only tests ``if self.hooks:``), :meth:`attach` the run's event sink, then call events.
    """

    def __init__(self, hooks: list[_Bound], problems: list[tuple[str, str, bool]]) -> None:
        self._hooks = hooks
        self._problems = problems  # (hook, message, fail_run): hooks that could not be set up
        self._emit: Emit | None = None
        self._mask: Callable[[Any], Any] | None = None  # the run's redactor (mask_data), for hooks that ask
        self._started = time.time()
        #: The first failure of a ``fail_run: true`` hook: the run ends failed with this error.
        self.fatal: str | None = None

    def __bool__(self) -> bool:
        return bool(self._hooks or self._problems)

    @property
    def names(self) -> list[str]:
        """The hooks in use, in call order."""
        return [h.name for h in self._hooks]

    @classmethod
    def build(cls, declared: Sequence[Any], objects: Sequence[Any], registry: Registry) -> Hooks | None:
        """The hooks a pipeline declares (names or ``{use, with, fail_run}``) then those given from Python.

        Items of ``objects`` may be hook objects, or names and mappings like ``declared``.
        """
        if not declared and not objects:
            return None
        hooks: list[_Bound] = []
        problems: list[tuple[str, str, bool]] = []
        for item in (*declared, *objects):
            if isinstance(item, (str, Mapping)):
                name = item if isinstance(item, str) else str(item.get("use"))
                args = {} if isinstance(item, str) else dict(item.get("with") or {})
                fail_run = isinstance(item, Mapping) and bool(item.get("fail_run", False))
                try:
                    hooks.append(_Bound.of(name, _instantiate(registry, name, args), fail_run))
                except PluginError as exc:
                    problems.append((name, exc.message, fail_run))
            else:
                hooks.append(_Bound.of(_name_of(item), item, False))
        return cls(hooks, problems)

    def attach(self, emit: Emit) -> None:
        """Where failures are reported (the run's recorder); reports hooks that could not be set up."""
        self._emit = emit
        self._started = time.time()
        for name, message, fail_run in self._problems:
            self._report(name, "setup", message, fail_run, None)

    async def call(self, event: str, *, task_id: str | None = None, **kwargs: Any) -> None:
        """Call ``event`` on every hook that implements it, with the keyword arguments it takes."""
        if task_id is not None:
            kwargs["task_id"] = task_id
        for hook in self._hooks:
            entry = hook.methods.get(event)
            if entry is None:
                continue
            method, accepted = entry
            given = kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}
            if accepted is not None and "mask" in accepted:
                given["mask"] = self._mask if self._mask is not None else _unmasked
            try:
                result = method(**given)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._report(hook.name, event, f"{type(exc).__name__}: {exc}", hook.fail_run, task_id)

    # -- the events, as the engine calls them ------------------------------------------

    async def run_started(self, *, run_id: str, pipeline: str, tasks: list[str], workspace: Any,
                          emit: Emit, mask: Callable[[Any], Any] | None = None) -> None:
        """Attach ``emit`` (and the run's secret masker ``mask``) and call ``on_run_start``."""
        self._mask = mask
        self.attach(emit)
        await self.call("on_run_start", run_id=run_id, pipeline=pipeline, tasks=tasks, workspace=workspace)

    async def task_finished(self, *, run_id: str, pipeline: str, result: Any) -> None:
        """``after_task``, then ``on_task_success`` or ``on_task_failure`` for a task's result."""
        status = result.status.value
        duration = result.finished_at - result.started_at if result.finished_at and result.started_at else None
        common = {"run_id": run_id, "pipeline": pipeline, "task_id": result.id, "attempts": result.attempts,
                  "duration": duration}
        await self.call("after_task", status=status, output=result.output, error=result.error,
                        error_class=result.error_class, **common)
        if status in ("succeeded", "cached"):
            await self.call("on_task_success", output=result.output, **common)
        elif status == "failed":
            await self.call("on_task_failure", error=result.error, error_class=result.error_class, **common)

    async def run_ending(self, *, run_id: str, pipeline: str, status: str, error: str | None,
                         workspace: Any) -> str | None:
        """Call ``on_run_end``; the error that fails the run if a ``fail_run`` hook failed, else ``None``."""
        await self.call("on_run_end", run_id=run_id, pipeline=pipeline, status=status, error=error,
                        duration=time.time() - self._started, workspace=workspace)
        return self.fatal

    def _report(self, hook: str, event: str, error: str, fail_run: bool, task_id: str | None) -> None:
        message = f"hook '{hook}' failed in {event}: {error}"
        _log.warning("%s", message)
        if fail_run and self.fatal is None:
            self.fatal = message
        if self._emit is not None:
            self._emit("hook.failed", task_id, {"hook": hook, "event": event, "error": error, "fail_run": fail_run,
                                                "message": message})


def _unmasked(value: Any) -> Any:
    """The masker of a run without secrets."""
    return value


def _instantiate(registry: Registry, name: str, args: Mapping[str, Any]) -> Any:
    """The hook object for ``name``: a class is called with ``with:``; anything else is used as is."""
    plugin = registry.hook(name)
    obj = plugin.fn
    if inspect.isclass(obj):
        try:
            return obj(**args)
        except Exception as exc:
            raise PluginError(f"hook '{name}' from {plugin.origin} could not be created: "
                              f"{type(exc).__name__}: {exc}") from exc
    if args:
        raise PluginError(f"hook '{name}' from {plugin.origin} takes no with: (it is not a class)")
    return obj


def _name_of(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__
