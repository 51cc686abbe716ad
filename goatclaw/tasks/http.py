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

import email.utils
import json as jsonlib
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from goatclaw.plugin import TaskContext, fail, task

if TYPE_CHECKING:  # only for annotations; importing httpx costs time every CLI start would pay
    import httpx

__all__ = ["http"]

#: The largest response body read; a larger one fails the task rather than filling the store.
MAX_BODY_BYTES = 10 * 1024 * 1024
_EXCERPT_CHARS = 500


@task(cacheable=False, permissions=("network",), untrusted_output=True, sinks=("url",))
async def http(ctx: TaskContext, *, url: str, method: str = "GET", headers: dict[str, str] | None = None,
               params: dict[str, Any] | None = None, json: Any = None, body: str | None = None,
               expect: list[int] | int | None = None, timeout: float = 30,
               response: Literal["auto", "json", "text"] = "auto", follow_redirects: bool = True) -> dict[str, Any]:
    """Send an HTTP request; returns status, headers, body (parsed when JSON) and the final URL.

    ``json`` sends a JSON body, ``body`` a text one (not both). ``expect`` lists the
    statuses that count as success (default: any 2xx). ``response`` says how to read the
    body: ``auto`` parses it when the server says it is JSON.
    """
    import httpx

    _check_options(url, json, body, response, timeout)
    expected = _expected(expect)
    ctx.require_network(url, sending={"headers": headers, "params": params, "json": json, "body": body})

    async def check_hop(request: httpx.Request) -> None:  # every request, redirects included
        ctx.require_network(str(request.url), sending={"headers": dict(request.headers), "body": _content(request)})

    async def throttle_hop(request: httpx.Request) -> None:  # rate_limits.side_effects, per host
        await ctx.throttle("http", request.url.host)

    attempted: list[httpx.Request] = []  # every hop that went out, answered or not
    answered: set[int] = set()

    async def note_hop(request: httpx.Request) -> None:
        attempted.append(request)

    async def audit_hop(response: httpx.Response) -> None:  # each hop that got an answer
        request = response.request
        answered.add(id(request))
        ctx.audit("request.sent", method=request.method, host=request.url.host, url=str(request.url),
                  status=response.status_code)

    async with httpx.AsyncClient(timeout=timeout, follow_redirects=follow_redirects,
                                 event_hooks={"request": [check_hop, throttle_hop, note_hop],
                                              "response": [audit_hop]}) as client:
        request = _build(client, method, url, headers, params, json, body)
        try:
            resp, raw = await _send(client, request, timeout)
        except Exception as exc:  # a hop that went out and got no answer (refused, reset, timed out)
            for hop in attempted:
                if id(hop) not in answered:
                    ctx.audit("request.failed", method=hop.method, host=hop.url.host, url=str(hop.url),
                              error_class=getattr(exc, "error_class", type(exc).__name__))
            raise
    if resp.status_code not in expected:
        _fail_status(resp, raw)
    return {"status": resp.status_code, "headers": dict(resp.headers), "body": _parse_body(resp, raw, response),
            "url": str(resp.url)}


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
        return client.build_request(
            str(method).upper(), url, params=params, json=json, content=body,
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
