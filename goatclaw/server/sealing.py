"""TOTP secrets sealed at rest: AES-256-GCM under a key that lives beside the store, not in it.

A user's TOTP secret must be readable by the server (it computes the codes), so it cannot
be hashed like a password. It is kept encrypted instead: the ``users.totp_secret`` column
holds ``sealed:v1:`` and the URL-safe base64 of a random 12-byte nonce followed by the
AES-GCM ciphertext, with the user's name as associated data (a sealed secret copied onto
another user's row does not open). The key is 32 random bytes in a file of its own:
:data:`KEY_FILE_ENV` names it, else it is the store's path with ``.key`` appended
(``.goatclaw/goatclaw.db.key``), created with mode 0600 by the first ``goatclaw users add``.
A copy of the store file alone (a backup, a file shared for a bug report) then holds no
second factor; tasks can read neither, since the key file is protected like the store's
own files (:func:`goatclaw.security.permissions.store_files`).

Rows written before sealing hold the secret as it is; :func:`is_sealed` tells them apart,
and the server seals such a row after its first successful login.

Only this module imports ``cryptography``.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from goatclaw.errors import GoatclawError

__all__ = ["KEY_FILE_ENV", "PREFIX", "SealError", "is_sealed", "key_path", "seal", "unseal"]

#: The environment variable naming the key file (default: the store's path with ``.key`` appended).
KEY_FILE_ENV = "GOATCLAW_TOTP_KEY_FILE"
#: How a sealed secret's text begins.
PREFIX = "sealed:v1:"
_KEY_BYTES = 32
_NONCE_BYTES = 12


class SealError(GoatclawError):
    """A secret that cannot be sealed or opened: no key file, a key of the wrong size, a wrong key."""


def key_path(store: str | os.PathLike[str]) -> Path:
    """Where the key of ``store``'s sealed secrets is (``$GOATCLAW_TOTP_KEY_FILE``, else ``<store>.key``)."""
    named = os.environ.get(KEY_FILE_ENV)
    return Path(named) if named else Path(f"{os.fspath(store)}.key")


def is_sealed(stored: str | None) -> bool:
    """Whether a ``totp_secret`` column's text is sealed (else it is a row from before sealing, or empty)."""
    return bool(stored) and str(stored).startswith(PREFIX)


def seal(store: str | os.PathLike[str], name: str, secret: str) -> str:
    """``secret`` sealed for the user ``name`` of ``store`` (the key file is made if there is none yet)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(_key(store, create=True)).encrypt(nonce, secret.encode(), name.encode())
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unseal(store: str | os.PathLike[str], name: str, stored: str) -> str:
    """The secret that :func:`seal` sealed for ``name``; :class:`SealError` when it does not open."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not is_sealed(stored):
        raise SealError(f"user {name}'s TOTP secret is not sealed")
    try:
        raw = base64.urlsafe_b64decode(stored[len(PREFIX):].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SealError(f"user {name}'s sealed TOTP secret is damaged (not base64)") from None
    if len(raw) <= _NONCE_BYTES:
        raise SealError(f"user {name}'s sealed TOTP secret is damaged (too short)")
    try:
        opened = AESGCM(_key(store, create=False)).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], name.encode())
    except InvalidTag:
        raise SealError(f"user {name}'s TOTP secret does not open with the key in {key_path(store)} "
                        "(another key, or a secret sealed for another user)") from None
    return opened.decode()


def _key(store: str | os.PathLike[str], *, create: bool) -> bytes:
    """The key's bytes; made (0600, never overwritten) when ``create`` and there is no key file."""
    path = key_path(store)
    if create and not path.exists():
        _make_key(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise SealError(f"the TOTP key file {path} is missing: the users' sealed TOTP secrets cannot be read "
                        f"(restore it, or add the users again; {KEY_FILE_ENV} names another place)") from None
    except OSError as exc:
        raise SealError(f"cannot read the TOTP key file {path}: {exc.strerror or exc}") from None
    if len(key) != _KEY_BYTES:
        raise SealError(f"the TOTP key file {path} holds {len(key)} bytes, not {_KEY_BYTES}")
    return key


def _make_key(path: Path) -> None:
    """Write a new key to ``path`` whole or not at all: a temporary file, synced, then linked (never replacing one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process made one meanwhile: that one is the key
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the key's name outlives a power cut as the rows it opens do
        finally:
            os.close(folder)
    except OSError as exc:
        raise SealError(f"cannot create the TOTP key file {path}: {exc.strerror or exc}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
