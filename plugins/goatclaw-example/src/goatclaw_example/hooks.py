"""Hook plugins: ``example.timing`` records how long each task took."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class TimingHook:
    """Record each task's duration and write a JSON summary to ``path`` when the run ends.

    ``path`` is relative to the project folder (the run's workspace). In a pipeline::

        hooks:
          - use: example.timing
            with: {path: out/timings.json}
    """

    def __init__(self, path: str = "timings.json") -> None:
        self.path = Path(path)
        self.workspace = Path.cwd()
        self.started: dict[str, float] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.run_started = 0.0

    def on_run_start(self, *, run_id: str, workspace: Path, **_: Any) -> None:
        """Remember where to write and when the run started."""
        self.workspace = Path(workspace)
        self.run_started = time.perf_counter()
        self.started.clear()
        self.tasks.clear()

    def before_task(self, *, task_id: str, **_: Any) -> None:
        """Start the task's clock."""
        self.started[task_id] = time.perf_counter()

    def after_task(self, *, task_id: str, status: str, **_: Any) -> None:
        """Stop the task's clock."""
        begun = self.started.pop(task_id, None)
        seconds = time.perf_counter() - begun if begun is not None else None
        self.tasks[task_id] = {"status": status, "seconds": round(seconds, 6) if seconds is not None else None}

    def on_run_end(self, *, run_id: str, pipeline: str, status: str, **_: Any) -> None:
        """Write the summary file."""
        target = self.path if self.path.is_absolute() else self.workspace / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        summary = {"run_id": run_id, "pipeline": pipeline, "status": status,
                   "seconds": round(time.perf_counter() - self.run_started, 6), "tasks": self.tasks}
        target.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
