"""``approval``: a person approves before the tasks that need it run (docs/approvals.md).

The engine stops the run at the task until a decision is recorded (``goatclaw approve RUN``);
the run ends ``waiting`` and its process exits. Once approved the task runs and its output is
the decision, ``{approved, by, at, inputs, reason}``, so the tasks after it read what the
approver filled in as ``${{ tasks.<id>.output.inputs.<name> }}``. What the request says
(message, timeout, the inputs' JSON Schema) is the task's ``approval:`` key.
"""

from __future__ import annotations

from typing import Any

from goatclaw.plugin import TaskContext, fail, task


@task(cacheable=False)  # its output is this run's decision: never one from another run
async def approval(ctx: TaskContext) -> dict[str, Any]:
    """Wait for a person's approval (``approval:`` says what is asked); the output is the decision."""
    if ctx.approval is None:  # only the engine's gate runs this task, and only once it was approved
        fail("an approval task runs only after its approval was given (goatclaw approve)", error_class="internal")
    return dict(ctx.approval)
