"""OpenTelemetry tracing: each run and each task as a span, built from the run's events.

Off, and not imported, unless the standard OpenTelemetry environment says where spans
go (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER``) and ``OTEL_SDK_DISABLED`` is not ``true``; the ``otel`` extra
(the ``otel`` extra) brings the SDK and the OTLP/HTTP exporter.

A :class:`RunTracer` subscribes to a run's bus. The run is a span (``goatclaw.run``);
every task is a child span (``goatclaw.task``) from ``task.started`` to its end state,
with the attributes ``goatclaw.task``, ``goatclaw.plugin``, ``goatclaw.attempts``,
``goatclaw.status``, and for ``llm`` tasks ``goatclaw.llm.models``,
``goatclaw.llm.prompt_tokens``, ``goatclaw.llm.completion_tokens`` and
``goatclaw.llm.cost_usd``. Retries and LLM calls are span events. Span times are the
events' own times, so a span is exact even when the exporter runs behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from goatclaw.events import Bus, Event
from goatclaw.extras import install_line

__all__ = ["RunTracer", "attach", "enabled"]

log = logging.getLogger("goatclaw.tracing")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_TERMINAL = frozenset({"succeeded", "failed", "skipped", "cached", "upstream_failed", "cancelled", "stubbed"})
_provider: Any = None


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (without importing OpenTelemetry)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(name) for name in _ENDPOINTS)


def _default_provider() -> Any:
    """The process's SDK tracer provider: the one the application set, else one built from the environment."""
    global _provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    if _provider is None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "goatclaw")})
        _provider = TracerProvider(resource=resource)
        for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
            name = name.strip().lower()
            if name == "console":
                _provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            elif name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name:
                log.warning("OTEL_TRACES_EXPORTER=%s is not supported by goatclaw (use otlp or console)", name)
    return _provider


class RunTracer:
    """Turns one run's events into spans on ``provider`` (an SDK ``TracerProvider``)."""

    def __init__(self, bus: Bus, plugins: Mapping[str, str], provider: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.provider = provider if provider is not None else _default_provider()
        self.tracer = self.provider.get_tracer("goatclaw")
        self.plugins = dict(plugins)
        self.run: Any = None
        self.tasks: dict[str, Any] = {}
        self.llm: dict[str, dict[str, Any]] = {}
        self._off = [bus.subscribe("run.*", self._on_run), bus.subscribe("task.*", self._on_task),
                     bus.subscribe("llm.call", self._on_llm)]

    @staticmethod
    def _ns(ev: Event) -> int:
        return int(ev.ts * 1e9)

    def _on_run(self, ev: Event) -> None:
        state = ev.topic.split(".", 1)[1]
        if state in ("started", "resumed"):
            self.run = self.tracer.start_span(
                "goatclaw.run", start_time=self._ns(ev),
                attributes={"goatclaw.run_id": ev.run_id, "goatclaw.pipeline": str(ev.data.get("pipeline", "")),
                            "goatclaw.resumed": state == "resumed"})
            return
        if self.run is None:
            return
        for task_id in list(self.tasks):  # a span still open when the run ends: the run cut it off
            self._end_task(task_id, "cancelled", ev, {})
        self.run.set_attribute("goatclaw.status", state)
        counts = ev.data.get("counts") or {}
        for key, value in counts.items():
            self.run.set_attribute(f"goatclaw.tasks.{key}", int(value))
        if state != "succeeded":
            self.run.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(ev.data.get("error") or state)))
        self.run.end(end_time=self._ns(ev))
        self.run = None
        self.close()
        self.provider.force_flush()

    def _on_task(self, ev: Event) -> None:
        if ev.task is None or self.run is None:
            return
        state = ev.topic.split(".", 1)[1]
        if state == "started":
            self._start_task(ev.task, ev)
        elif state in _TERMINAL:
            if ev.task not in self.tasks:  # never ran (skipped, cached …): a span of no length
                self._start_task(ev.task, ev)
            self._end_task(ev.task, state, ev, ev.data)
        elif ev.task in self.tasks and state in ("retrying", "attempt_failed", "fallback", "fix"):
            attrs = {k: v for k, v in ev.data.items() if isinstance(v, (str, int, float, bool))}
            self.tasks[ev.task].add_event(f"goatclaw.{state}", attributes=attrs, timestamp=self._ns(ev))

    def _start_task(self, task_id: str, ev: Event) -> None:
        context = self._trace.set_span_in_context(self.run)
        self.tasks[task_id] = self.tracer.start_span(
            "goatclaw.task", context=context, start_time=self._ns(ev),
            attributes={"goatclaw.task": task_id, "goatclaw.plugin": self.plugins.get(task_id, ""),
                        "goatclaw.run_id": ev.run_id})

    def _end_task(self, task_id: str, state: str, ev: Event, data: Mapping[str, Any]) -> None:
        span = self.tasks.pop(task_id)
        span.set_attribute("goatclaw.status", state)
        if data.get("attempts") is not None:
            span.set_attribute("goatclaw.attempts", int(data["attempts"]))
        llm = self.llm.pop(task_id, None)
        if llm:
            span.set_attribute("goatclaw.llm.models", sorted(llm["models"]))
            for key in ("prompt_tokens", "completion_tokens", "calls"):
                span.set_attribute(f"goatclaw.llm.{key}", llm[key])
            span.set_attribute("goatclaw.llm.cost_usd", llm["cost_usd"])
        if state in ("failed", "upstream_failed", "cancelled"):
            message = str(data.get("error") or state)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
            if data.get("error_class"):
                span.set_attribute("goatclaw.error_class", str(data["error_class"]))
        span.end(end_time=self._ns(ev))

    def _on_llm(self, ev: Event) -> None:
        if ev.task is None:
            return
        acc = self.llm.setdefault(ev.task, {"models": set(), "prompt_tokens": 0, "completion_tokens": 0,
                                            "calls": 0, "cost_usd": 0.0})
        usage = ev.data.get("usage") or {}
        acc["models"].add(str(ev.data.get("model")))
        acc["calls"] += 1
        acc["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
        acc["completion_tokens"] += int(usage.get("completion_tokens") or 0)
        acc["cost_usd"] += float(ev.data.get("cost_usd") or 0.0)
        span = self.tasks.get(ev.task)
        if span is not None:
            span.add_event("goatclaw.llm.call", timestamp=self._ns(ev),
                           attributes={"model": str(ev.data.get("model")), "source": str(ev.data.get("source", "")),
                                       "cost_usd": float(ev.data.get("cost_usd") or 0.0)})

    def close(self) -> None:
        """Stop listening to the bus."""
        for off in self._off:
            off()
        self._off = []


def attach(bus: Bus, plugins: Mapping[str, str]) -> RunTracer | None:
    """A tracer on ``bus`` when the environment asks for traces; ``None`` otherwise.

    Without the ``otel`` extra installed, a warning says so and the run goes on untraced.
    """
    if not enabled():
        return None
    try:
        return RunTracer(bus, plugins)
    except ImportError as exc:
        log.warning("tracing: OTEL_* is set but OpenTelemetry is not installed (%s): %s", install_line("otel"), exc)
        return None
