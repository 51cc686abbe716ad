"""``echo``: returns its ``with:`` arguments. Useful to shape data and to test pipelines."""

from __future__ import annotations

from typing import Any

from goatclaw.plugin import TaskContext, task


@task(cacheable=True)
async def echo(ctx: TaskContext, **values: Any) -> Any:
    """Return the ``with:`` arguments as the output (``value:`` alone is returned bare)."""
    if len(values) == 1 and "value" in values:
        return values["value"]
    return values
