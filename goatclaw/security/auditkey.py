"""The audit key: read once, held by the process, gone from its environment.

The key comes from :data:`KEY_ENV` (the text itself) or :data:`KEY_FILE_ENV` (a file
holding it; the variable wins when both are set). The first :func:`audit_key` call takes
it: the value is kept in this module, both variables are removed from ``os.environ`` (so
no child process inherits them and no template sees them), and on Linux the value's bytes
are overwritten with NULs in the process's *initial* environment block too, which is what
``/proc/<pid>/environ`` shows and what ``unsetenv`` leaves alone. Without that last step a
``shell`` task could read the key from ``/proc/$PPID/environ``.

What this cannot do: clear the key from the environment of the processes that started
goatclaw (the shell or CI step that exported it: their ``/proc/<pid>/environ`` is theirs),
or from goatclaw's own memory, which a task running as the same user can read through
``/proc/<pid>/mem`` where ptrace between siblings is allowed (no Yama, or
``kernel.yama.ptrace_scope=0``). Hence :data:`KEY_FILE_ENV` pointing to a one-shot
source (a pipe such as ``<(vault read ...)``, a file removed after the start), and
tasks under another user where that matters.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from goatclaw.errors import GoatclawError

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "audit_key", "forget_audit_key", "scrub_initial_environ", "with_audit_key"]

#: The environment variable holding the audit key (any text; keep it out of the store's reach).
KEY_ENV = "GOATCLAW_AUDIT_KEY"
#: The environment variable naming a file that holds the audit key (the recommended way).
KEY_FILE_ENV = "GOATCLAW_AUDIT_KEY_FILE"
#: The largest key file read.
MAX_KEY_FILE_BYTES = 64 * 1024

_held: list[bytes | None] = [None]  # the key this process took (one slot: module state, set by audit_key)


def audit_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The audit key (``None`` when none was given).

    With ``environ``, read it from that mapping and change nothing. Otherwise take it from
    the process environment when it is set there (removing it, see the module docstring),
    else return the key taken before.
    """
    if environ is not None:
        return _read(environ)
    if KEY_ENV in os.environ or KEY_FILE_ENV in os.environ:
        try:
            _held[0] = _read(os.environ)
        finally:
            _remove_from_environment()
    return _held[0]


def with_audit_key(secrets: Mapping[str, str]) -> dict[str, str]:
    """``secrets`` and, under the name :data:`KEY_ENV`, the audit key: what a run's redactor masks."""
    key = audit_key()
    if key is None:
        return dict(secrets)
    return {**secrets, KEY_ENV: key.decode("utf-8", "replace")}


def forget_audit_key() -> None:
    """Drop the key this process holds (a later run writes plain rows unless a key is given again)."""
    _held[0] = None


def _read(environ: Mapping[str, str]) -> bytes | None:
    value = environ.get(KEY_ENV)
    if value:
        return value.encode()
    path = environ.get(KEY_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, "rb") as fh:  # a pipe too (process substitution): read once, never stat'ed for size
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise GoatclawError(f"{KEY_FILE_ENV}: cannot read the audit key from '{path}': {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise GoatclawError(f"{KEY_FILE_ENV}: '{path}' is over {MAX_KEY_FILE_BYTES:,} bytes; it should hold the key")
    key = data.rstrip(b"\r\n")
    if not key:
        raise GoatclawError(f"{KEY_FILE_ENV}: '{path}' is empty")
    return key


def _remove_from_environment() -> None:
    scrub_initial_environ((KEY_ENV, KEY_FILE_ENV))
    for name in (KEY_ENV, KEY_FILE_ENV):
        os.environ.pop(name, None)  # unsetenv: children and os.environ no longer have it


def scrub_initial_environ(names: tuple[str, ...]) -> bool:
    """Overwrite the values of ``names`` with NULs in this process's initial environment block (Linux).

    ``/proc/<pid>/environ`` reads that block from the process's memory, and ``unsetenv``
    only drops the pointer to it. Whether the block could be written (``False`` elsewhere).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        start, end = _environ_bounds()
        block = Path("/proc/self/environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    if end - start != len(block):
        return False
    prefixes = tuple(f"{name}=".encode() for name in names)
    offset = 0
    for entry in block.split(b"\0"):
        for prefix in prefixes:
            if entry.startswith(prefix) and len(entry) > len(prefix):
                ctypes.memset(start + offset + len(prefix), 0, len(entry) - len(prefix))
        offset += len(entry) + 1
    return True


def _environ_bounds() -> tuple[int, int]:
    """``env_start`` and ``env_end`` (fields 50 and 51 of ``/proc/self/stat``, Linux 3.5 and later)."""
    stat = Path("/proc/self/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 on
    return int(fields[50 - 3]), int(fields[51 - 3])
