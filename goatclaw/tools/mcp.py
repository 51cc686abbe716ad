"""MCP servers as a source of tools: the client half of the ``mcp`` SDK lives here (and only here).

``mcp_servers:`` in ``goatclaw.yaml`` names each server: a ``command`` (with ``args``, ``env``,
``cwd``) started as a subprocess over stdio, or a ``url`` (with ``headers``) over streamable
HTTP. ``env`` and ``headers`` values may read secrets (``${{ secrets.X }}``).

:class:`Servers` holds the servers of one run. Each starts on first use (its ``tools/list``
or a ``tools/call``), once, in an asyncio task of its own that owns the SDK's connection, and
stops when the run closes the pool (:meth:`Servers.aclose`, also on cancel or Ctrl-C: a stdio
server's process is ended with the connection). In ``record`` mode each ``tools/list`` and
``tools/call`` result also goes into the run's cassette; in ``replay`` mode they are answered
from it, so a run replays with the server absent, and a server that is present is asked for
its tools once and compared with the recording: a tool that is gone or whose input schema
changed fails the run's calls with a message naming the tool and the change.

The engine decides what a task may call (``permissions.mcp``) and records each call; this
module only talks to servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from goatclaw.errors import GoatclawError, TaskError

__all__ = ["DEFAULT_TIMEOUT", "SERVERS", "McpTool", "ServerConfig", "Servers", "current", "schema_changes",
           "secret_names", "server_configs", "using"]

#: Seconds a server may take to start, and each call (``timeout:`` of a server overrides it).
DEFAULT_TIMEOUT = 60.0
#: Seconds a replaying run waits for a server to start before it replays without it.
PROBE_TIMEOUT = 15.0
_SECRET = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_STDERR_TAIL = 2000


class Tape(Protocol):
    """What the pool needs of a cassette (the LLM room's :class:`~goatclaw.llm.Cassette` is one)."""

    path: Path

    def get(self, key: str) -> dict[str, Any] | None:
        """The recorded exchange for ``key``."""

    def put(self, key: str, exchange: dict[str, Any]) -> None:
        """Record an exchange."""


@dataclass(frozen=True)
class ServerConfig:
    """One entry of ``mcp_servers:``, as written (secrets not yet read)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def transport(self) -> str:
        """``stdio`` or ``http``."""
        return "http" if self.url else "stdio"

    def describe(self) -> str:
        """What the server is, for messages (never a header or env value)."""
        return self.url or " ".join([self.command or "", *self.args]).strip()


def server_configs(data: Any) -> dict[str, ServerConfig]:
    """``mcp_servers:`` (already checked against the project file's schema) as configs by name."""
    if not isinstance(data, Mapping):
        return {}
    found = {}
    for name, entry in data.items():
        if not isinstance(entry, Mapping):
            continue
        timeout = entry.get("timeout")
        found[str(name)] = ServerConfig(
            name=str(name), command=entry.get("command"), args=tuple(str(a) for a in entry.get("args") or ()),
            env={str(k): str(v) for k, v in (entry.get("env") or {}).items()}, cwd=entry.get("cwd"),
            url=entry.get("url"), headers={str(k): str(v) for k, v in (entry.get("headers") or {}).items()},
            timeout=float(_seconds(timeout)) if timeout is not None else DEFAULT_TIMEOUT)
    return found


def _seconds(value: Any) -> float:
    """A duration as the project file writes it (``500ms``, ``10s``, ``2m``, a number)."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not match:
        raise GoatclawError(f"mcp_servers: timeout '{value}' is not a duration")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2] or "s"]


def secret_names(config: ServerConfig) -> list[str]:
    """The secrets a server's ``env`` and ``headers`` read."""
    return sorted({m for v in (*config.env.values(), *config.headers.values()) for m in _SECRET.findall(v)})


def _fill(config: ServerConfig, where: str, value: str, secrets: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match[1]
        if name not in secrets:
            raise TaskError(f"mcp server '{config.name}': {where} reads secret {name}, which is not available: "
                            "declare it under the pipeline's secrets: and set it in the environment or .env",
                            error_class="invalid_input")
        return secrets[name]

    filled = _SECRET.sub(one, value)
    if "${{" in filled:
        raise TaskError(f"mcp server '{config.name}': {where} may only use ${{{{ secrets.NAME }}}}",
                        error_class="invalid_input")
    return filled


@dataclass(frozen=True)
class McpTool:
    """One tool a server lists: its name, description and input JSON Schema."""

    server: str
    name: str
    description: str
    input_schema: Mapping[str, Any]

    def as_data(self) -> dict[str, Any]:
        """The tool as ``goatclaw mcp tools --json`` and the cassette show it."""
        return {"name": self.name, "description": self.description, "inputSchema": dict(self.input_schema)}


class _Connection:
    """A live server: the asyncio task that owns the SDK's connection, and its client once it is up."""

    def __init__(self) -> None:
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.client: Any = None
        self.stderr: Any = None

    def stderr_tail(self) -> str:
        if self.stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0)
            return self.stderr.read()[-_STDERR_TAIL:].strip()
        return ""


class Servers:
    """The MCP servers of one run: started on first use, each once; stopped by :meth:`aclose`.

    ``secrets`` are the values ``${{ secrets.X }}`` in ``env``/``headers`` read; ``mask``
    masks text before it is written to the cassette; ``workspace`` is where a stdio
    server's relative ``cwd`` starts (default: the project's folder).
    """

    def __init__(self, configs: Mapping[str, ServerConfig], *, secrets: Mapping[str, str] | None = None,
                 workspace: Path | None = None, mode: str = "live", cassette: Tape | None = None,
                 mask: Callable[[Any], Any] | None = None) -> None:
        if mode != "live" and cassette is None:
            raise ValueError(f"MCP mode {mode} needs a cassette")
        self.configs = dict(configs)
        self.secrets = dict(secrets or {})
        self.workspace = workspace or Path.cwd()
        self.mode = mode
        self.cassette = cassette
        self._mask = mask or (lambda value: value)
        self._live: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tools: dict[str, list[McpTool]] = {}
        self._changed: dict[str, str] = {}
        self._dead: list[_Connection] = []  # connections that dropped, stopped with the rest
        self._closed = False

    def config(self, server: str) -> ServerConfig:
        """The config of ``server``; ``invalid_input`` naming the known ones when there is none."""
        config = self.configs.get(server)
        if config is None:
            known = ", ".join(sorted(self.configs)) or "none"
            raise TaskError(f"no MCP server '{server}' in goatclaw.yaml's mcp_servers: (servers: {known})",
                            error_class="invalid_input")
        return config

    @property
    def started(self) -> list[str]:
        """The servers started so far (for tests and the run's end)."""
        return [name for name, c in self._live.items() if c.client is not None]

    # -- what callers use ------------------------------------------------------------------

    async def tools(self, server: str) -> list[McpTool]:
        """The tools ``server`` lists (``tools/list``), asked once a run; from the cassette when replaying."""
        config = self.config(server)
        if server in self._tools:
            return self._tools[server]
        async with self._lock(server):
            if server not in self._tools:
                self._tools[server] = await self._list(config)
        return self._tools[server]

    async def call(self, server: str, tool: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call ``tool`` (``tools/call``): ``{content, text, structured, is_error}``; from the cassette when replaying.

        A failure to reach the server raises :class:`TaskError` (``connection``, ``timeout``);
        a tool that answers with an error is a result (``is_error``) for the caller to judge.
        """
        config = self.config(server)
        args = dict(arguments or {})
        key = _call_key(server, tool, self._mask(args))
        if self.mode != "live":  # recorded with the calls; a replay compares it with the server, when it is here
            await self.tools(server)
        if self.mode == "replay":
            if server in self._changed:
                raise TaskError(self._changed[server], error_class="invalid_input")
            exchange = self._tape().get(key)
            if exchange is None:
                raise TaskError(f"mcp server '{server}': no recorded tools/call of '{tool}' with these arguments in "
                                f"the cassette {self._tape().path}; record it with --llm record",
                                error_class="invalid_input")
            return dict(exchange["response"])
        client = await self._client(config)
        try:
            result = await asyncio.wait_for(client.call_tool(tool, args), config.timeout)
        except TimeoutError:
            raise TaskError(f"mcp server '{server}': tools/call of '{tool}' took over {config.timeout:g}s",
                            error_class="timeout") from None
        except Exception as exc:  # the SDK's errors: a protocol error, a dropped connection
            self._forget_if_gone(server, exc)
            raise TaskError(f"mcp server '{server}': tools/call of '{tool}' failed: {_why(exc)}",
                            error_class=_error_class(exc)) from None
        answer = _result(result)
        if self.mode == "record":
            self._tape().put(key, {"kind": "mcp", "server": server, "method": "tools/call", "tool": tool,
                                   "arguments": self._mask(args), "response": self._mask(answer)})
        return answer

    async def aclose(self) -> None:
        """Stop every server started (their processes end with their connections)."""
        self._closed = True
        live, self._live = [*self._live.values(), *self._dead], {}
        self._dead = []
        for conn in live:
            conn.stop.set()
        for conn in live:
            if conn.task is None:
                continue
            try:
                await asyncio.wait_for(asyncio.shield(conn.task), 10)
            except (TimeoutError, asyncio.CancelledError):
                conn.task.cancel()
                with contextlib.suppress(BaseException):
                    await conn.task
            except Exception:
                pass
            if conn.stderr is not None:
                conn.stderr.close()

    # -- inside ------------------------------------------------------------------------

    def _forget_if_gone(self, server: str, exc: BaseException) -> None:
        """A server whose connection is gone is stopped and forgotten: the next use (a retry) starts it again."""
        if _error_class(exc) != "connection":
            return
        conn = self._live.pop(server, None)
        if conn is not None:
            conn.stop.set()
            self._dead.append(conn)

    def _lock(self, server: str) -> asyncio.Lock:
        return self._locks.setdefault(server, asyncio.Lock())

    def _tape(self) -> Tape:
        assert self.cassette is not None
        return self.cassette

    async def _list(self, config: ServerConfig) -> list[McpTool]:
        key = f"mcp:{config.name}:tools/list"
        if self.mode == "replay":
            exchange = self._tape().get(key)
            if exchange is None:
                raise TaskError(f"mcp server '{config.name}': no recorded tools/list in the cassette "
                                f"{self._tape().path}; record it with --llm record", error_class="invalid_input")
            recorded = [_tool(config.name, t) for t in exchange["response"]["tools"]]
            live = await self._probe(config)
            if live is not None:
                change = schema_changes(recorded, live)
                if change:
                    self._changed[config.name] = (f"mcp server '{config.name}' changed since the cassette "
                                                  f"{self._tape().path} was recorded: {change}; record it again "
                                                  "with --llm record")
                    raise TaskError(self._changed[config.name], error_class="invalid_input")
            return recorded
        client = await self._client(config)
        try:
            tools: list[McpTool] = []
            cursor = None
            for _ in range(100):  # pages
                page = await asyncio.wait_for(client.list_tools(cursor=cursor), config.timeout)
                tools += [_tool(config.name, t.model_dump(mode="json", by_alias=True, exclude_none=True))
                          for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
        except TimeoutError:
            raise TaskError(f"mcp server '{config.name}': tools/list took over {config.timeout:g}s",
                            error_class="timeout") from None
        except Exception as exc:
            self._forget_if_gone(config.name, exc)
            raise TaskError(f"mcp server '{config.name}': tools/list failed: {_why(exc)}",
                            error_class=_error_class(exc)) from None
        if self.mode == "record":
            self._tape().put(key, {"kind": "mcp", "server": config.name, "method": "tools/list",
                                   "response": {"tools": [t.as_data() for t in tools]}})
        return tools

    async def _probe(self, config: ServerConfig) -> list[McpTool] | None:
        """A replaying run: the server's live tools if it is here and starts, else ``None`` (replay without it)."""
        if config.command and shutil.which(config.command, path=os.environ.get("PATH")) is None \
                and not Path(config.command).is_file():
            return None
        try:
            client = await self._client(config, timeout=min(config.timeout, PROBE_TIMEOUT))
            page = await asyncio.wait_for(client.list_tools(), min(config.timeout, PROBE_TIMEOUT))
        except (TaskError, TimeoutError):
            return None
        except Exception:
            return None
        return [_tool(config.name, t.model_dump(mode="json", by_alias=True, exclude_none=True)) for t in page.tools]

    async def _client(self, config: ServerConfig, timeout: float | None = None) -> Any:
        """The live client of ``config``'s server, started on first use."""
        if self._closed:
            raise TaskError(f"mcp server '{config.name}': the run's servers are stopped", error_class="cancelled")
        conn = self._live.get(config.name)
        if conn is not None and conn.task is not None and conn.task.done():  # it died: start it again (a retry)
            self._dead.append(self._live.pop(config.name))
            conn = None
        if conn is None:
            conn = _Connection()
            transport, owned = self._transport(config, conn)  # a bad secret reference raises here, before any start
            self._live[config.name] = conn
            conn.task = asyncio.create_task(self._serve(config, conn, transport, owned), name=f"mcp:{config.name}")
        wait = timeout or config.timeout
        try:
            await asyncio.wait_for(asyncio.shield(conn.ready), wait)
        except TimeoutError:
            tail = conn.stderr_tail()
            raise TaskError(f"mcp server '{config.name}' ({config.describe()}) did not start within {wait:g}s"
                            + (f": {tail}" if tail else ""), error_class="timeout") from None
        except TaskError:
            raise
        except Exception as exc:
            tail = conn.stderr_tail()
            raise TaskError(f"mcp server '{config.name}' ({config.describe()}) could not start: {_why(exc)}"
                            + (f"; its stderr: {tail}" if tail else ""), error_class="connection") from None
        return conn.client

    def _transport(self, config: ServerConfig, conn: _Connection) -> tuple[Any, Any]:
        """The SDK transport for ``config``, and the HTTP client it uses (``None`` over stdio), closed with it."""
        try:
            from mcp.client.stdio import StdioServerParameters, stdio_client
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client
        except ImportError as exc:
            from goatclaw.extras import missing_message

            raise TaskError(missing_message(exc, extra="mcp", needed_by=f"mcp server '{config.name}'") or str(exc),
                            error_class="invalid_input") from None

        if config.url:
            headers = {k: _fill(config, f"headers.{k}", v, self.secrets) for k, v in config.headers.items()}
            client = create_mcp_http_client(headers=headers)
            return streamable_http_client(config.url, http_client=client), client
        assert config.command is not None
        env = {k: _fill(config, f"env.{k}", v, self.secrets) for k, v in config.env.items()}
        cwd = (self.workspace / config.cwd) if config.cwd else self.workspace
        conn.stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by aclose
        params = StdioServerParameters(command=config.command, args=list(config.args), env=env or None, cwd=str(cwd))
        return stdio_client(params, errlog=conn.stderr), None

    async def _serve(self, config: ServerConfig, conn: _Connection, transport: Any, owned: Any) -> None:
        """The server's own task: connect, hand out the client, wait for the run to stop it, disconnect."""
        from mcp import Client

        try:
            async with contextlib.AsyncExitStack() as stack:
                if owned is not None:
                    await stack.enter_async_context(owned)
                client = await stack.enter_async_context(Client(transport, read_timeout_seconds=config.timeout))
                conn.client = client
                conn.ready.set_result(client)
                await conn.stop.wait()
        except BaseException as exc:
            if not conn.ready.done():
                conn.ready.set_exception(exc if isinstance(exc, Exception) else
                                         TaskError(f"mcp server '{config.name}' was stopped", error_class="cancelled"))
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise


def _tool(server: str, data: Mapping[str, Any]) -> McpTool:
    schema = data.get("inputSchema") or data.get("input_schema") or {"type": "object"}
    return McpTool(server, str(data["name"]), str(data.get("description") or ""), dict(schema))


def _result(result: Any) -> dict[str, Any]:
    """A ``CallToolResult`` as JSON data: its content blocks, their text joined, structured content, error flag."""
    data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    content = data.get("content") or []
    text = "\n".join(str(c.get("text", "")) for c in content if isinstance(c, Mapping) and c.get("type") == "text")
    return {"content": content, "text": text, "structured": data.get("structuredContent"),
            "is_error": bool(data.get("isError"))}


def _call_key(server: str, tool: str, arguments: Any) -> str:
    text = json.dumps({"server": server, "tool": tool, "arguments": arguments}, sort_keys=True, ensure_ascii=False)
    return f"mcp:{server}:tools/call:" + hashlib.sha256(text.encode()).hexdigest()


def _why(exc: BaseException) -> str:
    """The innermost message of an SDK error (anyio wraps them in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_class(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, (OSError, ConnectionError, EOFError)) or "Connect" in type(exc).__name__ \
            or "connection closed" in str(exc).lower():
        return "connection"
    return "server_error"


def schema_changes(recorded: Sequence[McpTool], live: Sequence[McpTool]) -> str:
    """What changed between the recorded tools and the live ones (``""``: nothing a call depends on)."""
    now = {t.name: t for t in live}
    for tool in recorded:
        other = now.get(tool.name)
        if other is None:
            return f"tool '{tool.name}' is gone (it lists {', '.join(sorted(now)) or 'no tools'})"
        change = _schema_change(dict(tool.input_schema), dict(other.input_schema))
        if change:
            return f"tool '{tool.name}': {change}"
    return ""


def _schema_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old == new:
        return ""
    before, after = old.get("properties") or {}, new.get("properties") or {}
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    parts = []
    if added:
        parts.append("parameter " + ", ".join(added) + " added")
    if removed:
        parts.append("parameter " + ", ".join(removed) + " removed")
    for name in sorted(set(before) & set(after)):
        if before[name].get("type") != after[name].get("type"):
            parts.append(f"parameter {name} changed type from {before[name].get('type')} to {after[name].get('type')}")
        elif before[name] != after[name]:
            parts.append(f"parameter {name} changed")
    req_old, req_new = set(old.get("required") or ()), set(new.get("required") or ())
    if req_new - req_old:
        parts.append("now requires " + ", ".join(sorted(req_new - req_old)))
    if req_old - req_new:
        parts.append("no longer requires " + ", ".join(sorted(req_old - req_new)))
    return "; ".join(parts) or "its input schema changed"


#: The MCP servers of the running run (set by ``goatclaw.arun``); ``None`` outside a run.
SERVERS: ContextVar[Servers | None] = ContextVar("goatclaw_mcp_servers", default=None)


def current() -> Servers | None:
    """The running run's servers, if any."""
    return SERVERS.get()


@contextlib.asynccontextmanager
async def using(servers: Servers) -> AsyncIterator[Servers]:
    """Make ``servers`` the run's servers for everything awaited inside, and stop them afterwards."""
    token = SERVERS.set(servers)
    try:
        yield servers
    finally:
        SERVERS.reset(token)
        await servers.aclose()
