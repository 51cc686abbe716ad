"""The one LLM room: the only module that imports litellm, and only when a model is called.

:func:`complete` sends one :class:`Request` through a chain of models (the primary,
then its fallbacks) and returns a :class:`Response`::

    request ─▶ for each model: key ─▶ replay? cassette ─▶ cache? store ─▶ budget ─▶ rate limit
                                     ─▶ litellm.acompletion ─▶ parse (text | json [+ schema])
                                     ─▶ cache put, cassette put ─▶ Response (hops, usage, cost)

Every litellm error is translated here, and only here, into a :class:`TaskError` whose
``error_class`` the engine's retry policies understand (``rate_limit`` with the server's
``Retry-After``, ``server_error``, ``timeout``, ``connection``, ``auth``,
``context_length``, ``invalid_input``; a reply that is not the JSON asked for is
``invalid_output``). A ``rate_limit``, ``server_error``, ``timeout`` or ``connection``
error moves on to the next model and is recorded as a *hop*; ``auth`` and
``invalid_input`` never do (another model will not fix a bad key or a bad request).

What a run shares (record/replay mode, the cassette, the cache, the budget, the rate
limiters) lives in one :class:`Session`, set for the duration of a run by
``goatclaw.arun`` through the context variable :data:`SESSION` (asyncio tasks inherit
it). Without one, calls are live, uncached and unbudgeted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from goatclaw.errors import TaskError
from goatclaw.security.ratelimit import SlidingWindow, shared_window
from goatclaw.security.secrets import Redactor
from goatclaw.userfile import read_bytes

__all__ = ["FALLBACK_ON", "MODES", "SESSION", "Cassette", "Endpoint", "RateLimiter", "Request", "Response", "Session",
           "complete", "embed", "endpoint", "estimate_costs", "preload", "ready", "request_key", "reusable", "session",
           "using", "warm"]

#: Error classes after which the next model in the chain is tried.
FALLBACK_ON = frozenset({"rate_limit", "server_error", "timeout", "connection"})
#: ``live`` calls models; ``record`` calls them and writes every answer to the cassette;
#: ``replay`` answers only from the cassette.
MODES = ("live", "record", "replay")
#: The largest cassette read (a regular file; a FIFO or device is refused).
MAX_CASSETTE_BYTES = 256 * 1024 * 1024
Emit = Callable[..., None]


@dataclass(frozen=True)
class Endpoint:
    """Where one model of a chain is served: its own ``api_base`` and key (``None``: the request's, or litellm's)."""

    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Request:
    """One LLM call: the model chain and everything that shapes the answer.

    ``models`` is the primary model then its fallbacks (litellm names such as
    ``openai/gpt-4o-mini``). ``output`` is ``text`` or ``json``; with ``json`` the reply
    is parsed (``NaN``/``Infinity`` rejected) and, when ``schema`` is given, validated.
    ``api_base``/``api_key``/``timeout`` shape the transport and never the cache key.
    """

    models: tuple[str, ...]
    messages: tuple[Mapping[str, Any], ...]
    temperature: float | None = None
    max_tokens: int | None = None
    output: Literal["text", "json"] = "text"
    schema: Mapping[str, Any] | None = None
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float | None = None
    #: Stream the answer: its text so far goes to the live view as it arrives (``task.progress``).
    stream: bool = False
    #: The answer cache for this request: ``True`` reuse (and keep) it whatever the temperature,
    #: ``False`` never, ``None`` the rule: only at ``temperature: 0`` (see :func:`reusable`).
    cache: bool | None = None
    #: How old a cached answer may be, in seconds (``None``: the session's ``cache_ttl``).
    cache_ttl: float | None = None
    #: Model name -> its own :class:`Endpoint` (a chain across servers: a local Ollama, then a hosted
    #: model). A model's own endpoint wins over ``api_base``/``api_key``; the session's entries
    #: (goatclaw.yaml) apply to models the request gives none for.
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)


@dataclass
class Response:
    """The answer: ``text``, ``data`` (parsed JSON, or ``None`` for text), and what it cost.

    ``model`` is the model that answered; ``hops`` the models that failed before it
    (``{model, error_class, message}``); ``source`` is ``live``, ``cache`` or ``cassette``
    (only a ``live`` answer costs anything: ``cost_usd`` is 0 otherwise).
    """

    text: str
    data: Any
    model: str
    usage: dict[str, int]
    cost_usd: float
    latency_ms: float
    hops: list[dict[str, Any]]
    source: str
    key: str

    def as_output(self) -> dict[str, Any]:
        """The JSON-serialisable form a task returns."""
        return {"text": self.text, "data": self.data, "model": self.model, "usage": self.usage,
                "cost_usd": self.cost_usd, "latency_ms": self.latency_ms, "hops": self.hops,
                "source": self.source, "key": self.key}


# -- the session: what one run shares --------------------------------------------------------


class Cassette:
    """Recorded answers in a JSON file, keyed by request hash; written after every record.

    The file maps each key to ``{model, request, response}`` where ``request`` is the
    masked request (no secrets, no API key) and ``response`` the answer as returned.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, Any] | None = None

    def entries(self) -> dict[str, Any]:
        """Every recorded exchange, read once."""
        if self._entries is None:
            try:
                doc = json.loads(read_bytes(self.path, limit=MAX_CASSETTE_BYTES)) if self.path.exists() else {}
            except (OSError, ValueError) as exc:
                raise TaskError(f"cassette {self.path} cannot be read: {exc}", error_class="invalid_input") from None
            self._entries = dict(doc.get("exchanges", {})) if isinstance(doc, dict) else {}
        return self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        """The recorded exchange for ``key``, if any."""
        return self.entries().get(key)

    def put(self, key: str, exchange: dict[str, Any]) -> None:
        """Record an exchange and rewrite the file atomically (sorted, so diffs stay small)."""
        with self._lock:
            self.entries()[key] = exchange
            doc = {"version": 1, "exchanges": dict(sorted(self.entries().items()))}
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)


class RateLimiter(SlidingWindow):
    """Requests and tokens per minute over a sliding 60-second window, shared in-process.

    ``acquire(tokens)`` waits until one more request of ``tokens`` tokens fits both limits
    (the generic window is :class:`goatclaw.security.ratelimit.SlidingWindow`).
    """

    WINDOW = 60.0

    def __init__(self, rpm: int | None = None, tpm: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rpm, tpm, window=self.WINDOW, clock=clock)
        self.rpm, self.tpm = rpm, tpm


_LIMITERS: dict[tuple[str, int | None, int | None], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def _limiter(name: str, rpm: int | None, tpm: int | None, store: Path | None = None) -> SlidingWindow:
    """The limiter for ``name`` with these limits: in the store (shared by its processes), else process-wide."""
    if store is not None:
        from goatclaw.store import Store

        return shared_window(f"llm:{name}", rpm, tpm, window=RateLimiter.WINDOW, store=store, opener=Store.open)
    with _LIMITERS_LOCK:
        return _LIMITERS.setdefault((name, rpm, tpm), RateLimiter(rpm, tpm))


@dataclass
class Session:
    """What the LLM calls of one run share: mode, cassette, cache, budget and rate limits.

    ``model`` and ``fallbacks`` are the project's defaults (``goatclaw.yaml``);
    ``cache`` is a store path (answers are cached in its ``llm_cache`` table) or ``None``
    (no answer cache: ``--no-cache``, ``llm: {cache: false}``, or no store); a cached
    answer older than ``cache_ttl`` seconds is not reused;
    ``budget_usd`` the most the run may spend, ``downgrade`` the cheaper model a call
    switches to (event ``llm.downgrade``) when the budget cannot afford its own;
    ``rate_limits`` maps a model or provider
    name (``openai``, ``openai/gpt-4o-mini``) to ``{rpm, tpm}``; ``secrets`` are values
    masked out of every cassette.
    """

    mode: str = "live"
    model: str | None = None
    fallbacks: tuple[str, ...] = ()
    cassette: Cassette | None = None
    cache: Path | None = None
    cache_ttl: float | None = None
    budget_usd: float | None = None
    downgrade: str | None = None  # a cheaper model to switch to when the budget cannot afford a call
    rate_limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    secrets: Sequence[str] = ()
    #: Model name -> :class:`Endpoint`, from the entries of ``model:``/``fallbacks:`` in goatclaw.yaml.
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    #: The store whose rate windows the limits use, so processes sharing it share them (``None``: in memory).
    limits_store: Path | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0  # estimates of calls in flight, so concurrent calls cannot overspend together
    _store: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"LLM mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode != "live" and self.cassette is None:
            raise ValueError(f"LLM mode {self.mode} needs a cassette")

    def store(self) -> Any:
        """The store holding the cache, opened on first use."""
        if self._store is None and self.cache is not None:
            from goatclaw.store import Store

            self._store = Store.open(self.cache)
        return self._store

    def limiters(self, model: str) -> list[SlidingWindow]:
        """The limiters that apply to ``model``: its own and its provider's (in ``limits_store`` when set)."""
        provider = model.split("/", 1)[0] if "/" in model else model
        names = dict.fromkeys((model, provider))
        return [_limiter(n, self.rate_limits[n].get("rpm"), self.rate_limits[n].get("tpm"), self.limits_store)
                for n in names if n in self.rate_limits]

    async def aclose(self) -> None:
        """Close the cache's store and litellm's pooled clients (bound to this event loop)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if _imported() is not None:
            await _close_litellm_clients()


#: The session of the running run (set by ``goatclaw.arun``); ``None`` outside a run.
SESSION: ContextVar[Session | None] = ContextVar("goatclaw_llm_session", default=None)
_LIVE = Session()


def session() -> Session:
    """The current run's session, or a live one without cache or budget."""
    return SESSION.get() or _LIVE


@contextlib.asynccontextmanager
async def using(s: Session) -> AsyncIterator[Session]:
    """Make ``s`` the session of everything awaited inside (and close it afterwards)."""
    token = SESSION.set(s)
    try:
        yield s
    finally:
        SESSION.reset(token)
        await s.aclose()


# -- the call ------------------------------------------------------------------------------


async def complete(request: Request, *, emit: Emit | None = None, secrets: Sequence[str] = ()) -> Response:
    """Answer ``request`` with its first model that can, falling back on transient errors.

    ``emit(topic, **data)`` receives ``llm.fallback`` for every hop and ``llm.call`` for
    the answer; ``secrets`` are masked (with the session's) before anything is recorded.
    Raises :class:`TaskError`; after the last model, the last error with every hop in
    ``details["hops"]``.
    """
    _check(request)
    s = session()
    request = _routed(request, s)
    keys = [request.api_key or "", *(e.api_key or "" for e in request.endpoints.values())]
    masks = _masks([*s.secrets, *secrets, *keys])
    hops: list[dict[str, Any]] = []
    last: TaskError | None = None
    if s.mode == "replay":
        return _replay_chain(s, request, masks, emit)
    for i, model in enumerate(request.models):
        key = request_key(model, request, masks)
        try:
            response = await _answer(s, model, key, request, masks, emit)
        except TaskError as err:
            if err.error_class not in FALLBACK_ON:
                raise _with_hops(err, hops) from None
            last = err
            hops.append({"model": model, "error_class": err.error_class, "message": err.message})
            if emit is not None and i + 1 < len(request.models):
                emit("llm.fallback", model=model, to=request.models[i + 1], error_class=err.error_class,
                     message=err.message)
            continue
        response.hops = hops
        if emit is not None:
            emit("llm.call", model=response.model, usage=response.usage, cost_usd=response.cost_usd,
                 latency_ms=response.latency_ms, source=response.source, key=response.key)
        return response
    assert last is not None
    raise _with_hops(last, hops)


async def _answer(s: Session, model: str, key: str, request: Request, masks: Sequence[str],
                  emit: Emit | None = None) -> Response:
    """One model's answer: from the cassette (replay), the cache, or the provider.

    When the budget cannot afford the call and the session names a ``downgrade`` model,
    the cheaper model answers instead (``llm.downgrade``); if it cannot be afforded
    either, the budget error stands.
    """
    if s.mode == "replay":
        return _replayed(s, model, key, request)
    # a recording calls the model every time
    cached = _cached(s, key, request) if s.mode == "live" and reusable(request) else None
    if cached is not None:
        return _response(cached, model, key, request, source="cache")
    await ready()  # the budget and the rate limits count tokens with litellm
    try:
        reserved = await _admit(s, model, request)
    except TaskError as err:
        cheaper = s.downgrade
        if err.error_class != "budget" or not cheaper or cheaper == model:
            raise
        if emit is not None:
            emit("llm.downgrade", model=model, to=cheaper, spent_usd=s.spent_usd, budget_usd=s.budget_usd,
                 estimate_usd=err.details.get("estimate_usd"))
        return await _answer(s, cheaper, request_key(cheaper, request, masks), request, masks, emit)
    try:
        started = time.perf_counter()
        raw = await _call(model, request, on_text=_progress(emit) if request.stream and emit is not None else None)
        latency = round((time.perf_counter() - started) * 1000, 1)
    finally:
        s.reserved_usd -= reserved
    answer = _answer_of(raw, model, latency)
    s.spent_usd += float(answer["cost_usd"])
    response = _response(answer, model, key, request, source="live")
    _remember(s, model, key, request, answer, masks)
    return response


def _routed(request: Request, s: Session) -> Request:
    """``request`` with the session's endpoints for the models it gives none of its own for."""
    extra = {m: s.endpoints[m] for m in request.models if m in s.endpoints and m not in request.endpoints}
    return dataclasses.replace(request, endpoints={**request.endpoints, **extra}) if extra else request


def endpoint(model: str, request: Request) -> tuple[str | None, str | None]:
    """``(api_base, api_key)`` a call to ``model`` uses.

    The model's own endpoint (the request's, else the session's from goatclaw.yaml) wins;
    otherwise the request's ``api_base``/``api_key``.
    """
    own = request.endpoints.get(model) or session().endpoints.get(model)
    if own is None:
        return request.api_base, request.api_key
    return own.api_base or (None if own.api_key else request.api_base), own.api_key or request.api_key


def _check(request: Request) -> None:
    """Refuse a request that no model could answer."""
    if not request.models or not all(isinstance(m, str) and m for m in request.models):
        raise TaskError("no model given: set model: on the task or in goatclaw.yaml", error_class="invalid_input")
    if not request.messages:
        raise TaskError("no messages: give a prompt or messages", error_class="invalid_input")
    if request.output not in ("text", "json"):
        raise TaskError(f"output must be text or json, not {request.output!r}", error_class="invalid_input")


def request_key(model: str, request: Request, masks: Sequence[str] = ()) -> str:
    """The content address of one model's request: sha256 of everything that shapes the answer.

    Secrets are masked first, so a replay in CI with other (or dummy) secret values finds
    the same key; the transport (``api_base``, ``api_key``, ``timeout``) is left out.
    """
    return hashlib.sha256(_canonical(_masked_request(model, request, masks)).encode()).hexdigest()


def _masked_request(model: str, request: Request, masks: Sequence[str]) -> dict[str, Any]:
    body = {"model": model, "messages": [dict(m) for m in request.messages], "temperature": request.temperature,
            "max_tokens": request.max_tokens, "output": request.output, "schema": request.schema}
    return _mask(body, masks)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _masks(values: Sequence[str]) -> list[str]:
    """Secret values to hide, longest first (so a secret containing another is hidden whole)."""
    return sorted({v for v in values if isinstance(v, str) and len(v) >= 4}, key=len, reverse=True)


def _mask(value: Any, masks: Sequence[str]) -> Any:
    """``value`` with every secret (and its base64, URL, hex, JSON forms) replaced by ``***``, recursively."""
    if not masks:
        return value
    return _redactor(tuple(masks)).mask_data(value)


#: How many leading characters of a secret a recorded answer may not hold.
CASSETTE_PREFIX = 12


@functools.lru_cache(maxsize=8)
def _prefix_redactor(masks: tuple[str, ...]) -> Redactor:
    """A redactor that also masks :data:`CASSETTE_PREFIX` or more leading characters of each secret."""
    return Redactor(masks, prefix=CASSETTE_PREFIX)


@functools.lru_cache(maxsize=16)
def _redactor(masks: tuple[str, ...]) -> Redactor:
    """One redactor per set of secrets (a run's), built once."""
    return Redactor(masks)


def _with_hops(err: TaskError, hops: list[dict[str, Any]]) -> TaskError:
    if hops:
        err.details = {**err.details, "hops": hops}
        tried = ", ".join(h["model"] for h in hops)
        if tried not in err.message:
            err.message = f"{err.message} (after falling back from {tried})"
            err.args = (err.message,)
    return err


# -- replay, cache, record -------------------------------------------------------------------


def _replay_chain(s: Session, request: Request, masks: Sequence[str], emit: Emit | None) -> Response:
    """The first model in the chain with a recorded answer (a recording may have fallen back)."""
    keys = [(model, request_key(model, request, masks)) for model in request.models]
    model, key = next(((m, k) for m, k in keys if s.cassette is not None and s.cassette.get(k)), keys[0])
    response = _replayed(s, model, key, request)
    if emit is not None:
        emit("llm.call", model=model, usage=response.usage, cost_usd=0.0, latency_ms=0.0, source="cassette", key=key)
    return response


def _replayed(s: Session, model: str, key: str, request: Request) -> Response:
    assert s.cassette is not None
    exchange = s.cassette.get(key)
    if exchange is None:
        raise TaskError(f"replay: the cassette {s.cassette.path} has no answer for request {key[:16]} "
                        f"(model {model}); run with --llm record to record it", error_class="invalid_input",
                        details={"key": key, "model": model, "cassette": str(s.cassette.path)})
    return _response(exchange["response"], model, key, request, source="cassette")


#: How long a cached LLM answer is reused when goatclaw.yaml says nothing (``llm.cache.ttl``): 7 days.
DEFAULT_CACHE_TTL = 7 * 86400.0


def reusable(request: Request) -> bool:
    """Whether ``request``'s answer may come from (and go to) the answer cache: the one rule.

    Asked for (``cache: true`` on the task), or deterministic: ``temperature: 0``. A
    request at any other temperature, or without one (the provider's default samples),
    asks the model every time; ``cache: false`` or ``--no-cache`` never use the cache.
    """
    return request.cache is True or (request.cache is None and request.temperature == 0)


def _cached(s: Session, key: str, request: Request) -> dict[str, Any] | None:
    store = s.store()
    if store is None:
        return None
    ttl = request.cache_ttl if request.cache_ttl is not None else s.cache_ttl
    text = store.llm_cached(key, ttl)
    return json.loads(text) if text else None


def _remember(s: Session, model: str, key: str, request: Request, answer: dict[str, Any],
              masks: Sequence[str]) -> None:
    """Put a live answer in the cache and, when recording, in the cassette (masked).

    The cassette is committed with the project, so its answers also lose any
    :data:`CASSETTE_PREFIX` or more leading characters of a secret that a model echoed.
    """
    store = s.store() if reusable(request) else None
    if store is not None:
        store.llm_cache_put(key, model, _canonical(answer))
    if s.mode == "record" and s.cassette is not None:
        s.cassette.put(key, {"model": model, "request": _masked_request(model, request, masks),
                             "response": _prefix_redactor(tuple(masks)).mask_data(answer) if masks else answer})


# -- budget and rate limits ----------------------------------------------------------------


async def _admit(s: Session, model: str, request: Request) -> float:
    """Wait for the rate limits that apply; refuse a call the budget cannot afford, else reserve it.

    The estimate is the worst case: the prompt's tokens plus ``max_tokens`` or, without
    it, the most the model can write (its ``max_output_tokens`` in litellm's model map), at
    the model's prices. It is held as reserved until the call ends, so concurrent calls
    cannot overspend together, and a call that could take the run over the budget is refused.
    """
    limiters = s.limiters(model)
    if s.budget_usd is None and not limiters:
        return 0.0
    prompt_tokens = _prompt_tokens(model, request)
    for limiter in limiters:
        await limiter.acquire(prompt_tokens + (request.max_tokens or 0))
    if s.budget_usd is None:
        return 0.0
    estimate = _cost(model, prompt_tokens, request.max_tokens or _output_limit(model))
    committed = s.spent_usd + s.reserved_usd
    if s.spent_usd >= s.budget_usd or committed + estimate > s.budget_usd:
        raise TaskError(f"budget: a call to {model} could cost ${estimate:.6f} and ${committed:.6f} of the "
                        f"${s.budget_usd:.2f} budget is spent or in flight", error_class="budget",
                        details={"spent_usd": s.spent_usd, "budget_usd": s.budget_usd, "estimate_usd": estimate})
    s.reserved_usd += estimate
    return estimate


def _prompt_tokens(model: str, request: Request) -> int:
    litellm = _litellm()
    try:
        return int(litellm.token_counter(model=model, messages=[dict(m) for m in request.messages]))
    except Exception:  # an unknown tokenizer: about four characters a token
        return sum(len(str(m.get("content", ""))) for m in request.messages) // 4 + 1


#: The completion tokens assumed for a model the model map gives no output limit for.
UNKNOWN_OUTPUT_LIMIT = 4096


def _output_limit(model: str) -> int:
    """The most tokens ``model`` can answer with (litellm's model map), the worst case of a call without max_tokens."""
    litellm = _litellm()
    try:
        info = litellm.get_model_info(model=model)
    except Exception:  # a model the map does not know (it is unpriced too, so it costs 0)
        return UNKNOWN_OUTPUT_LIMIT
    limit = info.get("max_output_tokens") or info.get("max_tokens")
    return int(limit) if isinstance(limit, int) and limit > 0 else UNKNOWN_OUTPUT_LIMIT


def _cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Dollars for these tokens from litellm's price map; 0 for a model it does not price."""
    litellm = _litellm()
    try:
        a, b = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return float(a) + float(b)
    except Exception:
        return 0.0


# -- litellm -------------------------------------------------------------------------------


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
    future = preload()
    while not future.done():
        await asyncio.sleep(IMPORT_POLL_SECONDS)
    return future.result()


async def warm() -> None:
    """Have litellm imported before a live call needs it (nothing to do when the run replays a cassette).

    The ``llm`` task's warm-up (see :class:`goatclaw.plugin.PluginSpec`): the engine starts
    it when the run opens and awaits it before an attempt, outside the task's ``timeout``.
    """
    if session().mode != "replay":
        await ready()


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


async def _call(model: str, request: Request, *, on_text: Callable[[str, bool], None] | None = None) -> Any:
    """One ``acompletion`` (streamed with ``request.stream``), with litellm's errors translated into goatclaw's."""
    litellm = await ready()
    kwargs: dict[str, Any] = {"model": model, "messages": [dict(m) for m in request.messages],
                              "num_retries": 0, "max_retries": 0}
    for name in ("temperature", "max_tokens", "timeout"):
        if getattr(request, name) is not None:
            kwargs[name] = getattr(request, name)
    api_base, api_key = endpoint(model, request)
    if api_base is not None:
        kwargs["api_base"] = api_base
    if api_key is not None:
        kwargs["api_key"] = api_key
    if request.output == "json" and _supports_json_mode(litellm, model):
        kwargs["response_format"] = {"type": "json_object"}
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


def estimate_costs(pipeline: Any, default_model: str | None = None) -> list[dict[str, Any]]:
    """A rough cost for each ``llm`` task of ``pipeline`` (what ``goatclaw plan --cost`` shows).

    Prompt tokens ≈ characters of ``system`` + ``prompt`` (or ``messages``) / 4, template
    text counted as written; completion tokens = ``max_tokens`` (0 when unset), priced at
    the first model with litellm's local price map. ``usd`` is ``None`` for a templated or
    unpriced model; a ``foreach`` task is one call per item, so its row is per item.
    """
    from goatclaw.template import has_template

    rows = []
    for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            if task.uses != "llm" or not isinstance(task.with_, Mapping):
                continue
            args = task.with_
            model = args.get("model") or default_model
            if isinstance(model, (list, tuple)):
                model = model[0] if model else None
            if isinstance(model, Mapping):  # a model entry {name, api_base, api_key}
                model = model.get("name")
            chars = len(str(args.get("system") or "")) + len(str(args.get("prompt") or ""))
            messages = args.get("messages")
            if isinstance(messages, (list, tuple)):
                chars += sum(len(str(m.get("content", ""))) if isinstance(m, Mapping) else len(str(m))
                             for m in messages)
            elif isinstance(messages, str):
                chars += len(messages)
            prompt_tokens = chars // 4 + 1
            max_tokens = args.get("max_tokens") if isinstance(args.get("max_tokens"), int) else 0
            priced = isinstance(model, str) and bool(model) and not has_template(model)
            usd = _cost_or_none(model, prompt_tokens, max_tokens) if priced else None
            rows.append({"task": task.id, "model": model, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens,
                         "usd": usd, "per_item": task.foreach is not None})
    return rows


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


def _supports_json_mode(litellm: Any, model: str) -> bool:
    """Whether ``model`` takes ``response_format: json_object`` (unknown OpenAI-style models: yes)."""
    try:
        params = litellm.get_supported_openai_params(model=model) or []
    except Exception:
        return False
    return "response_format" in params


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


# -- answers -------------------------------------------------------------------------------


def _answer_of(raw: Any, model: str, latency_ms: float) -> dict[str, Any]:
    """What is kept of a litellm response: text, usage, cost, the model that answered."""
    try:
        text = raw.choices[0].message.content or ""
    except (AttributeError, IndexError, TypeError):
        raise TaskError(f"{model}: the response has no message", error_class="invalid_output") from None
    usage = getattr(raw, "usage", None)
    counts = {name: int(getattr(usage, name, 0) or 0) for name in ("prompt_tokens", "completion_tokens",
                                                                     "total_tokens")}
    return {"text": text, "usage": counts, "cost_usd": _response_cost(raw, model, counts),
            "model": model, "served_by": str(getattr(raw, "model", "") or model), "latency_ms": latency_ms}


def _response_cost(raw: Any, model: str, usage: Mapping[str, int]) -> float:
    """The cost litellm computed for the call, else the price map; 0 for a model it cannot price."""
    hidden = getattr(raw, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
    if isinstance(cost, (int, float)) and math.isfinite(cost):
        return float(cost)
    return _cost(model, usage["prompt_tokens"], usage["completion_tokens"])


def _response(answer: Mapping[str, Any], model: str, key: str, request: Request, *, source: str) -> Response:
    """A :class:`Response` from a stored or live answer, its text parsed as the request asks."""
    text = str(answer.get("text", ""))
    data = _parse(text, model, request) if request.output == "json" else None
    return Response(text=text, data=data, model=model, usage=dict(answer.get("usage", {})),
                    cost_usd=float(answer.get("cost_usd", 0.0)) if source == "live" else 0.0,
                    latency_ms=float(answer.get("latency_ms", 0.0)) if source == "live" else 0.0,
                    hops=[], source=source, key=key)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(text: str, model: str, request: Request) -> Any:
    """The reply as JSON (a fenced ```json block is accepted), checked against ``schema``."""
    body = _unfence(text)
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        raise TaskError(f"{model} did not answer with JSON: {exc}; the reply began {text[:80]!r}",
                        error_class="invalid_output", details={"text": text[:2000]}) from None
    if request.schema is not None:
        from goatclaw.spec.schema import check_instance

        problems = check_instance(data, dict(request.schema))
        if problems:
            raise TaskError(f"{model}'s JSON does not match the schema: {'; '.join(problems[:5])}",
                            error_class="invalid_output", details={"problems": problems, "data": data})
    return data


def _unfence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and stripped.count("```") == 2:
        inner = stripped[3:-3]
        first, _, rest = inner.partition("\n")
        return rest if first.strip().lower() in ("json", "") else inner
    return stripped
