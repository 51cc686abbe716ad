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
``goatclaw.llm.cost_usd``, ``goatclaw.llm.fallbacks``. Retries, LLM calls and model
fallbacks (``goatclaw.llm.fallback``) are span events. Span times are the events' own
times, so a span is exact even when the exporter runs behind.

What a task logs (goatclaw.engine.tasklogs: its log records, a shell task's stderr lines,
warnings; secrets masked) is exported as OpenTelemetry log records in the task span's
context (its trace and span id), with the attributes ``goatclaw.run_id``, ``goatclaw.task``,
``goatclaw.attempt``, ``goatclaw.item`` and ``goatclaw.source``, through the SDK logger
provider the application set, else one built from ``OTEL_LOGS_EXPORTER`` (``otlp`` by
default, ``console``, ``none``). The SDK's logs API is still marked experimental
(``opentelemetry.sdk._logs``); without it the spans are exported and the log records not.

The console exporter writes to stderr (stdout stays the command's own output). The OTLP
exporter waits at most :data:`EXPORT_TIMEOUT` seconds unless ``OTEL_EXPORTER_OTLP_TIMEOUT``
or ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` says otherwise; a collector that cannot be reached
is warned about once (stderr), and spans are dropped for :data:`QUIET_SECONDS` before the
next try, so a dead collector costs a command one bounded wait.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from goatclaw.events import Bus, Event
from goatclaw.extras import install_line

__all__ = ["RunTracer", "attach", "enabled"]

log = logging.getLogger("goatclaw.tracing")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_TERMINAL = frozenset({"succeeded", "failed", "skipped", "cached", "upstream_failed", "cancelled", "stubbed",
                       "waiting"})  # waiting: at an approval; the resumed run has spans of its own
_provider: Any = None
_log_provider: Any = None
#: The bus topic of a task's log line (goatclaw.engine.tasklogs.TOPIC; this room does not import the engine).
_LOG_TOPIC = "log.task"
#: logging level numbers -> OTel severity numbers (DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21).
_SEVERITY = ((50, 21, "FATAL"), (40, 17, "ERROR"), (30, 13, "WARN"), (20, 9, "INFO"), (0, 5, "DEBUG"))
_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
#: Seconds one OTLP export may take (retries included) when the environment sets no timeout.
EXPORT_TIMEOUT = 2.0
#: Seconds spans are dropped, without trying, after an export failed.
QUIET_SECONDS = 60.0


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
            if name == "console":  # stderr: stdout is the command's output (apply --output json)
                _provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
            elif name == "otlp":
                _provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
            elif name:
                log.warning("OTEL_TRACES_EXPORTER=%s is not supported by goatclaw (use otlp or console)", name)
    return _provider


def _default_log_provider() -> Any:
    """The process's SDK logger provider: the application's, else one from ``OTEL_LOGS_EXPORTER``; ``None``: off."""
    global _log_provider
    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
    from opentelemetry.sdk.resources import Resource

    current = _logs.get_logger_provider()
    if isinstance(current, LoggerProvider):
        return current
    names = [n.strip().lower() for n in (os.environ.get("OTEL_LOGS_EXPORTER") or "otlp").split(",") if n.strip()]
    if names == ["none"]:
        return None
    if _log_provider is None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "goatclaw")})
        _log_provider = LoggerProvider(resource=resource)
        for name in names:
            if name == "console":
                _log_provider.add_log_record_processor(BatchLogRecordProcessor(ConsoleLogRecordExporter(out=sys.stderr)))
            elif name == "otlp":
                from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

                timeout = None if any(os.environ.get(n) for n in _TIMEOUTS) else EXPORT_TIMEOUT
                _log_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(timeout=timeout)))
            else:
                log.warning("OTEL_LOGS_EXPORTER=%s is not supported by goatclaw (use otlp or console)", name)
    return _log_provider


def _otlp_exporter() -> Any:
    """The OTLP/HTTP exporter, with a bounded timeout, failures warned about once."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    timeout = None if any(os.environ.get(name) for name in _TIMEOUTS) else EXPORT_TIMEOUT
    inner = OTLPSpanExporter(timeout=timeout)
    # the exporter logs every retry; goatclaw says it once, below
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)

    class Guarded(SpanExporter):  # type: ignore[misc]
        """``inner``, skipped for a while after a failure; the first failure is a warning."""

        warned = False
        quiet_until = 0.0

        def export(self, spans: Any) -> Any:
            if time.monotonic() < self.quiet_until:
                return SpanExportResult.FAILURE
            try:
                result = inner.export(spans)
            except Exception as exc:  # a broken exporter must not break a run
                log.debug("tracing: export raised", exc_info=exc)
                result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                self.quiet_until = time.monotonic() + QUIET_SECONDS
                if not self.warned:
                    self.warned = True
                    endpoint = getattr(inner, "_endpoint", "the OTLP endpoint")
                    log.warning("tracing: could not export spans to %s; spans are dropped while it is unreachable",
                                endpoint)
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(inner.force_flush(timeout_millis))

    return Guarded()


class RunTracer:
    """Turns one run's events into spans on ``provider`` (an SDK ``TracerProvider``)."""

    def __init__(self, bus: Bus, plugins: Mapping[str, str], provider: Any = None, log_provider: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.provider = provider if provider is not None else _default_provider()
        self.tracer = self.provider.get_tracer("goatclaw")
        self.log_provider = log_provider if log_provider is not None else _logs_or_none(provider is None)
        self.logger = None if self.log_provider is None else self.log_provider.get_logger("goatclaw")
        self.plugins = dict(plugins)
        self.run: Any = None
        self.tasks: dict[str, Any] = {}
        self.llm: dict[str, dict[str, Any]] = {}
        self._off = [bus.subscribe("run.*", self._on_run), bus.subscribe("task.*", self._on_task),
                     bus.subscribe("llm.call", self._on_llm), bus.subscribe("llm.fallback", self._on_fallback)]
        if self.logger is not None:
            self._off.append(bus.subscribe(_LOG_TOPIC, self._on_log))

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
        if self.log_provider is not None:
            self.log_provider.force_flush()

    def _on_log(self, ev: Event) -> None:
        """A task's log line: an OTel log record in its span's context (the run's, once the span has ended)."""
        span = self.tasks.get(ev.task or "") or self.run
        if span is None or self.logger is None:
            return
        from opentelemetry._logs import LogRecord, SeverityNumber

        level = int(ev.data.get("level") or 20)
        number, text = next((n, t) for floor, n, t in _SEVERITY if level >= floor)
        attrs = {"goatclaw.run_id": ev.run_id, "goatclaw.task": ev.task or "",
                 "goatclaw.attempt": int(ev.data.get("attempt") or 1), "goatclaw.source": str(ev.data.get("source"))}
        if ev.data.get("item") is not None:
            attrs["goatclaw.item"] = int(ev.data["item"])
        self.logger.emit(LogRecord(timestamp=self._ns(ev), context=self._trace.set_span_in_context(span),
                                   severity_number=SeverityNumber(number), severity_text=text,
                                   body=str(ev.data.get("message", "")), attributes=attrs))

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
            for key in ("prompt_tokens", "completion_tokens", "calls", "fallbacks"):
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
        acc = self._acc(ev.task)
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

    def _acc(self, task_id: str) -> dict[str, Any]:
        return self.llm.setdefault(task_id, {"models": set(), "prompt_tokens": 0, "completion_tokens": 0,
                                             "calls": 0, "fallbacks": 0, "cost_usd": 0.0})

    def _on_fallback(self, ev: Event) -> None:
        """A model that failed and the next one tried: a span event, counted in ``goatclaw.llm.fallbacks``."""
        if ev.task is None:
            return
        self._acc(ev.task)["fallbacks"] += 1
        span = self.tasks.get(ev.task)
        if span is not None:
            span.add_event("goatclaw.llm.fallback", timestamp=self._ns(ev),
                           attributes={k: str(ev.data.get(k) or "") for k in ("model", "to", "error_class", "message")})

    def close(self) -> None:
        """Stop listening to the bus."""
        for off in self._off:
            off()
        self._off = []


def _logs_or_none(from_environment: bool) -> Any:
    """The logger provider to export task logs to (the environment's, when spans go by it); ``None`` without one."""
    if not from_environment:
        return None  # a provider given by the caller (tests, embedding): logs only when a log provider is given too
    try:
        return _default_log_provider()
    except ImportError as exc:  # an SDK without the logs API: spans only
        log.warning("tracing: this OpenTelemetry SDK has no logs API; task logs are not exported (%s)", exc)
        return None


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
