"""Requests and answers: what one LLM call asks, its content address, and the parsed reply.

A :class:`Request` is frozen; :func:`request_key` hashes everything that shapes the answer
(secrets masked first, the transport left out), which is the key of the answer cache and
of a cassette. :func:`reusable` is the one rule for when an answer may be reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from goatclaw.errors import TaskError
from goatclaw.security.secrets import Redactor

__all__ = ["CASSETTE_PREFIX", "Emit", "Endpoint", "Request", "Response", "request_key", "reusable"]

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
    #: The tools the model may call, as the OpenAI API takes them (``{"type": "function", "function":
    #: {name, description, parameters}}``); part of the request key only when there are any.
    tools: tuple[Mapping[str, Any], ...] = ()
    #: Route the chain by what the request needs (tools, images, JSON mode, its context length): a model whose
    #: entry in litellm's model map says it lacks one is skipped (``llm.skip``); an unknown model is tried.
    route: bool = True
    #: With ``output: json``: a JSON Schema the provider is asked to hold the answer to (structured output,
    #: ``response_format: json_schema``) where litellm says the model supports it; the reply is not validated
    #: against it here (``schema`` does that). Part of the request key only when set.
    response_schema: Mapping[str, Any] | None = None


@dataclass
class Response:
    """The answer: ``text``, ``data`` (parsed JSON, or ``None`` for text), and what it cost.

    ``model`` is the model that answered; ``hops`` the models that failed before it
    (``{model, error_class, message}``); ``source`` is ``live``, ``cache``, ``cassette`` or ``stored`` (a fork's)
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
    #: The tool calls of the answer (``{id, name, arguments}``, ``arguments`` the model's JSON text).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: The models of the chain skipped for lacking what the request needs (``{model, lacks}``).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: The answer as it was stored (text, usage, what it cost when it was made, tool calls): what a fork reuses.
    answer: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_output(self) -> dict[str, Any]:
        """The JSON-serialisable form a task returns (``skipped`` only when a model was skipped)."""
        out = {"text": self.text, "data": self.data, "model": self.model, "usage": self.usage,
               "cost_usd": self.cost_usd, "latency_ms": self.latency_ms, "hops": self.hops,
               "source": self.source, "key": self.key}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def needs(request: Request) -> dict[str, Any]:
    """What ``request`` needs of a model: ``tools``, ``vision`` (an image part), ``json_mode`` (``output: json``)."""
    found: dict[str, Any] = {}
    if request.tools:
        found["tools"] = True
    for m in request.messages:
        content = m.get("content")
        if type(content) is not str and isinstance(content, list) and any(
                isinstance(p, Mapping) and p.get("type") == "image_url" for p in content):
            found["vision"] = True
            break
    if request.output == "json":
        found["json_mode"] = True
    return found


def _check(request: Request) -> None:
    """Refuse a request that no model could answer."""
    if not request.models or not all([isinstance(m, str) and m for m in request.models]):
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
    masks = tuple(masks)
    found = _key_redactor(masks) if masks else None
    if found is False:
        return _sha256(_canonical(_masked_request(model, request, masks)).encode()).hexdigest()
    text = _canonical(_body(model, request, copy=False))
    if found is not None and found.contains(text):  # a secret is in it: masked value by value, as always
        text = _canonical(_masked_request(model, request, masks))
    return _sha256(text.encode()).hexdigest()


_sha256 = hashlib.sha256


@functools.lru_cache(maxsize=16)
def _key_redactor(masks: tuple[str, ...]) -> Redactor | Literal[False]:
    """The redactor that finds these secrets in a request's canonical JSON, or ``False`` when it cannot.

    It can when every secret is printable ASCII without a quote or backslash: then a string
    holds a secret's form exactly when its JSON text does, so a request whose canonical
    JSON shows no secret needs no masking (the same key, without walking it).
    """
    plain = all(m.isascii() and m.isprintable() and '"' not in m and "\\" not in m for m in masks)
    return _redactor(masks) if plain else False


def _masked_request(model: str, request: Request, masks: Sequence[str]) -> dict[str, Any]:
    """The request as a cassette keeps it: its own copy of what shapes the answer, secrets masked."""
    return _mask(_body(model, request, copy=True), masks)


def _body(model: str, request: Request, *, copy: bool) -> dict[str, Any]:
    """What shapes the answer, as the key hashes it.

    ``copy=False`` leaves the messages and tools that are already plain dicts as they are
    (for a JSON text made at once, not for anything kept).
    """
    if copy:
        messages = [dict(m) for m in request.messages]
    else:
        messages = [m if type(m) is dict else dict(m) for m in request.messages]
    body = {"model": model, "messages": messages, "temperature": request.temperature,
            "max_tokens": request.max_tokens, "output": request.output, "schema": request.schema}
    if request.tools:  # only then: the keys (and cassettes) of calls without tools stay what they were
        body["tools"] = [dict(t) if copy or type(t) is not dict else t for t in request.tools]
    if request.response_schema is not None:
        body["response_schema"] = request.response_schema
    return body


def _encoder() -> Callable[[Any], str]:
    """The canonical JSON of a request or an answer: sorted keys, no spaces, unicode kept, ``str()`` of the rest.

    Built once, and straight on the C encoder where there is one (``json.dumps`` builds an
    encoder and three Python frames a call: a fifth of a request key's time). Without its
    circular-reference check, a request that contains itself fails with ``RecursionError``
    rather than ``ValueError``: it fails either way, it is never sent.
    """
    from json import encoder

    if encoder.c_make_encoder is None:  # pragma: no cover - CPython has the C encoder
        return json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode
    chunks = encoder.c_make_encoder(None, str, encoder.encode_basestring, None, ":", ",", True, False, True)

    def canonical(value: Any) -> str:
        return "".join(chunks(value, 0))

    return canonical


_canonical = _encoder()


def _masks(values: Sequence[str]) -> tuple[str, ...]:
    """Secret values to hide, longest first (so a secret containing another is hidden whole)."""
    return _ordered_masks(tuple(values))


@functools.lru_cache(maxsize=64)
def _ordered_masks(values: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`_masks` once per set of values (a run's secrets and keys are the same call after call)."""
    return tuple(sorted({v for v in values if isinstance(v, str) and len(v) >= 4}, key=len, reverse=True))


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


def reusable(request: Request) -> bool:
    """Whether ``request``'s answer may come from (and go to) the answer cache: the one rule.

    Asked for (``cache: true`` on the task), or deterministic: ``temperature: 0``. A
    request at any other temperature, or without one (the provider's default samples),
    asks the model every time; ``cache: false`` or ``--no-cache`` never use the cache.
    """
    return request.cache is True or (request.cache is None and request.temperature == 0)


def _response(answer: Mapping[str, Any], model: str, key: str, request: Request, *, source: str) -> Response:
    """A :class:`Response` from a stored or live answer, its text parsed as the request asks.

    An answer that calls tools is not the final answer: its text is not parsed.
    """
    text = answer.get("text", "")
    if type(text) is not str:
        text = str(text)
    calls = [dict(c) for c in answer.get("tool_calls") or ()]
    data = _parse(text, model, request) if request.output == "json" and not calls else None
    live = source == "live"
    return Response(text=text, data=data, model=model, usage=dict(answer.get("usage", {})),
                    cost_usd=float(answer.get("cost_usd", 0.0)) if live else 0.0,
                    latency_ms=float(answer.get("latency_ms", 0.0)) if live else 0.0,
                    hops=[], source=source, key=key, tool_calls=calls,
                    # a live answer is what the provider border keeps of a response: all of it
                    answer=dict(answer) if live else _kept(answer))


def _kept(answer: Mapping[str, Any]) -> dict[str, Any]:
    """What of an answer a run's ``llm.call`` event keeps, so that a fork can answer the same request again."""
    keep = ("text", "usage", "cost_usd", "model", "served_by", "latency_ms", "tool_calls")
    return {k: answer[k] for k in keep if k in answer}


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

