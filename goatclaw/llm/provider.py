"""The provider border: the one module that imports litellm, and only when a model is called.

litellm is imported in a thread of its own (:func:`preload`, awaited with :func:`ready`),
so the event loop runs on meanwhile. Every litellm error is translated here, and only
here, into a :class:`TaskError` whose ``error_class`` the engine's retry policies
understand (``rate_limit`` with the server's ``Retry-After``, ``server_error``,
``timeout``, ``connection``, ``auth``, ``context_length``, ``invalid_input``). Token
counts and prices come from litellm's local price map.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from goatclaw.errors import TaskError
from goatclaw.llm.request import Emit, Request

__all__ = ["IMPORT_POLL_SECONDS", "STREAM_EVERY_SECONDS", "STREAM_TAIL_CHARS", "UNKNOWN_OUTPUT_LIMIT", "embed",
           "lacks", "model_entry", "preload", "price", "ready"]


def _litellm() -> Any:
    """litellm, imported on first use with the bundled price map and its own retries off (blocking).

    Code on an event loop awaits :func:`ready` instead: the import takes seconds.
    """
    if "litellm" not in sys.modules:
        # the bundled price list: importing litellm must not reach for the network
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.num_retries = 0  # goatclaw's retry policies decide, not litellm's
    litellm.suppress_debug_info = True  # no "Give Feedback" banner on stdout
    litellm.telemetry = False
    return litellm


_IMPORT: concurrent.futures.Future[Any] | None = None
_IMPORT_LOCK = threading.Lock()
#: litellm once the import thread has finished importing it: :func:`ready`'s answer without the future's locks.
_LOADED: Any = None

#: How often :func:`ready` looks whether the import thread is done (the loop stays free meanwhile).
IMPORT_POLL_SECONDS = 0.005


def preload() -> concurrent.futures.Future[Any]:
    """Start importing litellm in a thread of its own (once per process); the future gives the module.

    ``goatclaw.arun`` calls it (through :func:`warm`) as soon as a run's plan holds an
    ``llm`` task, so the import (about 2 s) overlaps with the run's other tasks.
    """
    global _IMPORT
    with _IMPORT_LOCK:
        if _IMPORT is None:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # it cannot be cancelled: the import runs to its end

            def work() -> None:
                try:
                    litellm = _litellm()
                    _first_call(litellm)
                    future.set_result(litellm)
                except BaseException as exc:  # an ImportError (the llm extra is missing) is the caller's to see
                    future.set_exception(exc)

            # not a daemon: an interpreter must not exit in the middle of an import
            threading.Thread(target=work, name="goatclaw-import-litellm").start()
            _IMPORT = future
        return _IMPORT


def _first_call(litellm: Any) -> None:
    """Run one offline call (litellm's ``mock_response``) so a task's first real call costs no imports.

    litellm loads about 70 more modules on its first completion (provider configs, logging
    and proxy types: 0.5 s here, several seconds on a loaded machine); done in the import
    thread, no task timeout counts them. Nothing leaves the process.
    """
    with contextlib.suppress(Exception):
        litellm.completion(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "warm-up"}],
                           mock_response="ok", api_key="sk-goatclaw-warm-up")
        import litellm._service_logger  # the first async call imports it too


async def ready() -> Any:
    """litellm, imported off the event loop: the loop keeps running other tasks meanwhile.

    Polls the import thread's future rather than chaining a callback to it, so that a
    cancelled caller (or a loop that closes first) leaves nothing behind.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    future = preload()
    while not future.done():
        await asyncio.sleep(IMPORT_POLL_SECONDS)
    _LOADED = future.result()
    return _LOADED


def _imported() -> Any:
    """Litellm if it is imported completely (not while the import thread is still at it), else ``None``."""
    if _IMPORT is not None:
        return _IMPORT.result() if _IMPORT.done() and _IMPORT.exception() is None else None
    return sys.modules.get("litellm")


async def _close_litellm_clients() -> None:
    """Close and forget litellm's cached HTTP clients: they belong to the loop that is ending."""
    litellm = _imported()
    if litellm is None:
        return
    with contextlib.suppress(Exception):
        from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

        await close_litellm_async_clients()
    with contextlib.suppress(Exception):
        litellm.in_memory_llm_clients_cache.flush_cache()


async def _call(model: str, request: Request, endpoint: tuple[str | None, str | None], *,
                on_text: Callable[[str, bool], None] | None = None) -> Any:
    """One ``acompletion`` (streamed with ``request.stream``), with litellm's errors translated into goatclaw's.

    ``endpoint`` is the ``(api_base, api_key)`` the call uses (``goatclaw.llm.endpoint``).
    """
    litellm = _LOADED or await ready()
    kwargs: dict[str, Any] = {"model": model, "messages": [dict(m) for m in request.messages],
                              "num_retries": 0, "max_retries": 0}
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    if request.timeout is not None:
        kwargs["timeout"] = request.timeout
    api_base, api_key = endpoint
    if api_base is not None:
        kwargs["api_base"] = api_base
    if api_key is not None:
        kwargs["api_key"] = api_key
    if request.output == "json" and request.response_schema is not None and _supports_schema(litellm, model):
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": dict(request.response_schema), "strict": False}}
    elif request.output == "json" and _supports_json_mode(litellm, model):
        kwargs["response_format"] = {"type": "json_object"}
    if request.tools:
        kwargs["tools"] = [dict(t) for t in request.tools]
    try:
        call = _streamed(litellm, kwargs, on_text) if request.stream else litellm.acompletion(**kwargs)
        if request.timeout is None:
            return await call
        # litellm's own timeout bounds the HTTP request; this bounds everything around it
        return await asyncio.wait_for(call, request.timeout + 5)
    except TimeoutError:
        raise TaskError(f"{model}: no answer within {request.timeout:g}s", error_class="timeout") from None
    except Exception as exc:
        raise _translate(exc, model) from exc


#: How often a streamed answer's text so far is published, and how much of its end is shown.
STREAM_EVERY_SECONDS = 0.1
STREAM_TAIL_CHARS = 80


def _progress(emit: Emit) -> Callable[[str, bool], None]:
    """``on_text(text, final)``: publish the end of a streamed answer as ``task.progress``, at most every 0.1 s."""
    last = 0.0

    def on_text(text: str, final: bool) -> None:
        nonlocal last
        now = time.monotonic()
        if not final and now - last < STREAM_EVERY_SECONDS:
            return
        last = now
        tail = " ".join(text[-STREAM_TAIL_CHARS * 2:].split())[-STREAM_TAIL_CHARS:]
        emit("task.progress", message=("…" if len(text) > len(tail) else "") + tail, chars=len(text),
             streaming=not final)

    return on_text


async def _streamed(litellm: Any, kwargs: dict[str, Any], on_text: Callable[[str, bool], None] | None) -> Any:
    """A streamed ``acompletion``: the text so far to ``on_text`` as it arrives, then the whole response.

    The chunks are put back together by litellm's ``stream_chunk_builder``, with the usage
    the provider sends last (``stream_options.include_usage``), so the answer, its usage and
    its cost are the same as without streaming.
    """
    stream = await litellm.acompletion(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = []
    text = ""
    async for chunk in stream:
        chunks.append(chunk)
        choices = getattr(chunk, "choices", None) or []
        delta = getattr(getattr(choices[0], "delta", None), "content", None) if choices else None
        if delta:
            text += delta
            if on_text is not None:
                on_text(text, False)
    if on_text is not None and text:
        on_text(text, True)
    return litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])


def _supports_json_mode(litellm: Any, model: str) -> bool:
    """Whether ``model`` takes ``response_format: json_object`` (unknown OpenAI-style models: yes)."""
    try:
        params = litellm.get_supported_openai_params(model=model) or []
    except Exception:
        return False
    return "response_format" in params


def _supports_schema(litellm: Any, model: str) -> bool:
    """Whether litellm says ``model`` takes ``response_format: json_schema`` (structured output)."""
    try:
        return bool(litellm.supports_response_schema(model=model))
    except Exception:
        return False


_CLASSES = (  # litellm exception name → goatclaw error class; the first match in the MRO wins
    ("ContextWindowExceededError", "context_length"),
    ("RateLimitError", "rate_limit"),
    ("Timeout", "timeout"),
    ("APITimeoutError", "timeout"),
    ("AuthenticationError", "auth"),
    ("PermissionDeniedError", "auth"),
    ("ServiceUnavailableError", "server_error"),
    ("InternalServerError", "server_error"),
    ("BadGatewayError", "server_error"),
    ("APIConnectionError", "connection"),
    ("NotFoundError", "invalid_input"),
    ("BadRequestError", "invalid_input"),
    ("UnprocessableEntityError", "invalid_input"),
    ("UnsupportedParamsError", "invalid_input"),
    ("ContentPolicyViolationError", "invalid_input"),
    ("APIError", "server_error"),
)


_STATUS_CLASSES = {401: "auth", 403: "auth", 408: "timeout", 429: "rate_limit", 400: "invalid_input",
                   404: "invalid_input", 413: "context_length", 422: "invalid_input"}


_CONTEXT_WORDS = ("context length", "context_length", "context window", "too many tokens", "maximum context")


def _translate(exc: BaseException, model: str) -> TaskError:
    """The goatclaw error for a litellm exception (the one border where they are translated)."""
    names = [c.__name__ for c in type(exc).__mro__]
    error_class = next((cls for name, cls in _CLASSES if name in names), "upstream")
    text = str(getattr(exc, "message", None) or exc)
    if error_class == "invalid_input" and any(w in text.lower() for w in _CONTEXT_WORDS):
        error_class = "context_length"
    if error_class == "server_error" and "missing credentials" in text.lower():
        error_class = "auth"  # the client refused to send a request without a key
    elif error_class == "server_error" and _is_connection_failure(exc):
        error_class = "connection"  # litellm reports a refused connection as an InternalServerError
    status = getattr(exc, "status_code", None)
    if error_class in ("server_error", "upstream") and isinstance(status, int):
        error_class = _STATUS_CLASSES.get(status, error_class)  # litellm's generic APIError keeps the status
    return TaskError(f"{model}: {_short(text)}", error_class=error_class, retry_after=_retry_after(exc),
                     details={"model": model, "status": status if isinstance(status, int) else None,
                              "litellm_error": type(exc).__name__})


def _is_connection_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if type(seen).__name__ in ("APIConnectionError", "ConnectError", "ClientConnectorError",
                                   "ConnectionRefusedError", "ServerDisconnectedError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return "connection error" in str(exc).lower()


def _short(text: str) -> str:
    """The message of a litellm error without its prefixes and help banners, on one line."""
    for prefix in ("litellm.", "OpenAIException - "):
        text = text.replace(prefix, "")
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from the response's ``Retry-After`` (or ``retry-after-ms``) header, if any."""
    headers: Any = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    if not headers:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return _http_date_delay(headers.get("retry-after"))


def _http_date_delay(value: Any) -> float | None:
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _answer_of(raw: Any, model: str, latency_ms: float) -> dict[str, Any]:
    """What is kept of a litellm response: text, usage, cost, the model that answered (and its tool calls)."""
    try:
        message = raw.choices[0].message
        text = message.content or ""
    except (AttributeError, IndexError, TypeError):
        raise TaskError(f"{model}: the response has no message", error_class="invalid_output") from None
    usage = _field(raw, "usage")
    counts = {"prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
              "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
              "total_tokens": int(getattr(usage, "total_tokens", 0) or 0)}
    answer = {"text": text, "usage": counts, "cost_usd": _response_cost(raw, model, counts),
              "model": model, "served_by": str(getattr(raw, "model", "") or model), "latency_ms": latency_ms}
    if getattr(message, "tool_calls", None):  # only then, so that answers without tools are kept as they always were
        answer["tool_calls"] = _tool_calls_of(message, model)
    return answer


def _field(obj: Any, name: str) -> Any:
    """``obj.name``, or ``None``; read straight from a pydantic model's private or extra values when it is one.

    A litellm response keeps ``usage`` among its extra values and ``_hidden_params`` among
    its private ones, where pydantic's ``__getattr__`` looks last (a microsecond each);
    anything else (another kind of response, a plain object) is read with ``getattr``.
    """
    if name not in getattr(obj, "__dict__", ()):
        for values in (getattr(obj, "__pydantic_private__", None), getattr(obj, "__pydantic_extra__", None)):
            if type(values) is dict and name in values:
                return values[name]
    return getattr(obj, name, None)


def _tool_calls_of(message: Any, model: str) -> list[dict[str, Any]]:
    """The message's tool calls as ``{id, name, arguments}`` (``arguments`` the model's JSON text)."""
    calls = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or ()):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        if not isinstance(name, str) or not name:
            raise TaskError(f"{model}: tool call {i} has no function name", error_class="invalid_output")
        arguments = getattr(function, "arguments", None)
        calls.append({"id": str(getattr(call, "id", None) or f"call_{i}"), "name": name,
                      "arguments": arguments if isinstance(arguments, str) else "{}"})
    return calls


def _response_cost(raw: Any, model: str, usage: Mapping[str, int]) -> float:
    """The cost litellm computed for the call, else the price map; 0 for a model it cannot price."""
    hidden = _field(raw, "_hidden_params") or {}
    cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
    if isinstance(cost, (int, float)) and math.isfinite(cost):
        return float(cost)
    return _cost(model, usage["prompt_tokens"], usage["completion_tokens"])


def _prompt_tokens(model: str, request: Request) -> int:
    litellm = _litellm()
    try:
        return int(litellm.token_counter(model=model, messages=[dict(m) for m in request.messages]))
    except Exception:  # an unknown tokenizer: about four characters a token
        return sum(len(str(m.get("content", ""))) for m in request.messages) // 4 + 1


#: The completion tokens assumed for a model the model map gives no output limit for.
UNKNOWN_OUTPUT_LIMIT = 4096


@functools.lru_cache(maxsize=256)
def _output_limit(model: str) -> int:
    """The most tokens ``model`` can answer with (litellm's model map), the worst case of a call without max_tokens.

    Asked once per model (litellm's ``get_model_info`` reads the map, and asks a local Ollama of its models).
    """
    litellm = _litellm()
    try:
        info = litellm.get_model_info(model=model)
    except Exception:  # a model the map does not know (it is unpriced too, so it costs 0)
        return UNKNOWN_OUTPUT_LIMIT
    limit = info.get("max_output_tokens") or info.get("max_tokens")
    return int(limit) if isinstance(limit, int) and limit > 0 else UNKNOWN_OUTPUT_LIMIT


def _cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Dollars for these tokens from litellm's price map; 0 for a model it does not price.

    A model priced flat by the token (see :func:`_flat_prices`) is priced from the two rates
    litellm gives it, the sums litellm's ``cost_per_token`` makes (which costs 0.1 ms a call:
    it reads the whole entry for tiers every time); any other asks litellm.
    """
    flat = _flat_prices(model)
    if flat is not None:
        return float(prompt_tokens * flat[0]) + float(completion_tokens * flat[1])
    litellm = _litellm()
    try:
        a, b = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return float(a) + float(b)
    except Exception:
        return 0.0


#: The price keys of an entry priced flat by the token: prompt and completion tokens cost their rate whatever the
#: count (the cached, batch, flex, priority, reasoning and web-search prices do not apply to a call counted in prompt
#: and completion tokens alone, as the budget's estimate and an unpriced response are).
_FLAT_KEYS = frozenset({f"{rate}{tier}" for rate in ("input_cost_per_token", "output_cost_per_token",
                                                     "cache_read_input_token_cost", "cache_creation_input_token_cost")
                        for tier in ("", "_batches", "_flex", "_priority")}
                       | {"output_cost_per_reasoning_token", "search_context_cost_per_query"})


@functools.lru_cache(maxsize=256)
def _flat_prices(model: str) -> tuple[float, float] | None:
    """``model``'s dollars per prompt and per completion token, as litellm prices one of each, if it is priced flat.

    Flat: its model-map entry holds no price but :data:`_FLAT_KEYS` (no tiers above a token
    count, no price per character, second or image). ``None`` otherwise, or when litellm
    cannot price it. Asked once per model: the map is litellm's bundled one, read at import.
    """
    entry = model_entry(model)
    if entry is None or any(("cost" in k or "tier" in k or "above" in k) and k not in _FLAT_KEYS for k in entry):
        return None
    litellm = _litellm()
    try:
        prompt = float(litellm.cost_per_token(model=model, prompt_tokens=1, completion_tokens=0)[0])
        completion = float(litellm.cost_per_token(model=model, prompt_tokens=0, completion_tokens=1)[1])
    except Exception:
        return None
    return prompt, completion


def _cost_or_none(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    litellm = _litellm()
    try:
        a, b = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return float(a) + float(b)
    except Exception:
        return None


def embed(model: str, texts: Sequence[str], *, api_base: str | None = None, api_key: str | None = None,
          timeout: float | None = None) -> list[list[float]]:
    """One vector per text from ``model``'s embedding endpoint (litellm's ``aembedding``).

    Synchronous (the memory embedders call it from plain code), on an event loop of its
    own whose litellm clients are closed before it returns; errors are translated
    like :func:`complete`'s into a :class:`TaskError` with a goatclaw error class.
    """
    if not isinstance(model, str) or not model:
        raise TaskError("embed: no model given", error_class="invalid_input")
    texts = [str(t) for t in texts]
    if not texts:
        return []
    kwargs: dict[str, Any] = {"model": model, "input": texts, "max_retries": 0}
    for name, value in (("api_base", api_base), ("api_key", api_key), ("timeout", timeout)):
        if value is not None:
            kwargs[name] = value
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # plain code: a loop of its own
        raw = asyncio.run(_aembed(model, kwargs))
    else:  # called inside a running loop (asyncio.run cannot nest): its own loop in a worker thread
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            raw = pool.submit(asyncio.run, _aembed(model, kwargs)).result()
    try:
        rows = sorted(raw.data, key=lambda d: int(d["index"] if isinstance(d, Mapping) else d.index))
        vectors = [[float(x) for x in (d["embedding"] if isinstance(d, Mapping) else d.embedding)] for d in rows]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise TaskError(f"{model}: the embedding response has no vectors", error_class="invalid_output") from None
    if len(vectors) != len(texts):
        raise TaskError(f"{model}: {len(vectors)} vectors for {len(texts)} texts", error_class="invalid_output")
    return vectors


async def _aembed(model: str, kwargs: dict[str, Any]) -> Any:
    """Call litellm's ``aembedding``, its errors translated; its clients closed with this loop."""
    litellm = _litellm()
    try:
        return await litellm.aembedding(**kwargs)
    except Exception as exc:
        raise _translate(exc, model) from exc
    finally:
        await _close_litellm_clients()



_MAP: dict[str, Any] | None = None


def _model_map() -> Mapping[str, Any]:
    """Litellm's model map: litellm's own when it is imported, else its bundled JSON (read, litellm not imported).

    ``goatclaw validate`` routes by capability without paying for litellm's import (2 s).
    """
    global _MAP
    litellm = _imported()
    if litellm is not None:
        return litellm.model_cost
    if _MAP is None:
        import importlib.util
        import json
        from pathlib import Path

        spec = importlib.util.find_spec("litellm")
        folder = Path(next(iter(spec.submodule_search_locations or ()), "")) if spec is not None else None
        path = folder / "model_prices_and_context_window_backup.json" if folder is not None else None
        try:
            _MAP = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
        except (OSError, ValueError):
            _MAP = {}
    return _MAP


def model_entry(model: str) -> Mapping[str, Any] | None:
    """``model``'s entry in litellm's model map (``openai/gpt-4o`` is ``gpt-4o`` of provider openai), or ``None``.

    Never asks a server (litellm's ``get_model_info`` asks a local Ollama): a model the map
    does not know is unknown, and routing tries it.
    """
    found = _model_map()
    entry = found.get(model)
    if entry is None and "/" in model:
        provider, rest = model.split("/", 1)
        candidate = found.get(rest)
        if isinstance(candidate, Mapping) and candidate.get("litellm_provider") == provider:
            entry = candidate
    return entry if isinstance(entry, Mapping) and entry.get("mode") in (None, "chat", "completion",
                                                                          "responses") else None


def lacks(model: str, needs: Mapping[str, Any], prompt_tokens: int | None = None) -> list[str]:
    """What of ``needs`` (``tools``, ``vision``, ``json_mode``) ``model`` lacks, by its model-map entry.

    ``context`` is lacking when ``prompt_tokens`` is over the model's ``max_input_tokens``.
    An unknown model lacks nothing (it is tried); JSON mode is asked of litellm's
    supported parameters when litellm is imported (the map does not say it; ``goatclaw
    validate``, which does not import litellm, leaves it to the run).
    """
    entry = model_entry(model)
    if entry is None:
        return []
    missing = []
    if needs.get("tools") and not entry.get("supports_function_calling"):
        missing.append("tools")
    if needs.get("vision") and not entry.get("supports_vision"):
        missing.append("vision")
    if needs.get("json_mode") and _imported() is not None and not _json_mode(model):
        missing.append("json_mode")
    limit = entry.get("max_input_tokens")
    if prompt_tokens is not None and isinstance(limit, int) and 0 < limit < prompt_tokens:
        missing.append("context")
    return missing


@functools.lru_cache(maxsize=256)
def _json_mode(model: str) -> bool:
    """Whether ``model`` takes JSON mode (litellm's supported parameters, ~50 µs to ask: asked once per model)."""
    return _supports_json_mode(_litellm(), model)


def price(model: str, usage: Mapping[str, Any]) -> float:
    """What ``usage`` (prompt and completion tokens) costs at ``model``'s prices in the model map; 0 unpriced."""
    entry = model_entry(model) or {}
    prompt = float(entry.get("input_cost_per_token") or 0.0)
    completion = float(entry.get("output_cost_per_token") or 0.0)
    return int(usage.get("prompt_tokens") or 0) * prompt + int(usage.get("completion_tokens") or 0) * completion
