"""Tools on the ``llm`` task, against the real local OpenAI server (tests/openai_server.py) through litellm.

The server speaks tool calls (``tools`` in the request, ``tool_calls`` in the reply, streamed
too); nothing of litellm is mocked, and every tool call runs as an attempt of the task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply, tool_call

import goatclaw
from goatclaw import llm as room

pytestmark = pytest.mark.slow

SLUGIFY = {"type": "function", "function": {"name": "slugify", "description": "a slug of a text", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import (seconds) once, outside the tests' task timeouts."""
    room._litellm()


# -- the server speaks tool calls ------------------------------------------------------------


def _ask_with_tools(srv: FakeOpenAI, *, stream: bool) -> Any:
    litellm = room._litellm()

    async def ask() -> Any:
        kwargs = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "slug these"}],
                  "tools": [SLUGIFY], "api_base": srv.api_base, "api_key": "sk-test"}
        try:
            if not stream:
                return await litellm.acompletion(**kwargs)
            chunks = [c async for c in await litellm.acompletion(**kwargs, stream=True)]
            return litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        finally:
            await room._close_litellm_clients()

    return asyncio.run(ask())


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_answers_with_tool_calls_that_litellm_reads(srv: FakeOpenAI, stream: bool) -> None:
    srv.respond = lambda body: Reply(None, tool_calls=[tool_call("slugify", {"text": "Hello World"}, id="c1"),
                                                       tool_call("slugify", {"text": "Ünïcode ok"}, id="c2")],
                                     chunk_chars=3)
    raw = _ask_with_tools(srv, stream=stream)
    choice = raw.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [("c1", "slugify", {"text": "Hello World"}), ("c2", "slugify", {"text": "Ünïcode ok"})]
    assert srv.requests[0]["tools"] == [SLUGIFY]  # the request carried the tools


def test_a_reply_without_tool_calls_still_stops(srv: FakeOpenAI) -> None:
    srv.respond = lambda body: Reply("plain")
    raw = _ask_with_tools(srv, stream=False)
    assert raw.choices[0].finish_reason == "stop" and raw.choices[0].message.content == "plain"
    assert not raw.choices[0].message.tool_calls


# -- tools on the llm task ---------------------------------------------------------------------


def _tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


def _offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]


def agent(*turns: Reply | Callable[[dict[str, Any]], Reply]) -> Callable[[dict[str, Any]], Reply]:
    """A scripted model: the n-th request (counted by the tool results it carries) gets the n-th turn."""

    def respond(body: dict[str, Any]) -> Reply:
        assistant_turns = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        turn = turns[min(assistant_turns, len(turns) - 1)]
        return turn(body) if callable(turn) else turn

    return respond


def final(body: dict[str, Any]) -> Reply:
    """The last turn: an answer that repeats what the tools returned."""
    return Reply("results: " + " | ".join(m["content"] for m in _tool_messages(body)))


def tools_pipeline(write: Callable[..., Path], srv: FakeOpenAI, tools: list[dict[str, Any]], *, extra: str = "",
                   with_: str = "", tasks: str = "") -> Path:
    """An ``llm`` task ``ask`` with ``tools`` (written as JSON, which is YAML too)."""
    return write(f"""
        version: 1
        name: tools-test
        {extra}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: slug it
              {with_}
              tools: {json.dumps(tools)}
        {tasks}
        """)


def test_a_model_calls_a_plugin_tool_and_answers_with_its_result(write_pipeline, srv, store_path) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slug", {"text": "Hello World"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify", "name": "slug", "description": "Make a URL slug",
                                                 "with": {"separator": "_"}}])
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    out = result.tasks["ask"].output
    assert out["text"] == 'results: "hello_world"'  # the fixed separator was used
    first = srv.requests[0]
    assert first["tools"] == [{"type": "function", "function": {
        "name": "slug", "description": "Make a URL slug", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["text"],
            "properties": {"text": {"type": "string"}, "max_length": {"type": "integer", "default": 60}}}}}]
    turns = out["trajectory"]
    assert [t["turn"] for t in turns] == [1, 2]
    call = turns[0]["tool_calls"][0]
    assert (call["name"], call["arguments"], call["result"], call["error_class"]) == (
        "slug", {"text": "Hello World"}, '"hello_world"', None)
    assert call["duration_ms"] >= 0 and turns[1]["tool_calls"] == [] and turns[1]["text"] == out["text"]
    assert out["usage"]["total_tokens"] == 2 * 18  # both turns counted
    assert out["tools"] == {"offered": ["slug"], "refused": {}}
