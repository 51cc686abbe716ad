"""Credentials for the ``http`` and ``graphql`` tasks: ``auth:`` as bearer, basic, API key or OAuth2.

::

    auth: {bearer: "${{ secrets.API_TOKEN }}"}
    auth: {basic: {username: ci, password: "${{ secrets.API_PASSWORD }}"}}
    auth: {api_key: "${{ secrets.API_KEY }}", header: X-API-Key}     # or query: api_key
    auth: {oauth2: {token_url: https://auth.example.com/token, client_id: goatclaw,
                    client_secret: "${{ secrets.CLIENT_SECRET }}", scope: read}}

Values come from ``secrets:`` through templates, so they are masked in logs, events and the
store, and a request that carries one goes only to a host ``permissions.network`` lists by
name (the token URL of OAuth2 included: it receives the client secret). OAuth2 client
credentials (RFC 6749 §4.4) fetch a token once and keep it in this process until it is
30 seconds from expiring; a 401 drops it and fetches a new one, once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from goatclaw.plugin import fail

if TYPE_CHECKING:  # annotations only: http imports this module, never the other way at run time
    from goatclaw.tasks.http import Call, Session

__all__ = ["Auth", "parse_auth"]

#: A token this close to its expiry (seconds) is fetched again rather than sent.
EXPIRY_MARGIN = 30.0
#: How long a token whose answer gave no ``expires_in`` is kept (a 401 drops it sooner).
DEFAULT_LIFETIME = 300.0

_KINDS = ("bearer", "basic", "api_key", "oauth2")
_TOKENS: dict[str, tuple[str, float]] = {}  # cache key -> (access token, monotonic expiry)
_TOKENS_LOCK = threading.Lock()


class Auth:
    """Signs a request. ``refreshable``: a 401 may be cured by :meth:`forget` and signing again."""

    refreshable = False

    async def sign(self, session: Session, call: Call) -> Call:
        """``call`` with the credentials added."""
        raise NotImplementedError

    def forget(self) -> None:
        """Drop a cached credential (only OAuth2 has one)."""


@dataclass(frozen=True)
class _Header(Auth):
    """A fixed header: ``Authorization: Bearer …``, ``Authorization: Basic …`` or an API key header."""

    name: str
    value: str

    async def sign(self, session: Session, call: Call) -> Call:
        return _with_header(call, self.name, self.value)


@dataclass(frozen=True)
class _Query(Auth):
    """An API key sent as a query parameter."""

    name: str
    value: str

    async def sign(self, session: Session, call: Call) -> Call:
        return call.to(call.url, {**call.params, self.name: self.value})


@dataclass
class _OAuth2(Auth):
    """OAuth2 client credentials: a cached bearer token from ``token_url``."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    audience: str | None = None
    client_auth: str = "basic"
    refreshable: bool = field(default=True, init=False)

    @property
    def key(self) -> str:
        parts = [self.token_url, self.client_id, self.client_secret, self.scope or "", self.audience or ""]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    async def sign(self, session: Session, call: Call) -> Call:
        return _with_header(call, "Authorization", f"Bearer {await self.token(session)}")

    def forget(self) -> None:
        with _TOKENS_LOCK:
            _TOKENS.pop(self.key, None)

    async def token(self, session: Session) -> str:
        """The cached token if it has more than :data:`EXPIRY_MARGIN` seconds left, else a new one."""
        with _TOKENS_LOCK:
            cached = _TOKENS.get(self.key)
        if cached is not None and cached[1] - time.monotonic() > EXPIRY_MARGIN:
            session.ctx.audit("oauth2.token", token_url=self.token_url, client_id=self.client_id, cached=True)
            return cached[0]
        token, lifetime = await self._fetch(session)
        with _TOKENS_LOCK:
            _TOKENS[self.key] = (token, time.monotonic() + lifetime)
        session.ctx.audit("oauth2.token", token_url=self.token_url, client_id=self.client_id, cached=False)
        return token

    async def _fetch(self, session: Session) -> tuple[str, float]:
        from goatclaw.tasks.http import Call

        form = {"grant_type": "client_credentials"}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if self.client_auth == "basic":
            headers["Authorization"] = _basic(self.client_id, self.client_secret)
        else:
            form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        form |= {k: v for k, v in (("scope", self.scope), ("audience", self.audience)) if v}
        call = Call("POST", self.token_url, headers, {}, None, urlencode(form))
        resp, raw = await session.exchange(call, range(200, 500), sign=False)  # 5xx/429: the usual classes
        if resp.status_code >= 300:  # RFC 6749 §5.2: 400 or 401 with {"error": "invalid_client", ...}
            fail(f"the OAuth2 token endpoint {self.token_url} refused the client credentials ({resp.status_code}): "
                 f"{_oauth_error(raw)}", error_class="auth", status=resp.status_code)
        return _token_of(raw, self.token_url)


def parse_auth(spec: Any) -> Auth | None:
    """``auth:`` as an :class:`Auth`, or a task failure ``invalid_input`` saying what is wrong."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        fail(f"auth must be a mapping such as {{bearer: ...}}, not {spec!r}", error_class="invalid_input")
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        fail(f"auth needs exactly one of {', '.join(_KINDS)}; got {', '.join(map(str, spec)) or 'none'}",
             error_class="invalid_input")
    kind = kinds[0]
    _only(spec, {kind, "header", "query"} if kind == "api_key" else {kind}, "auth")
    value = spec[kind]
    if kind == "bearer":
        return _Header("Authorization", f"Bearer {_text(value, 'auth.bearer')}")
    if kind == "basic":
        fields = _mapping(value, "auth.basic", required=("username", "password"), allowed=("username", "password"))
        return _Header("Authorization", _basic(fields["username"], fields["password"]))
    if kind == "api_key":
        return _api_key(spec)
    fields = _mapping(value, "auth.oauth2", required=("token_url", "client_id", "client_secret"),
                      allowed=("token_url", "client_id", "client_secret", "scope", "audience", "client_auth"))
    if not fields["token_url"].lower().startswith(("http://", "https://")):
        fail(f"auth.oauth2.token_url must start with http:// or https://, not '{fields['token_url']}'",
             error_class="invalid_input")
    if fields.get("client_auth", "basic") not in ("basic", "body"):
        fail("auth.oauth2.client_auth must be basic (an Authorization header) or body (form fields)",
             error_class="invalid_input")
    return _OAuth2(fields["token_url"], fields["client_id"], fields["client_secret"], fields.get("scope"),
                   fields.get("audience"), fields.get("client_auth", "basic"))


def _api_key(spec: Mapping[str, Any]) -> Auth:
    key = _text(spec["api_key"], "auth.api_key")
    header, query = spec.get("header"), spec.get("query")
    if (header is None) == (query is None):
        fail("auth.api_key needs exactly one of header: (a header name) or query: (a parameter name)",
             error_class="invalid_input")
    if header is not None:
        return _Header(_text(header, "auth.header"), key)
    return _Query(_text(query, "auth.query"), key)


def _token_of(raw: bytes, token_url: str) -> tuple[str, float]:
    """The access token and its lifetime from a token endpoint's JSON answer."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        fail(f"the OAuth2 token endpoint {token_url} answered without an access_token", error_class="auth")
    lifetime = data.get("expires_in")
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
        lifetime = DEFAULT_LIFETIME
    return token, float(lifetime)


def _oauth_error(raw: bytes) -> str:
    """``error: error_description`` of a token endpoint's refusal (or the start of its body)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("error"):
        return ": ".join(str(data[k])[:200] for k in ("error", "error_description") if data.get(k))
    return raw[:200].decode("utf-8", errors="replace").strip() or "no detail"


def _with_header(call: Call, name: str, value: str) -> Call:
    from dataclasses import replace

    kept = {k: v for k, v in call.headers.items() if str(k).lower() != name.lower()}
    return replace(call, headers={**kept, name: value})


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        fail(f"{where} must be non-empty text (a ${{{{ secrets.NAME }}}} template, say)", error_class="invalid_input")
    return value


def _only(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(map(str, spec)) - allowed)
    if extra:
        fail(f"{where} takes no key {', '.join(extra)} (it takes: {', '.join(sorted(allowed))})",
             error_class="invalid_input")


def _mapping(value: Any, where: str, *, required: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        fail(f"{where} must be a mapping with {', '.join(required)}", error_class="invalid_input")
    _only(value, set(allowed), where)
    missing = [k for k in required if k not in value]
    if missing:
        fail(f"{where} needs {', '.join(missing)}", error_class="invalid_input")
    return {str(k): _text(v, f"{where}.{k}") for k, v in value.items()}
