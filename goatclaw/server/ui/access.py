"""Who is looking at the dashboard, and what they may change: principals, sessions, CSRF tokens.

The pages ask an :class:`Auth` for the request's :class:`Principal` and its CSRF token; they
never see a password or a cookie format. Two implementations:

- :class:`LocalAuth`, for ``goatclaw ui``: one person on 127.0.0.1. The URL printed at start
  carries a one-time token; the first visit trades it for a session cookie (``HttpOnly``,
  ``SameSite=Strict``) and the token is spent. Sessions live in the process and expire.
- the server's auth (users with argon2 passwords and TOTP, sessions in the store, API tokens
  with scopes), which ``goatclaw serve`` hands to :func:`goatclaw.server.ui.ui_routes` through
  the same interface.

Scopes are the server's: ``read`` sees everything and changes nothing; ``run`` may re-run,
resume, cancel and replay; ``approve`` may decide approvals; ``admin`` may do all of it and
reset breakers.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["COOKIE", "Auth", "LocalAuth", "Principal", "Session"]

#: The session cookie of ``goatclaw ui``.
COOKIE = "goatclaw_ui"
SCOPES = ("read", "run", "approve", "admin")


@dataclass(frozen=True)
class Principal:
    """A user or token the request acts for, and its scopes."""

    name: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        """Whether this principal may do what ``scope`` allows (``admin`` allows everything, any scope ``read``)."""
        return "admin" in self.scopes or scope in self.scopes or (scope == "read" and bool(self.scopes))

    def to_dict(self) -> dict[str, Any]:
        """The principal as the pages' JSON twins show it."""
        return {"name": self.name, "scopes": sorted(self.scopes)}


class Auth(Protocol):
    """What the pages need from an authentication scheme."""

    def principal(self, request: Any) -> Principal | None:
        """The principal of ``request`` (a Starlette request), or ``None`` when not signed in."""

    def csrf_token(self, request: Any) -> str:
        """The CSRF token forms of this request's session must send back."""

    def login_url(self, request: Any) -> str | None:
        """Where to send someone who is not signed in (``None``: answer 401)."""


@dataclass
class Session:
    """One signed-in browser: who, its CSRF token, when it expires."""

    principal: Principal
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = 0.0


class LocalAuth:
    """``goatclaw ui``'s auth: a one-time token in the printed URL, exchanged for a session cookie.

    ``scopes`` are the session's (``{"admin"}`` by default; ``{"read"}`` for ``--read-only``).
    """

    def __init__(self, *, scopes: frozenset[str] = frozenset({"admin"}), ttl: float = 12 * 3600,
                 name: str = "local", clock: Any = time.time) -> None:
        self.token: str | None = secrets.token_urlsafe(32)
        self.scopes = scopes
        self.ttl = ttl
        self.name = name
        self.clock = clock
        self.sessions: dict[str, Session] = {}

    def exchange(self, token: str) -> str | None:
        """A new session id for the one-time ``token``, which is then spent; ``None`` for a wrong or spent one."""
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        self.token = None
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Session(Principal(self.name, self.scopes), expires=self.clock() + self.ttl)
        return sid

    def session(self, request: Any) -> Session | None:
        """The live session of the request's cookie."""
        sid = request.cookies.get(COOKIE)
        found = self.sessions.get(sid) if sid else None
        if found is None:
            return None
        if found.expires < self.clock():
            self.sessions.pop(sid, None)
            return None
        return found

    def principal(self, request: Any) -> Principal | None:
        """See :meth:`Auth.principal`."""
        found = self.session(request)
        return None if found is None else found.principal

    def csrf_token(self, request: Any) -> str:
        """See :meth:`Auth.csrf_token`."""
        found = self.session(request)
        return "" if found is None else found.csrf

    def login_url(self, request: Any) -> str | None:
        """``goatclaw ui`` has no login page: the token URL it printed is the way in."""
        return None


def csrf_ok(auth: Auth, request: Any, sent: str | None) -> bool:
    """Whether ``sent`` (a form field or header) is the session's CSRF token, compared in constant time."""
    expected = auth.csrf_token(request)
    return bool(expected) and bool(sent) and hmac.compare_digest(str(sent).encode(), expected.encode())
