"""Tools on the ``llm`` task, against the real local OpenAI server (tests/openai_server.py) through litellm.

The server speaks tool calls (``tools`` in the request, ``tool_calls`` in the reply, streamed
too); nothing of litellm is mocked, and every tool call runs as an attempt of the task.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply, tool_call

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
