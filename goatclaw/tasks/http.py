"""``http``: send an HTTP request and return the status, headers and body.

An unexpected status fails the task with an error class that retry policies understand:
429 is ``rate_limit`` and 5xx ``server_error`` (both with the server's ``Retry-After``
as ``retry_after``), 401 and 403 are ``auth``, any other 4xx is ``invalid_input`` (the
request itself is wrong, so retrying will not help). Timeouts are ``timeout`` and network
failures ``connection``. httpx is imported when a request is made, never at import.

Every request, each redirect hop included, must go to a host that ``permissions.network``
allows; a request carrying a declared secret (in the URL, a header or the body) must go
to a host the permission lists by name. The response is untrusted: it may reach another
task's sinks (a ``shell`` command, a ``file.write`` path) only through ``trust:``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import urljoin

from goatclaw.plugin import TaskContext, fail, task
from goatclaw.tasks.httpauth import Auth, parse_auth
from goatclaw.tasks.jmes import compile_select
from goatclaw.tasks.pagination import Page, Pager

if TYPE_CHECKING:  # only for annotations; importing httpx costs time every CLI start would pay
    import httpx

__all__ = ["Call", "Reply", "Session", "http"]

#: The largest response body read; a larger one fails the task rather than filling the store.
MAX_BODY_BYTES = 10 * 1024 * 1024
#: How many times one request is sent again after waiting for a 429's or 503's ``Retry-After``.
IN_PLACE_RETRIES = 3
#: ``max_wait`` when paginating and not given: a page that asks to wait is waited for, not the whole harvest redone.
DEFAULT_PAGE_WAIT = 30.0
#: The largest ``max_wait`` accepted.
MAX_WAIT_LIMIT = 3600.0
#: Until when (``time.monotonic()``) each host (``host:port``) asked this process to wait, by its last
#: ``Retry-After``: a request to it is held until then when the task may wait that long (``max_wait``).
_HOST_PAUSES: dict[str, float] = {}
_HOST_PAUSES_LOCK = threading.Lock()
_EXCERPT_CHARS = 500


@task(cacheable=False, permissions=("network",), untrusted_output=True, sinks=("url",))
async def http(ctx: TaskContext, *, url: str, method: str = "GET", headers: dict[str, str] | None = None,
               params: dict[str, Any] | None = None, json: Any = None, body: str | None = None,
               expect: list[int] | int | None = None, timeout: float = 30,
               response: Literal["auto", "json", "text"] = "auto", follow_redirects: bool = True,
               auth: dict[str, Any] | None = None, paginate: dict[str, Any] | None = None,
               select: str | None = None, max_wait: float | None = None) -> dict[str, Any]:
    """Send an HTTP request; returns status, headers, body (parsed when JSON) and the final URL.

    ``json`` sends a JSON body, ``body`` a text one (not both). ``expect`` lists the
    statuses that count as success (default: any 2xx). ``response`` says how to read the
    body: ``auto`` parses it when the server says it is JSON. ``auth`` adds credentials
    (``bearer``, ``basic``, ``api_key``, ``oauth2`` client credentials), ``paginate`` follows
    pages (``link``, ``next_url``, ``cursor``, ``page``, ``offset``) into ``items``, ``select``
    picks from the JSON body (each item when paginating) with JMESPath, or with JSONPath (RFC 9535)
    when it starts with ``$``. A 429 or 503 whose
    ``Retry-After`` is at most ``max_wait`` seconds (default 0, or 30 when paginating) is
    waited for and sent again (3 times at most) instead of failing the task.
    """
    _check_options(url, json, body, response, timeout)
    call = Call(str(method).upper(), url, dict(headers or {}), dict(params or {}), json, body)
    expected = _expected(expect)
    picker = compile_select(select) if select is not None else None
    pager = Pager.parse(paginate) if paginate is not None else None
    limit = _max_wait(max_wait, paginating=pager is not None)
    signer = parse_auth(auth)
    async with Session(ctx, timeout=timeout, follow_redirects=follow_redirects, max_wait=limit,
                       auth=signer) as session:
        if pager is not None:
            async def fetch(page_url: str, page_params: dict[str, Any]) -> Page:
                reply = await session.send(call.to(page_url, page_params), expected, response)
                return Page(reply.body, reply.url, reply.next_link(), reply.status)
            return await pager.harvest(fetch, call.url, call.params, picker)
        reply = await session.send(call, expected, response)
    out = reply.output()
    if picker is not None:
        out["body"] = picker.search(out["body"])
    return out


@dataclass(frozen=True)
class Call:
    """One request to make: method, URL, headers, query parameters and a JSON or text body."""

    method: str
    url: str
    headers: dict[str, Any]
    params: dict[str, Any]
    json: Any = None
    body: str | None = None

    def to(self, url: str, params: dict[str, Any]) -> Call:
        """The same request to another URL with other parameters (the next page)."""
        return replace(self, url=url, params=params)

    def sending(self) -> dict[str, Any]:
        """What goes with the request, for the secret check of ``permissions.network``."""
        return {"headers": self.headers, "params": self.params, "json": self.json, "body": self.body}


@dataclass(frozen=True)
class Reply:
    """A response read: status, headers, the body (parsed when JSON), the final URL and its links."""

    status: int
    headers: dict[str, str]
    body: Any
    url: str
    links: dict[str, str] = field(default_factory=dict)

    def output(self) -> dict[str, Any]:
        """The ``http`` task's output for a single request."""
        return {"status": self.status, "headers": self.headers, "body": self.body, "url": self.url}

    def next_link(self) -> str | None:
        """The ``Link: <…>; rel="next"`` URL, made absolute against the response's URL."""
        target = self.links.get("next")
        return urljoin(self.url, target) if target else None


class Session:
    """One httpx client under a task's grants: each hop checked, throttled and audited.

    Every request first passes ``permissions.network`` with what it sends (credentials
    included), and so does every redirect hop. ``auth`` signs each request and, for OAuth2,
    fetches the token through this same session. A 429 or 503 asking to wait at most
    ``max_wait`` seconds is waited for in place (:data:`IN_PLACE_RETRIES` times).
    """

    def __init__(self, ctx: TaskContext, *, timeout: float | None, follow_redirects: bool = True,
                 max_wait: float = 0.0, auth: Auth | None = None) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.max_wait = max_wait
        self.auth = auth
        self._follow = follow_redirects
        self._client: httpx.AsyncClient | None = None
        self._attempted: list[httpx.Request] = []
        self._answered: set[int] = set()

    async def __aenter__(self) -> Session:
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=self._follow,
                                         event_hooks={"request": [self._check_hop, self._throttle_hop,
                                                                  self._note_hop],
                                                      "response": [self._audit_hop]})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(self, call: Call, expected: Iterable[int] = range(200, 300),
                   response: str = "auto") -> Reply:
        """Send ``call`` (signed, checked, waited on when the server asks); fail on an unexpected status."""
        resp, raw = await self.exchange(call, expected)
        return Reply(resp.status_code, dict(resp.headers), _parse_body(resp, raw, response), str(resp.url),
                     {rel: link["url"] for rel, link in resp.links.items() if "url" in link})

    async def exchange(self, call: Call, expected: Iterable[int] = range(200, 300), *,
                       sign: bool = True) -> tuple[httpx.Response, bytes]:
        """The response to ``call`` and its body, after the in-place waits and one token refresh at most.

        ``sign=False`` sends it without the session's credentials (the OAuth2 token request itself).
        """
        refreshed = False
        waits = 0
        while True:
            signed = await self.auth.sign(self, call) if self.auth is not None and sign else call
            self.ctx.require_network(signed.url, sending=signed.sending())
            resp, raw = await self._once(signed)
            if resp.status_code in expected:
                return resp, raw
            if resp.status_code == 401 and sign and self.auth is not None and not refreshed and self.auth.refreshable:
                refreshed = True
                self.auth.forget()  # a cached token the server no longer takes: fetch a new one, once
                continue
            wait = _retry_after(resp.headers.get("retry-after")) if resp.status_code in (429, 503) else None
            if wait is not None:
                _pause_host(resp.url.netloc.decode("ascii", "replace"), wait)
            if wait is not None and wait <= self.max_wait and waits < IN_PLACE_RETRIES:
                waits += 1
                self.ctx.emit("http.retry_after", url=str(resp.url), status=resp.status_code, wait=round(wait, 3))
                await asyncio.sleep(wait)
                continue
            _fail_status(resp, raw)

    async def _once(self, call: Call) -> tuple[httpx.Response, bytes]:
        assert self._client is not None, "use the session in 'async with'"
        request = _build(self._client, call.method, call.url, call.headers, call.params, call.json, call.body)
        try:
            return await _send(self._client, request, self.timeout)
        except Exception as exc:  # a hop that went out and got no answer (refused, reset, timed out)
            for hop in self._attempted:
                if id(hop) not in self._answered:
                    self._answered.add(id(hop))
                    self.ctx.audit("request.failed", method=hop.method, host=hop.url.host, url=str(hop.url),
                                   error_class=getattr(exc, "error_class", type(exc).__name__))
            raise

    async def _check_hop(self, request: httpx.Request) -> None:  # every request, redirects included
        self.ctx.require_network(str(request.url), sending={"headers": dict(request.headers),
                                                             "body": _content(request)})

    async def _throttle_hop(self, request: httpx.Request) -> None:  # rate_limits.side_effects, per host
        await self._held_by_host(request)
        await self.ctx.throttle("http", request.url.host)

    async def _held_by_host(self, request: httpx.Request) -> None:
        """Wait out the host's last ``Retry-After`` when this task may wait that long; else send (it will say)."""
        host = request.url.netloc.decode("ascii", "replace")
        with _HOST_PAUSES_LOCK:
            left = _HOST_PAUSES.get(host, 0.0) - time.monotonic()
        if 0 < left <= self.max_wait:
            self.ctx.emit("http.host_paused", host=host, wait=round(left, 3))
            await asyncio.sleep(left)

    async def _note_hop(self, request: httpx.Request) -> None:
        self._attempted.append(request)

    async def _audit_hop(self, response: httpx.Response) -> None:  # each hop that got an answer
        request = response.request
        self._answered.add(id(request))
        self.ctx.audit("request.sent", method=request.method, host=request.url.host, url=str(request.url),
                       status=response.status_code)


def _max_wait(value: float | None, *, paginating: bool) -> float:
    """The longest ``Retry-After`` waited in place: ``max_wait``, else 30 s when paginating, else 0."""
    if value is None:
        return DEFAULT_PAGE_WAIT if paginating else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_LIMIT:
        fail(f"max_wait must be a number of seconds from 0 to {MAX_WAIT_LIMIT:g}, not {value!r}",
             error_class="invalid_input")
    return float(value)


def _check_options(url: str, json: Any, body: str | None, response: str, timeout: float | None) -> None:
    """Refuse contradictory or malformed options before anything is sent."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        fail(f"url '{url}' must start with http:// or https://", error_class="invalid_input")
    if json is not None and body is not None:
        fail("give either 'json' (data sent as JSON) or 'body' (text), not both", error_class="invalid_input")
    if body is not None and not isinstance(body, str):
        fail(f"'body' must be text, not {type(body).__name__}; use 'json' to send data", error_class="invalid_input")
    if response not in ("auto", "json", "text"):
        fail(f"response must be one of auto, json, text, not '{response}'", error_class="invalid_input")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        fail(f"timeout must be a positive number of seconds, not {timeout!r}", error_class="invalid_input")


def _content(request: httpx.Request) -> str:
    """The request body as text, for the secret check (empty when it is streamed)."""
    try:
        return request.content.decode("utf-8", errors="replace")
    except Exception:  # httpx.RequestNotRead for a streamed body
        return ""


def _expected(expect: list[int] | int | None) -> Iterable[int]:
    """The statuses that count as success: ``expect``, or every 2xx."""
    if expect is None:
        return range(200, 300)
    codes = [expect] if isinstance(expect, int) else expect
    if not isinstance(codes, list) or not all(isinstance(c, int) and 100 <= c <= 599 for c in codes):
        fail(f"expect must be a status code or a list of them (100-599), not {expect!r}", error_class="invalid_input")
    return frozenset(codes)


def _build(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, Any] | None,
           params: dict[str, Any] | None, json: Any, body: str | None) -> httpx.Request:
    """The request; a URL, header or body httpx cannot encode is ``invalid_input``."""
    import httpx

    try:
        target = httpx.URL(url)  # build_request(params=…) would drop the URL's own query: merge instead
        target = target.copy_merge_params(params) if params else target
        return client.build_request(
            str(method).upper(), target, json=json, content=body,
            headers={str(k): str(v) for k, v in (headers or {}).items()},
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, TypeError, ValueError, AttributeError) as exc:
        fail(f"cannot build the request to '{url}': {exc}", error_class="invalid_input")


async def _send(client: httpx.AsyncClient, request: httpx.Request,
                timeout: float | None) -> tuple[httpx.Response, bytes]:
    """Send ``request`` and read its body (capped); httpx's errors become task error classes."""
    import httpx

    where = f"{request.method} {request.url}"
    try:
        resp = await client.send(request, stream=True)
        try:
            raw = await _read_capped(resp, where)
        finally:
            await resp.aclose()
    except httpx.TimeoutException as exc:
        after = f" after {timeout:g}s" if timeout is not None else ""
        fail(f"{where} timed out{after} ({type(exc).__name__})", error_class="timeout")
    except httpx.UnsupportedProtocol as exc:
        fail(f"{where}: {exc}", error_class="invalid_input")
    except httpx.TooManyRedirects as exc:
        fail(f"{where}: {exc}", error_class="upstream")
    except httpx.DecodingError as exc:
        fail(f"{where}: the response could not be decoded: {exc}", error_class="invalid_output")
    except httpx.RequestError as exc:  # connect, read, write, proxy and protocol errors
        fail(f"{where} failed: {type(exc).__name__}: {exc or 'connection error'}", error_class="connection")
    return resp, raw


async def _read_capped(resp: httpx.Response, where: str) -> bytes:
    """The (decompressed) body, failing once it passes :data:`MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            fail(f"{where}: the response body is over the limit of {MAX_BODY_BYTES:,} bytes",
                 error_class="invalid_output", status=resp.status_code)
        chunks.append(chunk)
    return b"".join(chunks)


def _fail_status(resp: httpx.Response, raw: bytes) -> NoReturn:
    """Fail with the error class that the unexpected status means."""
    status = resp.status_code
    excerpt = _text(resp, raw)[:_EXCERPT_CHARS].strip()
    message = f"{resp.request.method} {resp.url} returned {status} {resp.reason_phrase}".rstrip()
    message += f": {excerpt}" if excerpt else ""
    details = {"status": status, "url": str(resp.url), "body": excerpt}
    if status == 429:
        fail(message, error_class="rate_limit", retry_after=_retry_after(resp.headers.get("retry-after")), **details)
    if status in (401, 403):
        fail(message, error_class="auth", **details)
    if 500 <= status <= 599:
        fail(message, error_class="server_error", retry_after=_retry_after(resp.headers.get("retry-after")),
             **details)
    if 400 <= status <= 499:
        fail(message, error_class="invalid_input", **details)
    fail(message, error_class="upstream", **details)  # 1xx/3xx that was not expected


def _pause_host(host: str, seconds: float) -> None:
    """Remember that ``host`` asked to be left alone for ``seconds`` (a later, longer ask wins)."""
    until = time.monotonic() + min(seconds, MAX_WAIT_LIMIT)
    with _HOST_PAUSES_LOCK:
        if len(_HOST_PAUSES) > 1000:  # bounded: forget the pauses that are over
            now = time.monotonic()
            for old in [h for h, t in _HOST_PAUSES.items() if t <= now]:
                del _HOST_PAUSES[old]
        _HOST_PAUSES[host] = max(until, _HOST_PAUSES.get(host, 0.0))


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _parse_body(resp: httpx.Response, raw: bytes, response: str) -> Any:
    """The body as JSON (``json``, or ``auto`` with a JSON content type) or as text."""
    text = _text(resp, raw)
    if response == "text" or (response == "auto" and not _is_json(resp.headers.get("content-type", ""))):
        return text
    if not text.strip():
        return None
    try:
        return jsonlib.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        if response == "auto":
            return text  # the server said JSON but sent something else: hand over what it sent
        fail(f"{resp.request.method} {resp.url}: the response is not valid JSON: {exc}", error_class="invalid_output",
             status=resp.status_code, body=text[:_EXCERPT_CHARS])


def _text(resp: httpx.Response, raw: bytes) -> str:
    """The body decoded with the charset the server gave (UTF-8 otherwise)."""
    try:
        return raw.decode(resp.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _is_json(content_type: str) -> bool:
    """``application/json`` and the ``+json`` family (``application/problem+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _reject_constant(name: str) -> NoReturn:
    """``json`` calls this for ``NaN``, ``Infinity`` and ``-Infinity``: not JSON numbers."""
    raise ValueError(f"{name} is not a JSON number")
