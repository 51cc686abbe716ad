"""Users and API tokens in the home store: what ``goatclaw users`` and ``goatclaw tokens`` call.

No web framework here (the commands stay light); the request-time half, which turns a
token, a cookie or a login into a principal, is :mod:`goatclaw.server.auth`, whose
docstring says how tokens, users and sessions are kept.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from goatclaw.errors import GoatclawError
from goatclaw.store import Store

__all__ = ["SCOPES", "TOKEN_PREFIX", "AuthError", "add_user", "create_token", "digest", "disable_user",
           "list_tokens", "list_users", "parse_scopes", "password_hasher", "revoke_token", "token_id_of", "totp_uri"]

#: The scopes a token or user may hold; any one of them includes ``read``, ``admin`` includes all.
SCOPES = ("read", "run", "approve", "admin")
#: How every token's text begins.
TOKEN_PREFIX = "gct_"
_TOTP_ISSUER = "goatclaw"


class AuthError(GoatclawError):
    """A user or token command that cannot be done (a taken name, an unknown scope)."""

    exit_code = 2


def parse_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Scopes from ``read,run`` or repeated values, checked and in :data:`SCOPES` order."""
    wanted = {s.strip() for v in values for s in v.split(",") if s.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise AuthError(f"unknown scope {', '.join(map(repr, unknown))} (scopes: {', '.join(SCOPES)})")
    if not wanted:
        raise AuthError(f"give at least one scope ({', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in wanted)


def digest(text: str) -> str:
    """The SHA-256 (hex) kept in place of a token's secret or a session's cookie."""
    return hashlib.sha256(text.encode()).hexdigest()


def _projects(projects: Sequence[str] | None) -> list[str] | None:
    return None if not projects else sorted(set(projects))


# -- tokens -----------------------------------------------------------------------------------


def create_token(store: str | os.PathLike[str], name: str, scopes: Iterable[str], *,
                 projects: Sequence[str] | None = None, expires_in: float | None = None,
                 created_by: str | None = None, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """Make an API token: its text (shown once, stored only hashed) and its row (without the hash)."""
    checked = parse_scopes(scopes)
    if not name.strip():
        raise AuthError("a token needs a name")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    at = time.time() if now is None else now
    with Store.open(store) as db:
        db.add_token(token_id, name, digest(secret), checked, _projects(projects), created_by=created_by,
                     expires_at=None if expires_in is None else at + expires_in, now=at)
        row = db.token(token_id)
    assert row is not None
    return f"{TOKEN_PREFIX}{token_id}_{secret}", _shown_token(row)


def token_id_of(text: str) -> str | None:
    """The public id of a token's text, or ``None`` when the text is not shaped like a token."""
    if not text.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = text[len(TOKEN_PREFIX):].partition("_")
    return token_id if sep and token_id and secret else None


def revoke_token(store: str | os.PathLike[str], ref: str) -> int:
    """Revoke the token with id or name ``ref`` (a token text names its id); how many were revoked."""
    with Store.open(store) as db:
        return db.revoke_token(token_id_of(ref) or ref)


def list_tokens(store: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every token: id, name, scopes, projects, when made, by whom, expiry, revocation (never the hash)."""
    with Store.open(store) as db:
        return [_shown_token(r) for r in db.tokens()]


def _shown_token(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "hash"}


# -- users ------------------------------------------------------------------------------------


def password_hasher() -> Any:
    """argon2-cffi's hasher (argon2id, the library's current RFC 9106 defaults)."""
    from argon2 import PasswordHasher

    return PasswordHasher()


def add_user(store: str | os.PathLike[str], name: str, password: str, scopes: Iterable[str], *,
             projects: Sequence[str] | None = None, totp_secret: str | None = None,
             now: float | None = None) -> str:
    """Add a user with a password (kept as its argon2id hash) and a TOTP secret; the secret (show it once).

    The secret is stored sealed (:mod:`goatclaw.server.sealing`: the key file beside the store is
    made the first time).
    """
    import pyotp

    from goatclaw.server.sealing import seal

    checked = parse_scopes(scopes)
    if not name.strip() or ":" in name:
        raise AuthError("a user name must be non-empty and without ':'")
    if len(password) < 8:
        raise AuthError("a password needs at least 8 characters")
    secret = totp_secret or pyotp.random_base32()
    with Store.open(store) as db:  # (opening makes the store's folder, where the key file goes)
        sealed = seal(store, name, secret)
        if not db.add_user(name, password_hasher().hash(password), sealed, checked, _projects(projects), now=now):
            raise AuthError(f"there is a user '{name}' already")
    return secret


def totp_uri(name: str, secret: str) -> str:
    """The ``otpauth://`` URI of a user's TOTP secret (what an authenticator app scans as a QR code)."""
    import pyotp

    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=_TOTP_ISSUER)


def list_users(store: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every user: name, scopes, projects, when added, when disabled (never the hash or the TOTP secret)."""
    with Store.open(store) as db:
        return [{k: v for k, v in r.items() if k not in ("password", "totp_secret", "totp_step")} for r in db.users()]


def disable_user(store: str | os.PathLike[str], name: str, *, enable: bool = False,
                 now: float | None = None) -> int:
    """Disable a user (no login; every session of theirs revoked) or enable them again; sessions ended."""
    at = time.time() if now is None else now
    with Store.open(store) as db:
        if not db.set_user(name, disabled_at=None if enable else at):
            raise AuthError(f"no user '{name}'")
        return 0 if enable else db.revoke_sessions(user=name, now=at)


