"""Which process runs a stored run, and whether it still does.

A run's ``owner`` tag names the process that runs it: ``host:boot:pid:start``, where
``boot`` is the kernel's boot id with the process's pid namespace, and ``start`` the
process's start time in clock ticks (Linux; empty elsewhere). Together they tell a
process that is gone (a ``kill -9``, a reboot, a reused pid) from one that is still
running the run, so that ``runs`` can say a run was interrupted and ``--resume``
refuses to run a live run a second time. A process in another pid namespace (another
container, even one sharing the host's name) is unknown, never taken for gone.
"""

from __future__ import annotations

import os
import socket
from enum import Enum
from pathlib import Path

__all__ = ["Liveness", "current_owner", "owner_pid", "owner_state"]

_PROC = Path("/proc")


class Liveness(str, Enum):
    """What is known of a run's owner process."""

    ALIVE = "alive"  # the very process (same pid, same start) is running on this machine
    GONE = "gone"  # this machine, and that process is not running any more
    UNKNOWN = "unknown"  # another machine, or no owner was recorded

    def __str__(self) -> str:
        return self.value


def current_owner() -> str:
    """The owner tag of this process (read once a process: a forked child reads its own)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{_boot_id()}:{pid}:{_start_ticks(pid)}")
    return _owner[1]


_owner: tuple[int, str] | None = None


def owner_pid(owner: str | None) -> int | None:
    """The pid an owner tag names, if it names one."""
    parts = (owner or "").split(":")
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def owner_state(owner: str | None) -> Liveness:
    """Whether the process an owner tag names still runs (only knowable on this machine)."""
    parts = (owner or "").split(":")
    if len(parts) != 4 or not parts[2].isdigit() or parts[0] != socket.gethostname():
        return Liveness.UNKNOWN
    boot, pid, start = parts[1], int(parts[2]), parts[3]
    here = _boot_id()
    if boot and here and boot != here:
        same_boot = boot.partition("/")[0] == here.partition("/")[0]
        return Liveness.UNKNOWN if same_boot else Liveness.GONE  # another pid namespace, or a restart since
    if start and (_PROC / "self").exists():
        return Liveness.ALIVE if _start_ticks(pid) == start else Liveness.GONE  # "" when gone, another when reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Liveness.GONE
    except PermissionError:  # someone else's process: it exists
        return Liveness.ALIVE
    return Liveness.ALIVE


def _boot_id() -> str:
    """The kernel's boot id and this process's pid namespace (pids mean something only within both)."""
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        space = os.readlink(_PROC / "self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return ""
    return f"{boot}/{space}"


def _start_ticks(pid: int) -> str:
    """Field 22 of ``/proc/PID/stat`` (after the command name, which may hold spaces); "" when not running."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):  # a zombie has ended: only its exit status is left
        return ""
    return fields[19]
