"""The call: :func:`complete` sends one request through a chain of models.

::

    request ─▶ for each model: key ─▶ replay? cassette ─▶ a fork? stored answer ─▶ cache? store ─▶ budget ─▶ rate limit
                                     ─▶ litellm.acompletion ─▶ parse (text | json [+ schema])
                                     ─▶ cache put, cassette put ─▶ Response (hops, usage, cost)

A ``rate_limit``, ``server_error``, ``timeout`` or ``connection`` error moves on to the
next model and is recorded as a *hop*; ``auth`` and ``invalid_input`` never do (another
model will not fix a bad key or a bad request).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

from goatclaw.errors import TaskError
from goatclaw.llm.provider import _answer_of, _call, _progress, lacks, price, ready
from goatclaw.llm.request import (
    Emit,
    Request,
    Response,
    _canonical,
    _check,
    _masked_request,
    _masks,
    _prefix_redactor,
    _response,
    needs,
    request_key,
    reusable,
)
from goatclaw.llm.session import Session, _admit, _routed, endpoint, session

__all__ = ["FALLBACK_ON", "complete"]

#: Error classes after which the next model in the chain is tried.
FALLBACK_ON = frozenset({"rate_limit", "server_error", "timeout", "connection"})


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
    keys = [e.api_key or "" for e in request.endpoints.values()] if request.endpoints else ()
    masks = _masks((*s.secrets, *secrets, request.api_key or "", *keys))
    hops: list[dict[str, Any]] = []
    last: TaskError | None = None
    if s.mode == "replay":
        return _replay_chain(s, request, masks, emit)
    request, skipped = await _route(request, s, emit)
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
        response.skipped = skipped
        if emit is not None:
            emit("llm.call", model=response.model, usage=response.usage, cost_usd=response.cost_usd,
                 latency_ms=response.latency_ms, source=response.source, key=response.key, answer=response.answer)
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
    stored = s.answers.get(key) if s.mode == "live" else None
    if stored is not None:  # a fork: the run it forks already had this request answered
        return _response(stored, model, key, request, source="stored")
    # a recording calls the model every time
    cached = _cached(s, key, request) if s.mode == "live" and reusable(request) else None
    if cached is not None:
        return _response(cached, model, key, request, source="cache")
    try:
        reserved = await _admit(s, model, request) if s.budget_usd is not None or s.rate_limits else 0.0
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
        raw = await _call(model, request, endpoint(model, request),
                          on_text=_progress(emit) if request.stream and emit is not None else None)
        latency = round((time.perf_counter() - started) * 1000, 1)
    finally:
        s.reserved_usd -= reserved
    answer = _answer_of(raw, model, latency)
    s.spent_usd += float(answer["cost_usd"])
    response = _response(answer, model, key, request, source="live")
    _remember(s, model, key, request, answer, masks)
    return response


#: Above this many estimated prompt tokens (characters / 4) a chain is routed by context length too.
LONG_PROMPT_TOKENS = 4000


async def _route(request: Request, s: Session, emit: Emit | None) -> tuple[Request, list[dict[str, Any]]]:
    """The chain without the models that lack what ``request`` needs (``llm.skip``), cheapest first if preferred.

    Routing reads litellm's model map: a model it does not know is kept. When no model of
    the chain has what the request needs, the call is refused (``invalid_input``, with
    ``details["incapable"]``) before anything is sent.
    """
    wanted = needs(request) if request.route else {}
    tokens = sum([len(str(m.get("content", ""))) for m in request.messages]) // 4 + 1
    long = request.route and tokens > LONG_PROMPT_TOKENS
    if not (wanted or long or s.prefer == "cheapest"):
        return request, []
    await ready()
    kept: list[str] = []
    skipped: list[dict[str, Any]] = []
    for model in request.models:
        missing = lacks(model, wanted, tokens if long else None)
        if missing:
            skipped.append({"model": model, "lacks": missing})
            if emit is not None:
                emit("llm.skip", model=model, lacks=missing)
        else:
            kept.append(model)
    if not kept:
        why = "; ".join(f"{h['model']} lacks {', '.join(h['lacks'])}" for h in skipped)
        raise TaskError(f"no model of the chain has what the request needs: {why}", error_class="invalid_input",
                        details={"incapable": True, "skipped": skipped})
    if s.prefer == "cheapest":  # stable: equally priced models keep the order they were given in
        kept.sort(key=lambda m: price(m, {"prompt_tokens": tokens, "completion_tokens": request.max_tokens or 256}))
    return (dataclasses.replace(request, models=tuple(kept)) if tuple(kept) != request.models else request), skipped


def _with_hops(err: TaskError, hops: list[dict[str, Any]]) -> TaskError:
    if hops:
        err.details = {**err.details, "hops": hops}
        tried = ", ".join(h["model"] for h in hops)
        if tried not in err.message:
            err.message = f"{err.message} (after falling back from {tried})"
            err.args = (err.message,)
    return err


def _replay_chain(s: Session, request: Request, masks: Sequence[str], emit: Emit | None) -> Response:
    """The first model in the chain with a recorded answer (a recording may have fallen back)."""
    keys = [(model, request_key(model, request, masks)) for model in request.models]
    model, key = next(((m, k) for m, k in keys if s.cassette is not None and s.cassette.get(k)), keys[0])
    response = _replayed(s, model, key, request)
    if emit is not None:
        emit("llm.call", model=model, usage=response.usage, cost_usd=0.0, latency_ms=0.0, source="cassette", key=key,
             answer=response.answer)
    return response


def _replayed(s: Session, model: str, key: str, request: Request) -> Response:
    assert s.cassette is not None
    exchange = s.cassette.get(key)
    if exchange is None:
        raise TaskError(f"replay: the cassette {s.cassette.path} has no answer for request {key[:16]} "
                        f"(model {model}); run with --llm record to record it", error_class="invalid_input",
                        details={"key": key, "model": model, "cassette": str(s.cassette.path)})
    return _response(exchange["response"], model, key, request, source="cassette")


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

