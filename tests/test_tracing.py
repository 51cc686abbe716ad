"""OpenTelemetry: a run and its tasks as spans (SDK in-memory exporter), and a real OTLP/HTTP export."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from openai_server import Reply, echo
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import goatclaw
from goatclaw.tracing import RunTracer, enabled

PIPELINE = """
version: 1
name: traced
tasks:
  first: {uses: echo, with: {value: 1}}
  flaky:
    uses: shell
    needs: [first]
    retry: {attempts: 2, delay: 10ms}
    with: {run: [sh, -c, "exit 3"]}
  never:
    uses: echo
    needs: [flaky]
    with: {value: 2}
"""


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_enabled_follows_the_standard_environment() -> None:
    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not enabled({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    assert not enabled({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})


def test_a_run_and_its_tasks_are_spans(write_pipeline: Callable[..., Path], spans) -> None:
    provider, exporter = spans
    bus = goatclaw.Bus()
    path = write_pipeline(PIPELINE)
    RunTracer(bus, {"first": "echo", "flaky": "shell", "never": "echo"}, provider)
    result = goatclaw.run(path, bus=bus)
    assert not result.ok
    by_name: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    run, = by_name["goatclaw.run"]
    tasks = {s.attributes["goatclaw.task"]: s for s in by_name["goatclaw.task"]}
    assert set(tasks) == {"first", "flaky", "never"}
    assert run.attributes["goatclaw.run_id"] == result.run_id and run.attributes["goatclaw.status"] == "failed"
    assert run.status.status_code is StatusCode.ERROR
    for span in tasks.values():
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time
    first, flaky, never = tasks["first"], tasks["flaky"], tasks["never"]
    assert first.attributes["goatclaw.plugin"] == "echo" and first.attributes["goatclaw.status"] == "succeeded"
    assert first.status.status_code is StatusCode.UNSET
    assert flaky.attributes["goatclaw.attempts"] == 2 and flaky.status.status_code is StatusCode.ERROR
    assert [e.name for e in flaky.events] == ["goatclaw.attempt_failed", "goatclaw.retrying", "goatclaw.attempt_failed"]
    assert never.attributes["goatclaw.status"] == "upstream_failed" and never.start_time == never.end_time


def test_llm_tasks_carry_tokens_cost_and_model(write_pipeline: Callable[..., Path], srv, spans) -> None:
    provider, exporter = spans
    path = write_pipeline(f"""
        version: 1
        tasks:
          ask:
            uses: llm
            with: {{model: openai/gpt-4o-mini, prompt: hi, api_base: {srv.api_base}, api_key: sk-test}}
        """)
    bus = goatclaw.Bus()
    RunTracer(bus, {"ask": "llm"}, provider)
    assert goatclaw.run(path, bus=bus).ok
    ask = next(s for s in exporter.get_finished_spans() if s.name == "goatclaw.task")
    assert ask.attributes["goatclaw.llm.models"] == ("openai/gpt-4o-mini",)
    assert ask.attributes["goatclaw.llm.prompt_tokens"] == 11 and ask.attributes["goatclaw.llm.completion_tokens"] == 7
    assert ask.attributes["goatclaw.llm.cost_usd"] > 0
    assert [e.name for e in ask.events] == ["goatclaw.llm.call"]


def test_model_fallbacks_are_span_events(write_pipeline: Callable[..., Path], srv, spans) -> None:
    provider, exporter = spans
    srv.respond = lambda body: Reply(status=503, error="down") if body["model"] == "primary" else echo(body)
    path = write_pipeline(f"""
        version: 1
        tasks:
          ask:
            uses: llm
            with: {{model: [openai/primary, openai/backup], prompt: hi, api_base: {srv.api_base}, api_key: sk-test}}
        """)
    bus = goatclaw.Bus()
    RunTracer(bus, {"ask": "llm"}, provider)
    assert goatclaw.run(path, bus=bus).ok
    ask = next(s for s in exporter.get_finished_spans() if s.name == "goatclaw.task")
    assert ask.attributes["goatclaw.llm.models"] == ("openai/backup",)
    assert ask.attributes["goatclaw.llm.fallbacks"] == 1 and ask.attributes["goatclaw.llm.calls"] == 1
    assert [e.name for e in ask.events] == ["goatclaw.llm.fallback", "goatclaw.llm.call"]
    hop = ask.events[0].attributes
    assert (hop["model"], hop["to"], hop["error_class"]) == ("openai/primary", "openai/backup", "server_error")


def _apply(path: Path, **otel: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **otel}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", str(path), "--output", "json"], env=env,
                          capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - began


ONE_TASK = "version: 1\nname: one\ntasks:\n  a: {uses: echo, with: {value: 1}}\n"


@pytest.mark.slow
def test_console_spans_go_to_stderr_not_into_json_output(write_pipeline: Callable[..., Path]) -> None:
    done, _ = _apply(write_pipeline(ONE_TASK), OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"  # one JSON document, nothing else
    assert '"name": "goatclaw.run"' in done.stderr and '"name": "goatclaw.task"' in done.stderr


@pytest.mark.slow
def test_a_dead_collector_costs_a_bounded_wait_and_one_warning(write_pipeline: Callable[..., Path]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_pipeline(ONE_TASK)
    _, plain = _apply(path)
    done, dead = _apply(path, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert dead - plain < 3.5, (plain, dead)  # the export timeout is 2 s; the old one retried for 7 s
    assert done.stderr.count("tracing: could not export spans") == 1, done.stderr
    assert "Transient error" not in done.stderr


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_goatclaw_apply_exports_spans_over_otlp_http(write_pipeline: Callable[..., Path]) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Collector.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = write_pipeline(PIPELINE)
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
               "OTEL_SERVICE_NAME": "goatclaw-test"}
        done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", str(path), "--output", "plain"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.bodies and all(p == "/v1/traces" for p, _ in _Collector.bodies)
    names, services = [], set()
    for _, body in _Collector.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            names += [s.name for ss in rs.scope_spans for s in ss.spans]
    assert services == {"goatclaw-test"}
    assert sorted(names) == ["goatclaw.run", "goatclaw.task", "goatclaw.task", "goatclaw.task"]


def test_tracing_is_not_imported_without_otel_settings(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(PIPELINE)
    code = (f"import sys, goatclaw; goatclaw.run({str(path)!r}); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
