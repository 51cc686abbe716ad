"""The run's sentry: threat scoring, and auditing what the engine itself sees happen.

The runner hands it every finished task (its output, or its ``permission_denied``
failure) and the names of secrets its templates read. It records ``permission.denied``, ``secret.read`` and
``threat.detected`` rows in the audit chain, publishes ``threat.*`` events, and raises
:class:`RunBlocked` once the run's threat score reaches its threshold, before the
task's dependents are released. A run with nothing to scan costs one attribute test per
task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from goatclaw.engine.recorder import Recorder
from goatclaw.engine.state import TaskResult, TaskState
from goatclaw.errors import GoatclawError
from goatclaw.jsontext import dumps
from goatclaw.plugin import PluginSpec
from goatclaw.security.ratelimit import SideEffectLimits
from goatclaw.security.threat import DEFAULT_THRESHOLD, Finding, ThreatScore, scan_output
from goatclaw.store import Store

__all__ = ["INLINE_SCAN_CHARS", "RunBlocked", "SecretReads", "Sentry"]

#: Outputs longer than this are threat-scanned in a worker thread, off the event loop.
INLINE_SCAN_CHARS = 64 * 1024


class RunBlocked(GoatclawError):
    """The run's threat score reached its threshold: the run stops and is recorded as ``blocked``."""

    exit_code = 3


class SecretReads(Mapping[str, str]):
    """``secrets`` as templates see it, noting which names a render read (for the audit chain)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        value = self._values[name]
        self.read.add(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def taken(self) -> list[str]:
        """The names read since the last call (sorted), and forget them."""
        names = sorted(self.read)
        self.read.clear()
        return names


class Sentry:
    """What a run's threat score and audit need from the runner."""

    def __init__(self, recorder: Recorder, *, threshold: float | None) -> None:
        self.recorder = recorder
        self.threat = ThreatScore(threshold)

    @staticmethod
    def threshold_of(pipeline: Any) -> float:
        """``threat_threshold`` of the pipeline, else of its project, else the default."""
        if pipeline.threat_threshold is not None:
            return float(pipeline.threat_threshold)
        value = _project_data(pipeline).get("threat_threshold")
        return float(value) if isinstance(value, (int, float)) else DEFAULT_THRESHOLD

    @staticmethod
    def limits_of(pipeline: Any, store: Path | None = None) -> SideEffectLimits | None:
        """The project's ``rate_limits.side_effects``, if any (held in ``store``, shared by its processes)."""
        limits = _project_data(pipeline).get("rate_limits")
        if not isinstance(limits, Mapping):
            return None
        return SideEffectLimits.from_settings(limits.get("side_effects"), store=store,
                                              opener=Store.open if store is not None else None)

    def secrets_read(self, task_id: str, index: int | None, names: list[str]) -> None:
        """A task's templates read these secrets (names only go to the audit chain)."""
        for name in names:
            self.recorder.audited("secret.read", task_id, {"item": index, "name": name, "via": "template"})

    def denied(self, task_id: str, message: str) -> None:
        """A task failed with ``permission_denied``: audit it (unless whoever refused did) and count it."""
        if task_id not in self.recorder.denials_audited:
            self.recorder.audited("permission.denied", task_id, {"error": message})
        self._record(task_id, self.threat.denied(message))

    @staticmethod
    def scans(spec: PluginSpec | None) -> bool:
        """Whether the outputs of the plugin ``spec`` declares are scanned (it reaches out, or is not pure)."""
        return spec is not None and bool(spec.permissions or spec.side_effects or not spec.cacheable)

    async def screen(self, task_id: str, res: TaskResult, spec: PluginSpec | None) -> None:
        """Score a finished task (a denial, its output); raise :class:`RunBlocked` at the threshold.

        The scan is linear in the output (RE2); an output over :data:`INLINE_SCAN_CHARS`
        is scanned in a worker thread, so that the event loop (other tasks, timeouts,
        Ctrl-C) keeps running meanwhile.
        """
        if res.error_class == "permission_denied" and res.status is TaskState.FAILED:
            self.denied(task_id, res.error or "")
        elif res.status in (TaskState.SUCCEEDED, TaskState.CACHED) and self.scans(spec):
            text = res.output_json if res.output_json is not None else dumps(res.output)
            untrusted = bool(getattr(spec, "untrusted_output", False)) or "network" in spec.permissions
            if len(text) > INLINE_SCAN_CHARS:
                found = await asyncio.to_thread(self._scan, text, untrusted)
            else:
                found = self._scan(text, untrusted)
            self._record(task_id, self.threat.add(found))
        if self.threat.blocked:
            raise RunBlocked(self._reason())

    def _scan(self, text: str, untrusted: bool) -> list[Finding]:
        """Mask the declared secrets, then scan (pure: safe in a worker thread)."""
        return scan_output(self.recorder._mask(text) or "", untrusted=untrusted)

    def _record(self, task_id: str, findings: list[Finding]) -> None:
        t = self.threat
        for f in findings:
            data = {"kind": f.kind, "weight": f.weight, "detail": f.detail, "score": t.score,
                    "threshold": t.threshold}
            self.recorder.event(f"threat.{f.kind}", task_id, data)
            self.recorder.audited("threat.detected", task_id, data)

    def _reason(self) -> str:
        t = self.threat
        kinds = ", ".join(sorted({f.kind for f in t.findings}))
        return f"blocked: threat score {t.score:g} reached the threshold {t.threshold:g} ({kinds})"

    def blocked(self, reason: str) -> None:
        """Record that the run is stopped (event ``threat.blocked``, audit ``run.blocked``)."""
        t = self.threat
        data = {"score": t.score, "threshold": t.threshold, "reason": reason,
                "findings": [{"kind": f.kind, "weight": f.weight, "detail": f.detail} for f in t.findings]}
        self.recorder.event("threat.blocked", None, data)
        self.recorder.audited("run.blocked", None, {"score": t.score, "threshold": t.threshold, "reason": reason})


def _project_data(pipeline: Any) -> Mapping[str, Any]:
    project = getattr(pipeline, "project", None)
    data = getattr(project, "data", None)
    return data if isinstance(data, Mapping) else {}
