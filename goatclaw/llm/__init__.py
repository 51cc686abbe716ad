"""The one LLM room: the only room that imports litellm, and only when a model is called.

:func:`complete` sends one :class:`Request` through a chain of models (the primary,
then its fallbacks) and returns a :class:`Response`::

    request ─▶ for each model: key ─▶ replay? cassette ─▶ a fork? stored answer ─▶ cache? store ─▶ budget ─▶ rate limit
                                     ─▶ litellm.acompletion ─▶ parse (text | json [+ schema])
                                     ─▶ cache put, cassette put ─▶ Response (hops, usage, cost)

Every litellm error is translated in one place into a :class:`TaskError` whose
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

The room's modules, lowest first (each imports only those above it)::

    request    Request, Response, Endpoint; request keys, secret masks, parsing a reply
    cassette   the recorded answers' file
    provider   litellm: its import off the loop, the call, streaming, error translation, prices, embed
    session    the Session (mode, cache, budget, rate limits), endpoints, estimate_costs
    call       complete(): the model chain, replay, cache and record
    tools      converse(): the tool loop, each call run by the call_tool function the engine hands in

Import from ``goatclaw.llm``: the modules are implementation details.
"""

from __future__ import annotations

from goatclaw.llm.call import FALLBACK_ON, complete
from goatclaw.llm.cassette import Cassette
from goatclaw.llm.provider import _close_litellm_clients as _close_litellm_clients
from goatclaw.llm.provider import _litellm as _litellm
from goatclaw.llm.provider import embed, lacks, model_entry, preload, price, ready
from goatclaw.llm.request import Endpoint, Request, Response, needs, request_key, reusable
from goatclaw.llm.session import DEFAULT_CACHE_TTL as DEFAULT_CACHE_TTL
from goatclaw.llm.session import MODES, SESSION, RateLimiter, Session, endpoint, estimate_costs, session, using, warm
from goatclaw.llm.tools import converse

__all__ = ["FALLBACK_ON", "MODES", "SESSION", "Cassette", "Endpoint", "RateLimiter", "Request", "Response", "Session",
           "complete", "converse", "embed", "endpoint", "estimate_costs", "lacks", "model_entry", "needs", "preload",
           "price", "ready", "request_key", "reusable", "session", "using", "warm"]
