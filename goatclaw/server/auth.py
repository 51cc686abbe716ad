"""Who may do what on ``goatclaw serve``: API tokens, users with a password and TOTP, browser sessions.

Everything lives in the *home* store (the store of the first project the server hosts, see
:mod:`goatclaw.server.app`), in the tables of migration ``020_server_auth``:

* **API tokens** (``goatclaw tokens create``) look like ``gct_<id>_<secret>``. The id is public
  (it names the token in lists and audit rows); of the secret only its SHA-256 is stored (a
  token is 256 random bits, so a slow hash would add nothing but latency). The token text is
  shown once, when it is made.
* **Users** (``goatclaw users add``) have an argon2id password hash and a TOTP secret (RFC 6238,
  30 s steps; any authenticator app). A login needs both; a code is accepted once (its time
  step is remembered), so a code seen over someone's shoulder cannot be replayed. The secret
  is stored sealed under a key kept beside the store, not in it (:mod:`goatclaw.server.sealing`);
  a row from before sealing is sealed at its user's next login.
* **Sessions** are what a browser keeps after a login: a random cookie (``goatclaw_session``,
  HttpOnly, SameSite=Strict) of which the store keeps the SHA-256, with an absolute expiry;
  logging out, disabling the user or ``revoke_sessions`` ends them at once.

Scopes: ``read`` (see pipelines, runs, events), ``run`` (trigger, cancel, resume), ``approve``
(decide approval steps), ``admin`` (everything). Any scope includes ``read``. Projects: a token
or user names the projects it may touch; none named means every project of the server.

How a route gets the current principal and checks a scope (any room's routes, the dashboard's
too; the :class:`~goatclaw.server.guard.Gatekeeper` middleware has authenticated the request
before any route runs)::

    from goatclaw.server.auth import principal_of, require

    async def my_page(request: Request) -> Response:
        who = principal_of(request)          # Principal(kind='user', name='ann', ...) or ANONYMOUS
        require(request, "run", project="demo")  # raises Denied: 401 when anonymous, 403 when not allowed
        ...

``require`` returns the principal, so ``who = require(request, "read")`` does both. A denied
call counts against the client's threat score (the middleware sees the 401/403). Pages that
take a browser form with a session cookie need nothing more: the middleware refuses a
cookie-authenticated POST/PUT/PATCH/DELETE unless it carries the session's ``X-CSRF-Token``
(``csrf_token`` in the login's answer and in ``GET /auth/me``) or its ``Origin`` (else
``Referer``) is the server itself (a plain HTML form posted from the server's own pages).

The user and token commands' half (no web framework) is :mod:`goatclaw.server.accounts`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from goatclaw.server.accounts import SCOPES, TOKEN_PREFIX, digest, password_hasher, token_id_of
from goatclaw.server.sealing import SealError, is_sealed, seal, unseal
from goatclaw.store import Store

log = logging.getLogger("goatclaw.server")

__all__ = ["ANONYMOUS", "PRINCIPAL_KEY", "SCOPES", "SESSION_COOKIE", "Authenticator", "Denied", "LoginResult",
           "Principal", "principal_of", "require"]

#: The browser session's cookie.
SESSION_COOKIE = "goatclaw_session"
#: Where the middleware puts the request's principal (``request.scope[PRINCIPAL_KEY]``).
PRINCIPAL_KEY = "goatclaw.principal"


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, with the scopes and projects they hold.

    ``kind`` is ``token``, ``user`` or ``anonymous``; ``projects`` is ``None`` for every
    project. ``session`` is the hash of the browser session for a user who logged in (the
    middleware's CSRF check needs it), ``None`` for a token.
    """

    kind: str
    name: str
    scopes: frozenset[str] = frozenset()
    projects: frozenset[str] | None = frozenset()
    id: str | None = None
    session: str | None = field(default=None, repr=False)
    csrf: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """``token:ci``, ``user:ann`` or ``anonymous``: how audit rows name the principal."""
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.name}"

    def has(self, scope: str) -> bool:
        """Whether the principal holds ``scope`` (``admin`` holds all; any scope holds ``read``)."""
        return "admin" in self.scopes or scope in self.scopes or (scope == "read" and bool(self.scopes))

    def in_project(self, project: str | None) -> bool:
        """Whether the principal may touch ``project`` (``None``: a question about no project)."""
        return project is None or self.projects is None or project in self.projects

    def may(self, scope: str, project: str | None = None) -> bool:
        """:meth:`has` ``scope`` and :meth:`in_project` ``project``."""
        return self.has(scope) and self.in_project(project)

    def to_dict(self) -> dict[str, Any]:
        """The principal as plain data (no secrets)."""
        return {"kind": self.kind, "name": self.name, "scopes": sorted(self.scopes),
                "projects": None if self.projects is None else sorted(self.projects), "id": self.id}


ANONYMOUS = Principal("anonymous", "anonymous")


class Denied(HTTPException):
    """A request its principal may not make: 401 (nobody authenticated) or 403 (not allowed)."""

    def __init__(self, status_code: int, detail: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="goatclaw"'} if status_code == 401 else None
        super().__init__(status_code, detail, headers)


def principal_of(request: HTTPConnection) -> Principal:
    """The principal the middleware authenticated for ``request`` (:data:`ANONYMOUS` if none)."""
    found = request.scope.get(PRINCIPAL_KEY)
    return found if isinstance(found, Principal) else ANONYMOUS


def require(request: HTTPConnection, scope: str, project: str | None = None) -> Principal:
    """The request's principal if it holds ``scope`` (in ``project``, if given); else raise :class:`Denied`."""
    who = principal_of(request)
    if who.kind == "anonymous":
        raise Denied(401, "authentication required: an API token (Authorization: Bearer …) or a session")
    if not who.has(scope):
        raise Denied(403, f"{who.label} lacks the '{scope}' scope")
    if not who.in_project(project):
        raise Denied(403, f"{who.label} may not use the project '{project}'")
    return who


# -- the server's side -------------------------------------------------------------------------


@dataclass
class LoginResult:
    """A login that worked: the cookie to set, its expiry, the CSRF token, the principal."""

    cookie: str
    expires_at: float
    csrf: str
    principal: Principal


class Authenticator:
    """What the server asks of the home store: who a token, a cookie or a login is.

    The methods are blocking (SQLite, argon2): the middleware and routes call them in a
    worker thread. ``connect(path)`` gives the thread's connection to the store
    (:class:`goatclaw.server.stores.Stores`); ``clock`` is the wall clock (tests move it).
    """

    def __init__(self, store: Path, connect: Callable[[Path], Store], *, session_ttl: float = 12 * 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.connect, self.session_ttl, self.clock = store, connect, session_ttl, clock
        self._dummy: str | None = None

    def from_token(self, text: str) -> Principal | None:
        """The principal of an API token's text; ``None`` for an unknown, wrong, revoked or expired token."""
        token_id = token_id_of(text)
        if token_id is None:
            return None
        row = self.connect(self.store).token(token_id)
        secret = text[len(TOKEN_PREFIX) + len(token_id) + 1:]
        if row is None or not hmac.compare_digest(row["hash"], digest(secret)):
            return None
        if row["revoked_at"] is not None or (row["expires_at"] is not None and row["expires_at"] <= self.clock()):
            return None
        projects = None if row["projects"] is None else frozenset(row["projects"])
        return Principal("token", row["name"], frozenset(row["scopes"]), projects, id=token_id)

    def from_session(self, cookie: str) -> Principal | None:
        """The principal of a session cookie; ``None`` when unknown, expired, revoked, or its user is disabled."""
        hashed = digest(cookie)
        db = self.connect(self.store)
        row = db.session(hashed)
        if row is None or row["revoked_at"] is not None or row["expires_at"] <= self.clock():
            return None
        user = db.user(row["user"])
        if user is None or user["disabled_at"] is not None:
            return None
        return self._user_principal(user, hashed)

    def login(self, name: str, password: str, code: str, client: str | None = None) -> LoginResult | None:
        """Check a password and a TOTP code; a new session, or ``None`` (which one failed is not said)."""
        from argon2.exceptions import Argon2Error

        db = self.connect(self.store)
        user = db.user(name)
        hasher = password_hasher()
        if user is None or user["disabled_at"] is not None:
            try:  # the same work as for a real user: the answer's timing does not tell which names exist
                hasher.verify(self._dummy_hash(hasher), password)
            except Argon2Error:
                pass
            return None
        try:
            hasher.verify(user["password"], password)
        except Argon2Error:
            return None
        stored = user["totp_secret"]
        try:
            secret = unseal(self.store, name, stored) if is_sealed(stored) else stored
        except SealError as exc:  # the operator's problem to fix: said in the log, a failed login to the client
            log.error("goatclaw serve: login of %s refused: %s", name, exc)
            return None
        step = self._totp_step(secret, code)
        if step is None or not db.use_totp_step(name, step):
            return None
        if stored and not is_sealed(stored):  # a row from before sealing: sealed now that its secret was proven
            try:
                db.set_user(name, totp_secret=seal(self.store, name, stored))
            except SealError as exc:
                log.warning("goatclaw serve: user %s's TOTP secret stays unsealed: %s", name, exc)
        if hasher.check_needs_rehash(user["password"]):
            db.set_user(name, password=hasher.hash(password))
        cookie, now = secrets.token_urlsafe(32), self.clock()
        expires = now + self.session_ttl
        db.add_session(digest(cookie), name, expires_at=expires, client=client, now=now)
        principal = self._user_principal(user, digest(cookie))
        return LoginResult(cookie, expires, self.csrf_token(principal), principal)

    def logout(self, principal: Principal) -> bool:
        """End the principal's browser session (a token has none); whether one was live."""
        if principal.session is None:
            return False
        return bool(self.connect(self.store).revoke_sessions(digest=principal.session, now=self.clock()))

    @staticmethod
    def csrf_token(principal: Principal) -> str:
        """The session's CSRF token: what a cookie-authenticated change sends as ``X-CSRF-Token``."""
        return principal.csrf or ""

    def _user_principal(self, user: dict[str, Any], session: str) -> Principal:
        projects = None if user["projects"] is None else frozenset(user["projects"])
        csrf = hmac.new(session.encode(), b"goatclaw csrf", hashlib.sha256).hexdigest()[:32]
        return Principal("user", user["name"], frozenset(user["scopes"]), projects, session=session, csrf=csrf)

    def _totp_step(self, secret: str | None, code: str) -> int | None:
        """The time step (now, or one either side for clock drift) whose code is ``code``; ``None`` if none."""
        import pyotp

        code = code.strip().replace(" ", "")
        if not secret or not code.isdigit():
            return None
        totp = pyotp.TOTP(secret)
        now_step = int(self.clock() // totp.interval)
        for step in (now_step, now_step - 1, now_step + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    def _dummy_hash(self, hasher: Any) -> str:
        if self._dummy is None:
            self._dummy = hasher.hash(secrets.token_hex(16))
        return self._dummy
