"""Streaming answers: the text arrives in the live view as it is generated; the output is unchanged."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from openai_server import FakeOpenAI, Reply
from rich.console import Console

import goatclaw
from goatclaw.cli.render import LiveView
from goatclaw.events import Event

LONG = "Streaming keeps the user informed while a long answer is written, one small piece at a time. " * 3


def pipeline(write: Callable[..., Path], srv: FakeOpenAI, extra: str = "") -> Path:
    return write(f"""
        version: 1
        name: streamed
        tasks:
          ask:
            uses: llm
            with:
              model: openai/gpt-4o-mini
              prompt: Tell me about streaming
              api_base: {srv.api_base}
              api_key: sk-test
              stream: true
              {extra}
        """)


def test_a_streamed_answer_is_the_same_answer_with_progress_on_the_way(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(LONG, chunk_chars=8, chunk_delay=0.004)
    bus = goatclaw.Bus()
    progress: list[Event] = []
    bus.subscribe("task.progress", progress.append)
    result = goatclaw.run(pipeline(write_pipeline, srv), bus=bus, cache=False)
    assert result.ok, result.tasks["ask"].error
    out = result.tasks["ask"].output
    assert out["text"] == LONG
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert out["cost_usd"] > 0
    sent = srv.requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # throttled (not one event per chunk), growing, and the last one is the whole answer's end
    assert 2 <= len(progress) < len(LONG) // 8
    chars = [e.data["chars"] for e in progress]
    assert chars == sorted(chars) and chars[-1] == len(LONG)
    assert progress[-1].data["streaming"] is False and progress[0].data["streaming"] is True
    assert progress[-1].data["message"].endswith("one small piece at a time.")
    assert len(progress[-1].data["message"]) <= 81


def test_the_live_view_shows_the_text_as_it_arrives(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(LONG, chunk_chars=8, chunk_delay=0.004)
    bus = goatclaw.Bus()
    view = LiveView(bus, Console(file=io.StringIO(), width=120))
    notes: list[str] = []
    bus.subscribe("task.progress", lambda e: notes.append(view.notes.get("ask", "")))
    assert goatclaw.run(pipeline(write_pipeline, srv), bus=bus, cache=False).ok
    assert notes and all(n for n in notes)
    assert notes[-1].endswith("one small piece at a time.")


def test_streamed_json_is_parsed(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply('{"summary": "streams", "confidence": 0.9}', chunk_chars=3)
    result = goatclaw.run(pipeline(write_pipeline, srv, "output: json"), cache=False)
    assert result.ok, result.tasks["ask"].error
    assert result.tasks["ask"].output["data"] == {"summary": "streams", "confidence": 0.9}


def test_a_recorded_stream_replays_without_the_server(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(LONG, chunk_chars=16)
    path = pipeline(write_pipeline, srv)
    recorded = goatclaw.run(path, llm="record")
    assert recorded.ok, recorded.tasks["ask"].error
    asked = len(srv.requests)
    replayed = goatclaw.run(path, llm="replay")
    assert replayed.ok and replayed.tasks["ask"].output["text"] == LONG
    assert len(srv.requests) == asked  # the cassette answered
