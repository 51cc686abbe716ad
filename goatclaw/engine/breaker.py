"""Circuit breakers, shared through the store across runs and concurrent pipelines.

A breaker is keyed by what fails together: by default the plugin plus the host (``url``)
or model (``model``) the task calls; ``breaker: {key: ...}`` sets it. States:

* **closed**: calls pass. Each counted failure is remembered with its time; when
  ``failures`` of them fall within ``window`` seconds the breaker **opens**.
* **open**: calls fail at once with error class ``breaker_open`` (or, with
  ``wait: true``, wait until the breaker half-opens). After ``reset`` seconds it is
  **half-open**.
* **half-open**: exactly one call (the probe) passes; its success closes the breaker,
  its failure opens it again for another ``reset``.

Failures that say nothing about the dependency's health (``invalid_input``,
``validation``, ``permission_denied``) are not counted. Every state change is an event
(``breaker.opened``, ``breaker.half_open``, ``breaker.closed``). Without a store the
state lives in memory for the run.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from goatclaw.errors import TaskError
from goatclaw.spec.model import BreakerPolicy
from goatclaw.store import Store

__all__ = ["NOT_COUNTED", "Breakers", "breaker_key"]

NOT_COUNTED = frozenset({"invalid_input", "validation", "permission_denied", "cancelled", "breaker_open"})
#: How long a half-open probe holds its lease before another caller may probe.
PROBE_LEASE = 300.0

Row = dict[str, Any]


def breaker_key(policy: BreakerPolicy, uses: str, kwargs: Mapping[str, Any]) -> str:
    """The key a call counts against: ``policy.key``, else the plugin plus its host or model."""
    if policy.key:
        return policy.key
    url = kwargs.get("url")
    if isinstance(url, str) and "://" in url:
        return f"{uses}:{urlsplit(url).netloc}"
    model = kwargs.get("model")
    if isinstance(model, str):
        return f"{uses}:{model}"
    if isinstance(model, list) and model and isinstance(model[0], str):
        return f"{uses}:{model[0]}"
    return uses


class Breakers:
    """Breaker state for one run; persisted in the store when there is one."""

    def __init__(self, store: Store | None, *, emit: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.store = store
        self.emit = emit or (lambda topic, data: None)
        self.clock = clock
        self.sleep = sleep
        self.memory: dict[str, Row] = {}

    def close(self) -> None:
        """Close the store connection, if any."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def _update(self, key: str, change: Callable[[Row | None], Row | None]) -> Row | None:
        if self.store is not None:
            result: Row | None = self.store.update_breaker(key, change)
            return result
        new = change(self.memory.get(key))
        if new is not None:
            self.memory[key] = new
        return new if new is not None else self.memory.get(key)

    async def before(self, key: str, policy: BreakerPolicy) -> None:
        """Let a call through, or fail fast (``breaker_open``), or wait (``wait: true``)."""
        while True:
            verdict: dict[str, Any] = {}
            self._update(key, functools.partial(self._admit, key, policy=policy, verdict=verdict))
            if verdict.get("allow"):
                if verdict.get("probe"):
                    self.emit("breaker.half_open", {"key": key})
                return
            remaining = max(0.0, verdict.get("remaining", policy.reset))
            if not policy.wait:
                raise TaskError(f"circuit breaker '{key}' is open (after repeated failures); it half-opens in "
                                f"{remaining:.1f}s", error_class="breaker_open", retry_after=remaining,
                                details={"breaker": key})
            await self.sleep(max(remaining, 0.01))

    def _admit(self, key: str, row: Row | None, *, policy: BreakerPolicy, verdict: dict[str, Any]) -> Row | None:
        now = self.clock()
        if row is None or row["state"] == "closed":
            verdict["allow"] = True
            return None
        if row["state"] == "open":
            waited = now - (row["opened_at"] or now)
            if waited < policy.reset:
                verdict["remaining"] = policy.reset - waited
                return None
            verdict.update(allow=True, probe=True)
            return {**row, "state": "half_open", "probe_until": now + PROBE_LEASE}
        # half-open: one probe at a time
        if (row.get("probe_until") or 0) > now:
            verdict["remaining"] = min(policy.reset, row["probe_until"] - now)
            return None
        verdict.update(allow=True, probe=True)
        return {**row, "probe_until": now + PROBE_LEASE}

    def success(self, key: str) -> None:
        """A call on ``key`` succeeded: a half-open breaker closes."""
        changed: dict[str, Any] = {}

        def change(row: Row | None) -> Row | None:
            if row is None:
                return None
            if row["state"] == "half_open":
                changed["closed"] = True
                return {"key": key, "state": "closed", "failures": [], "opened_at": None, "probe_until": None,
                        "successes": 1}
            return {**row, "successes": row.get("successes", 0) + 1}

        self._update(key, change)
        if changed:
            self.emit("breaker.closed", {"key": key})

    def failure(self, key: str, policy: BreakerPolicy, error_class: str) -> int:
        """A call on ``key`` failed with ``error_class``: count it, and open the breaker if due.

        Returns the successes the breaker had seen since its previous failure.
        """
        before: dict[str, int] = {}
        if error_class in NOT_COUNTED:
            return self.recent_successes(key)
        opened: dict[str, Any] = {}

        def change(row: Row | None) -> Row | None:
            now = self.clock()
            before["successes"] = int(row.get("successes", 0)) if row else 0
            row = row or {"key": key, "state": "closed", "failures": [], "opened_at": None, "probe_until": None,
                          "successes": 0}
            failures = [t for t in row["failures"] if now - t < policy.window] + [now]
            if row["state"] == "half_open" or (row["state"] == "closed" and len(failures) >= policy.failures):
                opened["failures"] = len(failures)
                return {**row, "state": "open", "failures": failures, "opened_at": now, "probe_until": None,
                        "successes": 0}
            return {**row, "failures": failures, "successes": 0}

        self._update(key, change)
        if opened:
            self.emit("breaker.opened", {"key": key, "failures": opened["failures"], "reset": policy.reset})
        return before.get("successes", 0)

    def recent_successes(self, key: str) -> int:
        """Successes on ``key`` since its last failure (adaptive backoff shortens with them)."""
        row = self._update(key, lambda r: None)
        return int(row.get("successes", 0)) if row else 0
