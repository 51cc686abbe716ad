"""goatclaw: declarative YAML pipelines for LLM and agent workflows.

The front door. Everything a user or plugin author needs is importable from here::

    import goatclaw

    result = goatclaw.run(goatclaw.load("pipelines/quickstart.yaml"))

Names are imported on first use, so ``import goatclaw`` itself reads no file, opens no
database, scans no plugins and imports no heavy library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Bus": "goatclaw.events",
    "Event": "goatclaw.events",
    "GoatclawError": "goatclaw.errors",
    "Location": "goatclaw.errors",
    "PermissionDenied": "goatclaw.errors",
    "Pipeline": "goatclaw.spec.model",
    "Plan": "goatclaw.graph",
    "PluginError": "goatclaw.errors",
    "Problem": "goatclaw.errors",
    "Registry": "goatclaw.registry",
    "RunCancelled": "goatclaw.errors",
    "RunResult": "goatclaw.engine.state",
    "RunStatus": "goatclaw.engine.state",
    "SpecError": "goatclaw.errors",
    "StoreError": "goatclaw.errors",
    "Task": "goatclaw.spec.model",
    "TaskContext": "goatclaw.plugin",
    "TaskError": "goatclaw.errors",
    "TaskResult": "goatclaw.engine.state",
    "TaskState": "goatclaw.engine.state",
    "TaskTimeout": "goatclaw.errors",
    "TemplateError": "goatclaw.errors",
    "adecide": "goatclaw.api",
    "afork": "goatclaw.api",
    "approvals": "goatclaw.api",
    "arun": "goatclaw.api",
    "audit_log": "goatclaw.audit",
    "check": "goatclaw.api",
    "decide": "goatclaw.api",
    "diff_runs": "goatclaw.api",
    "expire_approvals": "goatclaw.api",
    "fail": "goatclaw.plugin",
    "fork": "goatclaw.api",
    "load": "goatclaw.api",
    "plan": "goatclaw.api",
    "run": "goatclaw.api",
    "scheduled_pipelines": "goatclaw.api",
    "schedules": "goatclaw.api",
    "task": "goatclaw.plugin",
    "verify_audit": "goatclaw.audit",
    "watch": "goatclaw.watcher",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'goatclaw' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs only; at run time names load lazily
    from goatclaw.api import (
        adecide,
        afork,
        approvals,
        arun,
        check,
        decide,
        diff_runs,
        expire_approvals,
        fork,
        load,
        plan,
        run,
        scheduled_pipelines,
        schedules,
    )
    from goatclaw.audit import audit_log, verify_audit
    from goatclaw.engine.state import RunResult, RunStatus, TaskResult, TaskState
    from goatclaw.errors import (
        GoatclawError,
        Location,
        PermissionDenied,
        PluginError,
        Problem,
        RunCancelled,
        SpecError,
        StoreError,
        TaskError,
        TaskTimeout,
        TemplateError,
    )
    from goatclaw.events import Bus, Event
    from goatclaw.graph import Plan
    from goatclaw.plugin import TaskContext, fail, task
    from goatclaw.registry import Registry
    from goatclaw.spec.model import Pipeline, Task
    from goatclaw.watcher import watch
