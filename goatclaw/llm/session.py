"""The session: what the LLM calls of one run share (mode, cassette, cache, budget, rate limits).

A :class:`Session` is set for the duration of a run by ``goatclaw.arun`` through the
context variable :data:`SESSION` (asyncio tasks inherit it). Without one, calls are live,
uncached and unbudgeted. The budget admits a call only when its worst case fits
(:func:`_admit`); :func:`estimate_costs` is the rough figure ``goatclaw plan --cost`` shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goatclaw.errors import TaskError
from goatclaw.llm.cassette import Cassette
from goatclaw.llm.provider import (
    _close_litellm_clients,
    _cost,
    _cost_or_none,
    _imported,
    _output_limit,
    _prompt_tokens,
    ready,
)
from goatclaw.llm.request import Endpoint, Request
from goatclaw.security.ratelimit import SlidingWindow, shared_window

__all__ = ["DEFAULT_CACHE_TTL", "MODES", "SESSION", "RateLimiter", "Session", "endpoint", "estimate_costs", "session",
           "using", "warm"]

#: ``live`` calls models; ``record`` calls them and writes every answer to the cassette;
#: ``replay`` answers only from the cassette.
MODES = ("live", "record", "replay")

#: How long a cached LLM answer is reused when goatclaw.yaml says nothing (``llm.cache.ttl``): 7 days.
DEFAULT_CACHE_TTL = 7 * 86400.0


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
    #: ``cheapest``: a chain is tried cheapest capable model first (goatclaw.yaml ``llm: {prefer: cheapest}``).
    prefer: str | None = None
    #: The project's cascade (goatclaw.yaml ``model: {cascade: [...]}``): tasks without ``model:`` use it.
    cascade: tuple[str, ...] = ()
    #: With the project's cascade: the next model sees the rejected answer and the failed rules.
    cascade_feedback: bool = False
    #: Why ``model`` is the default when no file named it (zero-config choice), else ``None``.
    chosen: str | None = None
    #: Request key -> the answer a past run got (a fork's: ``goatclaw runs fork``); such a request is not sent
    #: again, whatever its temperature, and its answer is ``source: stored`` at no cost.
    answers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
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
        if not self.rate_limits:
            return []
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


async def warm() -> None:
    """Have litellm imported before a live call needs it (nothing to do when the run replays a cassette).

    The ``llm`` task's warm-up (see :class:`goatclaw.plugin.PluginSpec`): the engine starts
    it when the run opens and awaits it before an attempt, outside the task's ``timeout``.
    """
    if session().mode != "replay":
        await ready()


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
    await ready()  # the budget and the rate limits count tokens with litellm
    prompt_tokens = _prompt_tokens(model, request)
    for limiter in limiters:
        await limiter.acquire(prompt_tokens + (request.max_tokens or 0))
    if s.budget_usd is None:
        return 0.0
    estimate = _cost(model, prompt_tokens, request.max_tokens or _output_limit(model))
    committed = s.spent_usd + s.reserved_usd
    if s.spent_usd >= s.budget_usd or committed + estimate > s.budget_usd:
        from goatclaw.money import usd

        raise TaskError(f"a call to {model} could cost {usd(estimate)} and {usd(committed)} of the "
                        f"{usd(s.budget_usd)} budget is spent or in flight", error_class="budget",
                        details={"spent_usd": s.spent_usd, "budget_usd": s.budget_usd, "estimate_usd": estimate})
    s.reserved_usd += estimate
    return estimate


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
            if isinstance(model, Mapping) and isinstance(model.get("cascade"), (list, tuple)):
                model = model["cascade"][0] if model["cascade"] else None  # a cascade's first model answers most
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

