"""A real local HTTP server speaking the OpenAI chat completions API, scripted per test.

``FakeOpenAI`` listens on ``127.0.0.1`` (a free port) in a thread. Every POST to
``/v1/chat/completions`` is recorded in ``requests`` and answered by ``respond(body)``,
which returns a :class:`Reply` (default: an answer echoing the last user message).
``/v1/embeddings`` is answered with deterministic vectors (:func:`vector`).
A reply may call tools (``Reply(tool_calls=[tool_call("slugify", {"text": "Hi"})])``): the
message carries ``tool_calls`` and the finish reason is ``tool_calls``, streamed too (the
arguments in pieces, as the OpenAI API sends them); the request's ``tools`` are in
``requests`` like everything else it sent.
Used by tests/test_llm.py and to record the cassette of pipelines/llm-digest.yaml.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: a chat completion ``content`` (and ``tool_calls``), or an HTTP error, or a hang."""

    content: str | None = "ok"
    #: Tool calls of the answer (:func:`tool_call`); with any, the finish reason is ``tool_calls``.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = "error"
    hang: float = 0.0
    prompt_tokens: int = 11
    completion_tokens: int = 7
    #: With ``"stream": true`` in the request: the content is sent in pieces this many characters
    #: long, ``chunk_delay`` seconds apart, as server-sent events.
    chunk_chars: int = 4
    chunk_delay: float = 0.0


_CALL_IDS = itertools.count(1)


def tool_call(name: str, arguments: dict[str, Any] | str, id: str | None = None) -> dict[str, Any]:
    """One tool call as the OpenAI API puts it in a message (``arguments`` a JSON text; a str is sent as is)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id or f"call_{next(_CALL_IDS)}", "type": "function", "function": {"name": name, "arguments": text}}


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results a request carries, in order."""
    return [m for m in body["messages"] if m.get("role") == "tool"]


def scripted(*turns: Reply | Callable[[dict[str, Any]], Reply]) -> Callable[[dict[str, Any]], Reply]:
    """A scripted model: the n-th request (counted by the assistant turns it carries) gets the n-th turn."""

    def respond(body: dict[str, Any]) -> Reply:
        n = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        turn = turns[min(n, len(turns) - 1)]
        return turn(body) if callable(turn) else turn

    return respond


def final(body: dict[str, Any]) -> Reply:
    """The last turn: an answer that repeats what the tools returned."""
    return Reply("results: " + " | ".join(m["content"] for m in tool_messages(body)))


def completion_body(model: str, content: str | None, prompt_tokens: int, completion_tokens: int,
                    tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A chat completion response as the OpenAI API returns it (``content`` is null beside tool calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_local",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


EMBED_DIM = 8


def vector(text: str) -> list[float]:
    """A deterministic ``EMBED_DIM``-long vector for ``text`` (bytes of its sha256, centred)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 127.5) / 127.5 for b in digest[:EMBED_DIM]]


def embedding_body(model: str, inputs: Any) -> dict[str, Any]:
    """An embeddings response as the OpenAI API returns it (``POST /v1/embeddings``)."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    data = [{"object": "embedding", "index": i, "embedding": vector(str(t))} for i, t in enumerate(texts)]
    tokens = sum(len(str(t)) // 4 + 1 for t in texts)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def echo(body: dict[str, Any]) -> Reply:
    """The default answer: ``echo: <last user message>``."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return Reply(f"echo: {users[-1]['content'] if users else ''}")


def _tool_call_deltas(calls: list[dict[str, Any]], chunk_chars: int) -> list[dict[str, Any]]:
    """Streamed tool calls: per call its id, type and name first, then its arguments in pieces."""
    deltas = []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append({"index": index, "id": call["id"], "type": "function",
                       "function": {"name": function["name"], "arguments": ""}})
        text = function["arguments"]
        step = max(1, chunk_chars)
        deltas += [{"index": index, "function": {"arguments": text[i:i + step]}} for i in range(0, len(text), step)]
    return deltas


class FakeOpenAI:
    """The server; ``with FakeOpenAI() as srv:`` starts and stops it. ``srv.api_base`` for litellm."""

    def __init__(self, respond: Callable[[dict[str, Any]], Reply] = echo) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out as two writes: with Nagle's algorithm on, the body waits for the
            # client's delayed ACK of the headers (~40 ms a call on a kept-alive connection)
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append(body)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.rstrip("/").endswith("/embeddings"):
                    return self._send(200, embedding_body(body.get("model", "?"), body.get("input", [])), {})
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}, {})
                reply = outer.respond(body)
                if reply.hang:
                    outer._stop.wait(reply.hang)
                    return None
                if reply.status != 200:
                    err = {"error": {"message": reply.error, "type": "server_error", "code": str(reply.status)}}
                    return self._send(reply.status, err, reply.headers)
                if body.get("stream"):
                    return self._stream(body, reply)
                content = reply.content if reply.tool_calls else reply.content or ""
                return self._send(200, completion_body(body.get("model", "?"), content, reply.prompt_tokens,
                                                       reply.completion_tokens, reply.tool_calls), reply.headers)

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                """The answer as server-sent events, as the OpenAI API streams it (usage last, if asked)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion.chunk",
                        "created": int(time.time()), "model": body.get("model", "?"), "system_fingerprint": "fp_local"}
                content = reply.content or ""
                pieces = [content[i:i + reply.chunk_chars] for i in range(0, len(content), reply.chunk_chars)]
                events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]}]
                events += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                           for p in pieces]
                events += [{**base, "choices": [{"index": 0, "delta": {"tool_calls": [d]}, "finish_reason": None}]}
                           for d in _tool_call_deltas(reply.tool_calls, reply.chunk_chars)]
                finish = "tool_calls" if reply.tool_calls else "stop"
                events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append({**base, "choices": [], "usage": {
                        "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens}})
                try:
                    for event in events:
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        """The base URL to give litellm (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release any hanging request."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    """A thread per connection, and a listen backlog for 100 clients connecting at once (the default is 5)."""

    daemon_threads = True
    request_queue_size = 256


def tool_caller(calls: int) -> Callable[[dict[str, Any]], Reply]:
    """A model that first calls the ``echo`` tool ``calls`` times at once, then answers with what it got back."""

    def respond(body: dict[str, Any]) -> Reply:
        messages = body.get("messages", [])
        if messages and messages[-1].get("role") == "tool":
            return Reply("done: " + str(sum(1 for m in messages if m.get("role") == "tool")))
        return Reply(None, tool_calls=[tool_call("echo", {"value": i}) for i in range(calls)])

    return respond


if __name__ == "__main__":  # a server to point a pipeline at by hand; --tool-calls N: a model that calls tools;
    import sys  # --reply FILE: a model that answers every request with the text of FILE

    n = int(sys.argv[sys.argv.index("--tool-calls") + 1]) if "--tool-calls" in sys.argv else 0
    from pathlib import Path

    fixed = Path(sys.argv[sys.argv.index("--reply") + 1]).read_text() if "--reply" in sys.argv else None
    with FakeOpenAI((lambda body: Reply(fixed)) if fixed is not None else tool_caller(n) if n else echo) as srv:
        print(srv.api_base, flush=True)
        threading.Event().wait()
