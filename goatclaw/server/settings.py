"""The server's settings: ``server:`` in the home project's goatclaw.yaml, each with a default.

::

    server:
      runs: {max_running: 4, max_queued: 100}   # runs at once; runs waiting (a full queue answers 429)
      grace: 30s                                # SIGTERM: how long in-flight runs may finish before cancelled
      sessions: {ttl: 12h}                      # a browser session ends this long after the login
      rate_limits: {per_ip_per_minute: 600, per_token_per_minute: 1200}
      threat: {threshold: 10, block_for: 15m, forget_after: 10m}
      ip:
        allow: [127.0.0.0/8, 10.0.0.0/8]        # empty or absent: every address
        deny: [10.0.66.0/24]                    # wins over allow
        trusted_proxies: [127.0.0.1/32]         # whose X-Forwarded-For names the client (nginx in front)
      max_body: 1048576                         # bytes of a request body

The file was checked against ``schemas/goatclaw.schema.json`` when the project loaded, so
values here have the right types already.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Network", "ServerSettings", "parse_networks", "seconds"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(value: Any, default: float) -> float:
    """A duration (``500ms``, ``10s``, ``2m``, ``1h``, ``1d`` or a number of seconds) in seconds."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if match is None:
        raise ValueError(f"not a duration: {value!r} (e.g. 500ms, 10s, 2m, 1h)")
    return float(match[1]) * _UNITS[match[2] or "s"]


def parse_networks(values: Any) -> tuple[Network, ...]:
    """CIDR ranges (``10.0.0.0/8``, ``::1/128``, or a bare address) as networks."""
    return tuple(ipaddress.ip_network(str(v), strict=False) for v in values or ())


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``server:`` may set (see the module docstring), with the defaults."""

    max_running: int = 4
    max_queued: int = 100
    grace: float = 30.0
    session_ttl: float = 12 * 3600.0
    per_ip_per_minute: int | None = 600
    per_token_per_minute: int | None = 1200
    threat_threshold: float = 10.0
    block_for: float = 15 * 60.0
    forget_after: float = 10 * 60.0
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    max_body: int = 1024 * 1024
    #: Seconds of the rate-limit window (a minute; tests shorten it).
    window: float = field(default=60.0)

    @classmethod
    def from_data(cls, data: Any) -> ServerSettings:
        """From ``server:`` as written (``None``: every default)."""
        if not isinstance(data, Mapping):
            return cls()
        runs, sessions = data.get("runs") or {}, data.get("sessions") or {}
        limits, threat, ip = data.get("rate_limits") or {}, data.get("threat") or {}, data.get("ip") or {}
        base = cls()
        return cls(
            max_running=int(runs.get("max_running", base.max_running)),
            max_queued=int(runs.get("max_queued", base.max_queued)),
            grace=seconds(data.get("grace"), base.grace),
            session_ttl=seconds(sessions.get("ttl"), base.session_ttl),
            per_ip_per_minute=limits.get("per_ip_per_minute", base.per_ip_per_minute),
            per_token_per_minute=limits.get("per_token_per_minute", base.per_token_per_minute),
            threat_threshold=float(threat.get("threshold", base.threat_threshold)),
            block_for=seconds(threat.get("block_for"), base.block_for),
            forget_after=seconds(threat.get("forget_after"), base.forget_after),
            allow=parse_networks(ip.get("allow")),
            deny=parse_networks(ip.get("deny")),
            trusted_proxies=parse_networks(ip.get("trusted_proxies")),
            max_body=int(data.get("max_body", base.max_body)),
        )

    def but(self, **changes: Any) -> ServerSettings:
        """A copy with ``changes`` (the command line's ``--grace``, a test's short window)."""
        return replace(self, **changes)
