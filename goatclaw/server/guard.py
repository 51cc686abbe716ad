"""The gate every request passes: address lists, the client's threat score, rate limits, authentication.

:class:`Gatekeeper` is the one ASGI middleware of the HTTP API. In order, for each request:

1. the client's address: the peer's, or, when the peer is a trusted proxy, the right-most
   address in ``X-Forwarded-For`` that is not one;
2. the address lists (``server.ip`` in goatclaw.yaml): denied, or not allowed, is 403;
3. the client's threat score: a blocked client gets 403 with ``Retry-After`` until its block ends;
4. the per-address sliding-window rate limit: 429 with ``Retry-After``;
5. authentication: ``Authorization: Bearer gct_…`` (a wrong, revoked or expired token is 401
   at once) or the session cookie (an expired or revoked one counts as none); a change
   (POST, PUT, PATCH, DELETE) made with a cookie must come from the server's own pages
   (``Origin``/``Referer``) or carry the session's ``X-CSRF-Token``;
6. the per-token (or per-user) rate limit: 429;
7. the route; then what its answer says about the client: 401/403 (denied), 400/413/422
   (malformed), a failed login (the route marks it) add to the threat score
   (:data:`WEIGHTS`), and past the threshold the client is blocked for ``block_for``.

Every change request that reached the routes is in the audit chain: a route that changes
something writes its own row first (and refuses with 503 when the row cannot be written);
for any other POST/PUT/PATCH/DELETE the gate writes an ``http.request`` row afterwards, with
the principal, the method, the path and the answer's status.

The threat score reuses :class:`goatclaw.security.threat.ThreatScore` (each finding counted
once, blocked at the threshold); the rate limits reuse
:class:`goatclaw.security.ratelimit.SlidingWindow`, asked with ``try_acquire`` so that a
request over the limit is refused, never held.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

from goatclaw.security.ratelimit import SlidingWindow
from goatclaw.security.threat import Finding, ThreatScore
from goatclaw.server.auth import ANONYMOUS, PRINCIPAL_KEY, SESSION_COOKIE, Authenticator, Principal
from goatclaw.server.settings import Network, ServerSettings

__all__ = ["AUDITED_KEY", "CLIENT_KEY", "FINDING_KEY", "HTTPS_KEY", "WEIGHTS", "ClientThreats", "Gatekeeper",
           "RateLimits", "client_address"]

log = logging.getLogger("goatclaw.server")

#: What each finding about a client adds to its threat score.
WEIGHTS: dict[str, float] = {
    "failed_login": 2.0,  # a wrong password or code
    "bad_token": 2.0,  # a bearer token that is not one of ours (or revoked, expired)
    "csrf": 2.0,  # a cookie-authenticated change from another site
    "unauthenticated": 1.0,  # a route that needs a principal, asked without one
    "denied": 1.0,  # a principal asking beyond its scopes or projects
    "malformed": 1.0,  # a body that is not the JSON the route takes, or too large
    "rate_limited": 0.5,  # asking again while over a rate limit
    "not_found": 0.25,  # probing for paths
}
#: ``scope`` keys the gate sets (the client's address) and routes may set (a finding, "audited").
CLIENT_KEY = "goatclaw.client"
HTTPS_KEY = "goatclaw.https"  # the client reached us over TLS (directly, or at a trusted proxy)
FINDING_KEY = "goatclaw.finding"
AUDITED_KEY = "goatclaw.audited"
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_OPEN_PATHS = frozenset({"/health"})  # no rate limit: load balancers ask often
_LOGIN = "/auth/login"


def client_address(scope: dict[str, Any], trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer, or through trusted proxies the first untrusted ``X-Forwarded-For`` hop."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not trusted or not _in(peer, trusted):
        return str(peer)
    forwarded = ",".join(v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _in(hop, trusted):
            return hop
    return str(peer)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in(text: str, networks: tuple[Network, ...]) -> bool:
    addr = _address(text)
    return addr is not None and any(addr.version == n.version and addr in n for n in networks)


@dataclass
class _Client:
    score: ThreatScore
    last: float
    blocked_until: float = 0.0
    count: int = 0


class ClientThreats:
    """A threat score per client address; past the threshold the client is blocked for a while.

    A client's score starts again ``forget_after`` seconds after its last finding, and when a
    block ends. At most ``max_clients`` are remembered (the least recently seen go first).
    """

    def __init__(self, threshold: float, block_for: float, forget_after: float, *,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000) -> None:
        self.threshold, self.block_for, self.forget_after = threshold, block_for, forget_after
        self.clock, self.max_clients = clock, max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self.blocks = 0  # how many blocks began (for /metrics)

    def blocked(self, client: str) -> float:
        """Seconds until ``client``'s block ends (0: not blocked)."""
        found = self._clients.get(client)
        if found is None or not found.blocked_until:
            return 0.0
        left = found.blocked_until - self.clock()
        if left <= 0:
            del self._clients[client]  # the block is over: a fresh score
            return 0.0
        return left

    def record(self, client: str, kind: str, detail: str) -> bool:
        """Add a finding about ``client``; True when it has just been blocked by it."""
        now = self.clock()
        found = self._clients.get(client)
        if found is None or (not found.blocked_until and now - found.last > self.forget_after):
            found = _Client(ThreatScore(self.threshold), now)
            self._clients[client] = found
        self._clients.move_to_end(client)
        found.count += 1
        found.last = now
        found.score.add([Finding(kind, WEIGHTS.get(kind, 1.0), detail[:200], f"{kind}-{found.count}")])
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        if found.score.blocked and not found.blocked_until:
            found.blocked_until = now + self.block_for
            self.blocks += 1
            return True
        return False

    def score(self, client: str) -> float:
        """The client's current score (0 for one never seen)."""
        found = self._clients.get(client)
        return found.score.score if found is not None else 0.0

    def blocked_now(self) -> int:
        """How many clients are blocked at this moment."""
        now = self.clock()
        return sum(1 for c in self._clients.values() if c.blocked_until > now)


class RateLimits:
    """One sliding window per key (an address, a token), each ``per_minute`` requests a ``window``."""

    def __init__(self, per_minute: int | None, *, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.per_minute, self.window, self.clock, self.max_keys = per_minute, window, clock, max_keys
        self._windows: OrderedDict[str, SlidingWindow] = OrderedDict()

    def check(self, key: str) -> float:
        """Admit one request for ``key`` now (0) or say how many seconds until it could be."""
        if self.per_minute is None:
            return 0.0
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = SlidingWindow(self.per_minute, window=self.window, clock=self.clock)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return found.try_acquire()


@dataclass
class Counters:
    """What the gate counts for ``/metrics``: answers by route and status, refusals by reason, latencies."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    histogram: list[int] = field(default_factory=list)
    seconds_sum: float = 0.0
    seconds_count: int = 0

    def __post_init__(self) -> None:
        self.histogram = [0] * len(self.buckets)

    def answered(self, method: str, route: str, status: int, took: float) -> None:
        """Count one answered request."""
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        for i, bound in enumerate(self.buckets):
            if took <= bound:
                self.histogram[i] += 1
        self.seconds_sum += took
        self.seconds_count += 1

    def refuse(self, reason: str) -> None:
        """Count one request refused at the gate."""
        self.refused[reason] = self.refused.get(reason, 0) + 1


class Gatekeeper:
    """The ASGI middleware of the module docstring, around the Starlette app's routes.

    ``store_of(scope)`` is the store whose audit chain a request's row goes to (its project's,
    else the home store); ``audit(path, action, detail)`` writes that row.
    """

    def __init__(self, app: Any, *, settings: ServerSettings, auth: Authenticator, threats: ClientThreats,
                 ip_limits: RateLimits, token_limits: RateLimits, counters: Counters,
                 store_of: Callable[[dict[str, Any]], Path],
                 audit: Callable[[Path, str, dict[str, Any]], Awaitable[None]]) -> None:
        self.app, self.settings, self.auth, self.threats = app, settings, auth, threats
        self.ip_limits, self.token_limits, self.counters = ip_limits, token_limits, counters
        self.store_of, self.audit = store_of, audit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """One request through the gate (lifespan and other kinds pass straight through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = client_address(scope, self.settings.trusted_proxies)
        scope[CLIENT_KEY] = client
        scope[HTTPS_KEY] = _https(scope, self.settings.trusted_proxies)
        refusal = self._at_the_door(client, scope["path"])
        if refusal is None:
            principal, refusal = await self._authenticate(scope, client)
            scope[PRINCIPAL_KEY] = principal
        if refusal is not None:
            status, reason, message, retry = refusal
            self.counters.refuse(reason)
            if reason in WEIGHTS:
                self._found(client, reason, f"{scope['method']} {scope['path']}: {message}")
            await _answer(send, status, {"error": message, "reason": reason}, retry)
            self.counters.answered(scope["method"], "(refused)", status, time.perf_counter() - started)
            return
        await self._through(scope, receive, send, client, started)

    def _at_the_door(self, client: str, path: str) -> tuple[int, str, str, float | None] | None:
        """Address lists, a block, the per-address rate limit: a refusal, or ``None`` to go on."""
        s = self.settings
        if (s.deny and _in(client, s.deny)) or (s.allow and not _in(client, s.allow)):
            return 403, "address", f"the address {client} may not use this server", None
        left = self.threats.blocked(client)
        if left > 0:
            return 403, "blocked", f"{client} is blocked for its threat score", left
        if path not in _OPEN_PATHS:
            wait = self.ip_limits.check(client)
            if wait > 0:
                return 429, "rate_limited", f"too many requests from {client}", wait
        return None

    async def _authenticate(self, scope: dict[str, Any], client: str
                            ) -> tuple[Principal, tuple[int, str, str, float | None] | None]:
        """The principal of the request's token or cookie, or the refusal of a bad token or a forged change."""
        headers = _headers(scope)
        bearer = headers.get("authorization", "")
        principal: Principal | None = None
        if bearer:
            kind, _, text = bearer.partition(" ")
            if kind.lower() != "bearer" or not text.strip():
                return ANONYMOUS, (401, "bad_token", "the Authorization header must be 'Bearer <token>'", None)
            principal = await anyio.to_thread.run_sync(self.auth.from_token, text.strip())
            if principal is None:
                return ANONYMOUS, (401, "bad_token", "the token is not valid (unknown, revoked or expired)", None)
        elif scope["path"] != _LOGIN:  # a login makes a new session: an old cookie plays no part in it
            cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
            if cookie:
                principal = await anyio.to_thread.run_sync(self.auth.from_session, cookie)
                if principal is not None and scope["method"] in _CHANGES and not _same_origin(headers, principal):
                    return ANONYMOUS, (403, "csrf", "a change with a session cookie must come from this server's "
                                                    "pages or carry X-CSRF-Token", None)
        if principal is None:
            return ANONYMOUS, None
        wait = self.token_limits.check(f"{principal.kind}:{principal.id or principal.name}")
        if wait > 0:
            return principal, (429, "rate_limited", f"too many requests from {principal.label}", wait)
        return principal, None

    async def _through(self, scope: dict[str, Any], receive: Any, send: Any, client: str, started: float) -> None:
        """Call the routes, then count and audit by the answer."""
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            self.counters.answered(scope["method"], route, status, time.perf_counter() - started)
            self._judge(scope, client, status)
        principal = scope.get(PRINCIPAL_KEY, ANONYMOUS)
        if scope["method"] in _CHANGES and not scope.get(AUDITED_KEY) and status != 429 and (
                principal.kind != "anonymous" or status < 400):  # a refused stranger changed nothing
            await self._audit_after(scope, client, status)

    def _judge(self, scope: dict[str, Any], client: str, status: int) -> None:
        """What the answer says about the client, added to its score."""
        kind = scope.get(FINDING_KEY)
        if kind is None:
            principal = scope.get(PRINCIPAL_KEY, ANONYMOUS)
            kind = {401: "unauthenticated" if principal.kind == "anonymous" else "denied", 403: "denied",
                    400: "malformed", 413: "malformed", 422: "malformed", 404: "not_found"}.get(status)
        if kind is not None:
            self._found(client, kind, f"{scope['method']} {scope['path']} -> {status}")

    def _found(self, client: str, kind: str, detail: str) -> None:
        if self.threats.record(client, kind, detail):
            log.warning("goatclaw serve: %s blocked for %.0fs (threat score %.1f; last: %s)", client,
                        self.threats.block_for, self.threats.score(client), detail)

    async def _audit_after(self, scope: dict[str, Any], client: str, status: int) -> None:
        principal = scope.get(PRINCIPAL_KEY, ANONYMOUS)
        detail = {"principal": principal.label, "method": scope["method"], "path": scope["path"], "status": status,
                  "client": client}
        try:
            await self.audit(self.store_of(scope), "http.request", detail)
        except Exception as exc:  # the answer is sent: say loudly that its row is missing
            log.error("goatclaw serve: could not audit %s %s by %s: %s", scope["method"], scope["path"],
                      principal.label, exc)


def _https(scope: dict[str, Any], trusted: tuple[Network, ...]) -> bool:
    """Whether the client's connection is TLS: ours, or a trusted proxy's (``X-Forwarded-Proto: https``)."""
    if scope.get("scheme") == "https":
        return True
    peer = (scope.get("client") or ("", 0))[0]
    return bool(trusted) and _in(str(peer), trusted) and _headers(scope).get("x-forwarded-proto", "").split(",")[
        0].strip().lower() == "https"


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name (a repeated header: its values joined by ', ')."""
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        found[name] = f"{found[name]}, {text}" if name in found and name != "cookie" else text
    return found


def _cookie(header: str, name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def _same_origin(headers: dict[str, str], principal: Principal) -> bool:
    """A cookie-authenticated change: its ``X-CSRF-Token`` is the session's, or it comes from this host."""
    token = headers.get("x-csrf-token")
    if token is not None:
        import hmac

        return bool(principal.csrf) and hmac.compare_digest(token, principal.csrf or "")
    origin = headers.get("origin") or headers.get("referer")
    host = headers.get("x-forwarded-host") or headers.get("host")
    if not origin or not host or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.split(",")[0].strip().lower()


async def _answer(send: Any, status: int, body: dict[str, Any], retry_after: float | None) -> None:
    """A JSON answer straight from the gate (the routes never saw the request)."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
