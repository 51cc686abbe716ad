"""``wait``: poll a condition until it holds or a timeout passes (the "and wait" of deploy-and-wait).

Exactly one condition per task::

    wait: {http: "http://127.0.0.1:8080/health"}                      # any 2xx
    wait: {http: {url: ..., status: [200], contains: "ok", json: "status == 'up'"}}
    wait: {tcp: "db.internal:5432"}                                   # the port accepts a connection
    wait: {file: out/ready.flag}                                      # or {path: ..., contains: "done"}
    wait: {command: [pg_isready, -h, db]}                             # exits 0
    wait: {duration: 5s}                                              # just wait

``timeout`` (default 60 s) bounds the whole wait and ``interval`` (default 1 s) is the pause
between probes; a probe that fails (refused, a 503, a missing file, a non-zero exit) is "not
yet", never an error, so the task fails only with ``timeout``, quoting what the last probe saw.
Each probe goes through the task's grants like any task: ``permissions.network`` for ``http``
and ``tcp``, ``files.read`` for ``file``, ``shell`` for ``command``; a refused grant fails at
once (``permission_denied``) rather than being polled. The output is
``{"condition", "ready": true, "attempts", "waited", "last"}``; an ``http`` probe's ``last``
holds the response body, which is untrusted like any web content.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from goatclaw.errors import PermissionDenied, TaskError
from goatclaw.plugin import TaskContext, fail, task
from goatclaw.tasks.http import Call, Session, _expected
from goatclaw.tasks.jmes import compile_expression
from goatclaw.tasks.shell import shell

__all__ = ["wait"]

_CONDITIONS = ("http", "tcp", "file", "command", "duration")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
#: The longest one probe may take (a probe never outlives the wait's own timeout either).
PROBE_TIMEOUT = 10.0
_EXCERPT = 300

Probe = Callable[[float], Awaitable[tuple[bool, dict[str, Any]]]]


@task(cacheable=False, untrusted_output=True, sinks=("http", "tcp", "file", "command"))
async def wait(ctx: TaskContext, *, http: str | dict[str, Any] | None = None, tcp: str | None = None,
               file: str | dict[str, Any] | None = None, command: list[str] | None = None,
               duration: float | str | None = None, timeout: float | str = 60,
               interval: float | str = 1) -> dict[str, Any]:
    """Poll one condition (``http``, ``tcp``, ``file``, ``command``) every ``interval`` until it holds.

    Or just wait ``duration``.

    Fails ``timeout`` with the last probe's observation when ``timeout`` passes first.
    """
    given = {k: v for k, v in (("http", http), ("tcp", tcp), ("file", file), ("command", command),
                               ("duration", duration)) if v is not None}
    if len(given) != 1:
        fail(f"wait needs exactly one of {', '.join(_CONDITIONS)}; got {', '.join(given) or 'none'}",
             error_class="invalid_input")
    (kind, spec), = given.items()
    limit, every = _seconds(timeout, "timeout", 0.001), _seconds(interval, "interval", 0.01)
    if kind == "duration":
        return await _sleep(ctx, _seconds(duration, "duration", 0))
    probe = _probe(ctx, kind, spec)
    return await _poll(ctx, kind, probe, limit, every)


async def _poll(ctx: TaskContext, kind: str, probe: Probe, limit: float, every: float) -> dict[str, Any]:
    """Probe until ready or ``limit`` seconds have passed; a probe's own error is "not yet"."""
    start = time.monotonic()
    attempts = 0
    last: dict[str, Any] = {}
    while True:
        attempts += 1
        left = limit - (time.monotonic() - start)
        try:
            ready, last = await probe(max(0.05, min(PROBE_TIMEOUT, left)))
        except PermissionDenied:
            raise  # a grant that is missing will not appear by waiting
        except TaskError as exc:
            if exc.error_class in ("invalid_input", "permission_denied"):
                raise
            ready, last = False, {"error": exc.message[:_EXCERPT], "error_class": exc.error_class}
        waited = round(time.monotonic() - start, 3)
        if ready:
            ctx.emit("wait.ready", condition=kind, attempts=attempts, waited=waited)
            return {"condition": kind, "ready": True, "attempts": attempts, "waited": waited, "last": last}
        ctx.progress(min(1.0, waited / limit) if limit else None, f"{kind}: not yet ({_brief(last)})")
        if time.monotonic() - start + every > limit:
            fail(f"wait: {kind} did not hold within {limit:g}s ({attempts} probe{'s' * (attempts != 1)}); "
                 f"last: {_brief(last)}", error_class="timeout", condition=kind, attempts=attempts, last=last)
        await asyncio.sleep(every)


async def _sleep(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    ctx.progress(None, f"waiting {seconds:g}s")
    await asyncio.sleep(seconds)
    return {"condition": "duration", "ready": True, "attempts": 0, "waited": seconds, "last": {}}


def _probe(ctx: TaskContext, kind: str, spec: Any) -> Probe:
    """The probe for one condition, its arguments checked now (a bad one fails before the first probe)."""
    if kind == "http":
        return _http_probe(ctx, spec)
    if kind == "tcp":
        return _tcp_probe(ctx, spec)
    if kind == "file":
        return _file_probe(ctx, spec)
    return _command_probe(ctx, spec)


def _http_probe(ctx: TaskContext, spec: Any) -> Probe:
    spec = {"url": spec} if isinstance(spec, str) else spec
    allowed = {"url", "status", "contains", "json", "method", "headers"}
    if not isinstance(spec, Mapping) or "url" not in spec or set(map(str, spec)) - allowed:
        fail(f"wait.http must be a URL or a mapping with url and any of {', '.join(sorted(allowed - {'url'}))}",
             error_class="invalid_input")
    url = spec["url"]
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        fail(f"wait.http.url '{url}' must start with http:// or https://", error_class="invalid_input")
    expected = frozenset(_expected(spec.get("status")))
    contains = spec.get("contains")
    if contains is not None and not isinstance(contains, str):
        fail("wait.http.contains must be text", error_class="invalid_input")
    test = compile_expression(spec["json"], "wait.http.json") if "json" in spec else None
    call = Call(str(spec.get("method", "GET")).upper(), url, dict(spec.get("headers") or {}), {})
    ctx.require_network(url, sending=call.sending())

    async def probe(seconds: float) -> tuple[bool, dict[str, Any]]:
        async with Session(ctx, timeout=seconds) as session:
            reply = await session.send(call, range(100, 600), "auto")
        text = reply.body if isinstance(reply.body, str) else None
        seen: dict[str, Any] = {"status": reply.status, "body": (text or "")[:_EXCERPT] if text is not None
                                else reply.body}
        ok = reply.status in expected
        if ok and contains is not None:
            import json

            ok = contains in (text if text is not None else json.dumps(reply.body))
        if ok and test is not None:
            ok = bool(test.search(reply.body))
        return ok, seen

    return probe


def _tcp_probe(ctx: TaskContext, spec: Any) -> Probe:
    host, _, port_text = str(spec).rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        fail(f"wait.tcp must be host:port, not {spec!r}", error_class="invalid_input")
    port = int(port_text)
    ctx.require_network(f"tcp://{spec}")

    async def probe(seconds: float) -> tuple[bool, dict[str, Any]]:
        try:
            async with asyncio.timeout(seconds):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            return False, {"error": f"{type(exc).__name__}: {exc}"[:_EXCERPT]}
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        ctx.audit("tcp.connected", host=host, port=port)
        return True, {"connected": f"{host}:{port}"}

    return probe


def _file_probe(ctx: TaskContext, spec: Any) -> Probe:
    spec = {"path": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, Mapping) or "path" not in spec or set(map(str, spec)) - {"path", "contains"}:
        fail("wait.file must be a path or {path, contains}", error_class="invalid_input")
    target = ctx.require_read(str(spec["path"]))
    contains = spec.get("contains")

    async def probe(seconds: float) -> tuple[bool, dict[str, Any]]:
        if not target.is_file():
            return False, {"path": str(spec["path"]), "exists": False}
        if contains is None:
            return True, {"path": str(spec["path"]), "exists": True}
        data = target.read_bytes()[:10 * 1024 * 1024]
        ctx.read_back(target, data)
        return str(contains) in data.decode("utf-8", errors="replace"), {"path": str(spec["path"]), "exists": True,
                                                                          "contains": str(contains)}

    return probe


def _command_probe(ctx: TaskContext, spec: Any) -> Probe:
    if not isinstance(spec, list) or not spec or not all(isinstance(a, str) for a in spec):
        fail("wait.command must be a non-empty list of arguments, such as [pg_isready, -h, db]",
             error_class="invalid_input")
    ctx.require_shell(spec[0])

    async def probe(seconds: float) -> tuple[bool, dict[str, Any]]:
        done = await shell(ctx, run=list(spec), check=False, timeout=seconds)
        tail = (done["stderr"] or done["stdout"])[-_EXCERPT:]
        return done["exit_code"] == 0, {"exit_code": done["exit_code"], "output": tail}

    return probe


def _seconds(value: Any, name: str, least: float) -> float:
    """A duration (``500ms``, ``10s``, ``2m``, ``1h``, or a number of seconds) as seconds, ``least`` to a day."""
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else None
    if seconds is None or not least <= seconds <= 86400:
        fail(f"{name} must be a duration such as 500ms, 10s, 2m (from {least:g}s to 24h), not {value!r}",
             error_class="invalid_input")
    return seconds


def _brief(seen: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {str(v)[:80]!s}" for k, v in seen.items()) or "nothing yet"
