"""The plugin contract: what a task plugin receives, declares and raises.

A task plugin is a function or ``async`` function that takes a :class:`TaskContext` and
keyword arguments from the task's ``with:``::

    from goatclaw.plugin import TaskContext, fail, task

    @task(cacheable=True)
    async def slugify(ctx: TaskContext, *, text: str, max_length: int = 60) -> dict:
        \"\"\"Turn text into a URL slug.\"\"\"
        if not text:
            fail("text is empty", error_class="invalid_input")
        ...

Its signature (type hints and defaults) describes ``with:`` so that ``goatclaw validate``
can check a pipeline before anything runs; a ``schema=`` given to :func:`task` takes its
place. The return value must be JSON-serialisable: it is stored and read by later tasks as
``tasks.<id>.output``. A synchronous plugin runs in a thread (it may block); one declared
``cpu_bound=True`` runs in a worker process. Plugins see only this context, never the
scheduler. The built-in tasks are written against exactly this contract.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from goatclaw.errors import PermissionDenied, TaskError
from goatclaw.security.permissions import Grant, build_grant, model_hosts

__all__ = ["AUDIT_PREFIX", "READ_BACK", "UNTRUSTED", "PluginSpec", "TaskContext", "fail", "in_thread", "spec_of",
           "task"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: Topic prefix of what :meth:`TaskContext.audit` emits; the engine routes these into the audit chain.
AUDIT_PREFIX = "audit."
#: Topic of :meth:`TaskContext.untrusted`: the task's output holds data from untrusted tasks.
UNTRUSTED = "taint.untrusted"
#: Topic of :meth:`TaskContext.read_back`: the task's output holds a file's content.
READ_BACK = "taint.read"


@dataclass(frozen=True)
class PluginSpec:
    """What a plugin declares about itself.

    ``cacheable``: the same inputs give the same output, so a stored output may be reused.
    ``cpu_bound``: run in a worker process so the event loop is never blocked.
    ``permissions``: what it needs (``shell``, ``network``, ``files``, ``env``, ``python``).
    ``schema``: a JSON Schema for ``with:``; by default the signature is used.
    ``side_effects``: it changes the world (writes files, sends requests): never cached by default.
    ``untrusted_output``: its output comes from outside (a model, a web page) and may carry a
    prompt injection; it may not reach another task's ``sinks`` unless that task ``trust:``s it.
    ``sinks``: the ``with:`` arguments that can run or address something (``"*"``: all of them).
    ``warmup``: an ``async`` function without arguments that readies what the plugin needs
    (imports a heavy library, say) without blocking the event loop. The engine starts it
    in the background when a run's plan holds the plugin, and awaits it before each
    attempt, outside the task's ``timeout`` (so a timeout never counts the warm-up); it
    must return at once when there is nothing left to do.
    """

    cacheable: bool = True
    cpu_bound: bool = False
    permissions: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None
    side_effects: bool = False
    untrusted_output: bool = False
    sinks: tuple[str, ...] = ()
    warmup: Callable[[], Awaitable[None]] | None = None


def task(fn: F | None = None, *, cacheable: bool = True, cpu_bound: bool = False,
         permissions: tuple[str, ...] | list[str] = (), schema: Mapping[str, Any] | None = None,
         side_effects: bool = False, untrusted_output: bool = False, sinks: tuple[str, ...] | list[str] = (),
         warmup: Callable[[], Awaitable[None]] | None = None) -> Any:
    """Declare a function as a task plugin, with what it needs (see :class:`PluginSpec`).

    Usable bare (``@task``) or with options (``@task(cpu_bound=True)``). Undecorated
    functions are valid plugins too, with the defaults, except that they are never
    cached: only a plugin that declares itself has its outputs reused.
    """
    spec = PluginSpec(cacheable and not side_effects, cpu_bound, tuple(permissions), schema, side_effects,
                      untrusted_output, tuple(sinks), warmup)

    def mark(f: F) -> F:
        f.__goatclaw__ = spec  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


_UNDECLARED = PluginSpec(cacheable=False)


async def in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a daemon thread of its own: :func:`asyncio.to_thread` for a call that may hang.

    A thread cannot be killed: when the awaiting task times out or is cancelled, the thread
    is abandoned and its result dropped. Unlike ``asyncio.to_thread`` (the loop's default
    executor, which ``asyncio.run`` waits for), an abandoned thread holds neither the run
    nor the process's exit. The caller's context variables go with the call.
    """
    import asyncio  # here: a plugin module that only declares its task (validate loads it) needs no event loop

    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            ok, value = True, context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            ok, value = False, exc
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name=f"goatclaw-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future


class _MaskingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Formats each message first, then masks the run's secrets in it."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, self.extra["redactor"].mask(text), **kwargs)  # type: ignore[index]


def _port(url: str) -> int | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).port
    except ValueError:
        return None


def spec_of(fn: Callable[..., Any]) -> PluginSpec:
    """The :class:`PluginSpec` a plugin declared, or the defaults (not cacheable: it never said it was pure)."""
    spec = getattr(fn, "__goatclaw__", None)
    return spec if isinstance(spec, PluginSpec) else _UNDECLARED


def fail(message: str, *, error_class: str = "internal", retry_after: float | None = None,
         **details: Any) -> NoReturn:
    """Fail the task with ``message``; ``error_class`` tells retry policies what happened.

    Use ``invalid_input`` for bad arguments (never retried), ``rate_limit`` or
    ``server_error`` with ``retry_after`` for a service asking to wait, ``timeout``,
    ``connection``, ``auth``.
    """
    raise TaskError(message, error_class=error_class, retry_after=retry_after, details=details)


@dataclass(slots=True)
class TaskContext:
    """What a running task can see and do. Plugins get one as their first argument."""

    run_id: str
    task_id: str
    attempt: int = 1
    item: Any = None
    index: int | None = None
    workspace: Path = field(default_factory=Path.cwd)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float | None = None
    permissions: Any = None
    _emit: Callable[[str, dict[str, Any]], None] | None = field(default=None, repr=False)
    #: The run's store file (``None`` when the run keeps no store); the ``memory`` task searches it.
    store_path: Path | None = None
    #: The run's :class:`~goatclaw.security.secrets.Redactor` (``None``: no secrets declared).
    redactor: Any = field(default=None, repr=False)
    #: The task's word on caching: ``True`` (``cache: true`` or ``cache: {...}``), ``False``
    #: (``cache: false``, or the run's ``--no-cache``), ``None`` (it said nothing). The ``llm``
    #: task passes it to its answer cache (docs/llm.md); ``cache_ttl`` is ``cache.ttl`` in seconds.
    cache: bool | None = None
    cache_ttl: float | None = None
    #: The untrusted tasks (``llm``, ``http``, …) whose data this task's inputs carry, after its
    #: ``trust:``; empty when they carry none. A plugin that keeps its inputs somewhere (``memory``)
    #: stores these with them, so that what is read back later is untrusted too.
    origins: frozenset[str] = frozenset()
    #: The engine's toolbox maker (``None`` outside a local run): ``ctx.tools(entries)`` turns the
    #: task's ``tools:`` entries into a :class:`goatclaw.tools.Toolbox` whose calls run as attempts
    #: of this task (its permissions, secrets, audit and recorder). The ``llm`` task uses it.
    tools: Callable[..., Any] | None = field(default=None, repr=False)
    #: The run's MCP servers (a :class:`goatclaw.tools.mcp.Servers`; ``None`` outside a local run):
    #: ``await ctx.mcp.call(server, tool, arguments)``. Check ``ctx.permissions.check_mcp`` first;
    #: the ``mcp`` task does.
    mcp: Any = field(default=None, repr=False)
    #: The decision of the task's approval (``approval:``; the output of ``uses: approval``), when it has
    #: one: ``{approved, by, at, inputs, reason}``, ``inputs`` as the approver filled them in.
    approval: Mapping[str, Any] | None = None

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        """A logger named after the task (``goatclaw.task.<id>``); declared secrets are masked in its messages."""
        logger = logging.getLogger(f"goatclaw.task.{self.task_id}")
        return _MaskingLogger(logger, {"redactor": self.redactor}) if self.redactor else logger

    def secret(self, name: str) -> str:
        """The value of a declared secret; a clear error if it was not declared or set."""
        try:
            value = self.secrets[name]
        except KeyError:
            fail(f"secret '{name}' is not available: declare it under secrets: and set it in the "
                 "environment or .env", error_class="invalid_input")
        self.audit("secret.read", name=name)  # the name only, never the value
        return value

    def progress(self, done: float | None = None, message: str | None = None) -> None:
        """Report progress (``done`` from 0 to 1) and/or a status line to the live view."""
        self.emit("task.progress", done=done, message=message)

    def audit(self, action: str, **detail: Any) -> None:
        """Record a side effect in the run's tamper-evident audit chain.

        ``action`` names what happened: ``process.started``, ``file.written``,
        ``request.sent``, ``llm.called``, ``secret.read``, ``permission.denied`` (or a
        plugin's own dotted name). ``detail`` is JSON-serialisable; declared secret values
        in it are masked before it is stored. Never pass a secret's value on purpose.
        """
        if self._emit is not None:
            self._emit(AUDIT_PREFIX + action, {"task": self.task_id, "item": self.index, **detail})

    async def throttle(self, kind: str, key: str | None = None) -> float:
        """Wait while the project's side-effect rate limit for ``kind`` is reached; the seconds waited.

        ``kind`` is ``http`` (``key``: the host), ``process`` or ``file`` (see ``rate_limits.side_effects``
        in goatclaw.yaml). Waiting is not failing: the task goes on once the sliding window
        has room; a ``ratelimit.wait`` event, sent when it starts waiting, says for how long.
        """
        window = self._over_limit(kind, key)
        return 0.0 if window is None else await window.acquire()

    def throttle_blocking(self, kind: str, key: str | None = None) -> float:
        """:meth:`throttle` for a blocking plugin (it runs in a thread): sleep while the limit is reached."""
        window = self._over_limit(kind, key)
        return 0.0 if window is None else window.acquire_blocking()

    def _over_limit(self, kind: str, key: str | None) -> Any:
        """Take a place in ``kind``'s window if it has room (``None``); else say so and return the window to wait on."""
        from goatclaw.security.ratelimit import LIMITS

        limits = LIMITS.get()
        window = None if limits is None else limits.window_for(kind, key)
        if window is None:
            return None
        wait = window.try_acquire()
        if wait <= 0:
            return None
        self.emit("ratelimit.wait", kind=kind, key=key, wait=round(wait, 3), limit=window.limit,
                  per_seconds=window.window)
        return window

    def untrusted(self, origins: Any, how: str = "") -> None:
        """Say that this task's output holds data from the untrusted tasks ``origins`` (task ids).

        ``how`` says how it came in (``"a memory stored from untrusted data"``); it is shown
        when the data is refused at a sink. The output is then untrusted like an ``llm``
        task's: a later task may use it in a sink argument only with ``trust:``.
        """
        names = sorted({str(o) for o in origins})
        if names:
            self.emit(UNTRUSTED, origins=names, how=how)

    def read_back(self, path: str | Path, data: bytes) -> None:
        """Say that this task's output holds the content ``data`` of the file ``path`` (its real path).

        The engine looks the file up where it records what ``file.write`` wrote: content an
        untrusted flow wrote (in this run or an earlier one), or a file changed since such a
        write, makes the output untrusted. Call it for every file whose content you return.
        """
        import hashlib

        self.emit(READ_BACK, path=str(path), sha256=hashlib.sha256(data).hexdigest())

    def emit(self, topic: str, **data: Any) -> None:
        """Publish an event for this task (stored in the run's event log)."""
        if self._emit is not None:
            self._emit(topic, {"task": self.task_id, "item": self.index, **data})

    # -- permissions: the checks every task makes before a side effect -----------------

    @property
    def grant(self) -> Grant:
        """What this task may do. A context made without permissions may do nothing at all."""
        p = self.permissions
        if isinstance(p, Grant):
            return p
        if p is None:
            return Grant.nothing(self.workspace)
        return build_grant([(p, f"task {self.task_id}")], self.workspace)  # a spec Permissions

    def require_shell(self, program: str) -> None:
        """Fail with ``permission_denied`` unless ``permissions.shell`` allows starting ``program``."""
        self._checked(self.grant.check_program, program)

    def require_network(self, url: str, *, sending: Any = ()) -> str:
        """Fail unless ``permissions.network`` allows ``url``'s host; returns the host.

        ``sending`` is what goes with the request (headers, body, as text or data): if it
        (or the URL) holds a declared secret, the host must be *listed* in the permission
        (``network: true`` lists no host), so a secret never goes anywhere unnamed.
        """
        grant = self.grant
        host = self._checked(grant.check_url, url)
        names = self._secrets_in(url, sending)
        if names and not grant.allows_host(host, _port(url), listed=True):
            where = grant.sources.get("network", "embedded default")
            self._denied(PermissionDenied(
                f"network: secret {', '.join(names)} would be sent to {host}, which permissions.network does not "
                f"list ({where}); a secret goes only to hosts named there",
                details={"rule": "permissions.network", "where": where}))
        return host

    def require_models(self, models: Sequence[str], api_base: str | None = None, api_key: str | None = None) -> None:
        """Fail unless ``permissions.network`` allows the host every model of a chain calls.

        The host is ``api_base``, a provider's base-URL variable, or the provider's API host;
        the key that goes with the call (``api_key``, else a declared ``<PROVIDER>_API_KEY``
        secret) makes it a request that carries a secret, so that host must be listed.
        Checked before the first call, also when a cassette or the cache will answer, so a
        pipeline is allowed the same things offline and live.
        """
        for model in models:
            url = model_hosts(model, api_base)
            if url is None:
                if self.grant.network is True:
                    continue
                self._denied(PermissionDenied(
                    f"network: cannot tell which host model '{model}' calls; give api_base: so that "
                    "permissions.network can be checked", details={"rule": "permissions.network"}))
            # without api_key, litellm sends the provider's key from the environment (OPENAI_API_KEY, …)
            provider = model.split("/", 1)[0] if "/" in model else "openai"
            key = api_key or self.secrets.get(f"{provider.upper()}_API_KEY", "")
            self.require_network(url, sending=key)

    def require_read(self, path: str | Path) -> Path:
        """The real path of ``path`` (workspace-relative) if ``permissions.files.read`` allows it."""
        return self._checked(self.grant.check_read, path)

    def require_write(self, path: str | Path) -> Path:
        """The real path of ``path`` (workspace-relative) if ``permissions.files.write`` allows it."""
        return self._checked(self.grant.check_write, path)

    def require_module(self, module: str, function: str = "") -> None:
        """Fail unless ``permissions.python`` allows calling ``module:function`` (check it before the import)."""
        self._checked(self.grant.check_module, module, function)

    def require_callable(self, module: Any, name: str, attr: str) -> Any:
        """What ``name:attr`` names in the imported ``module``, if ``permissions.python`` allows calling it.

        Every step of ``attr`` must be a class, the last a plain function or class, each
        defined in a granted module: a grant of ``json`` does not reach ``json:codecs.open``.
        Raises ``AttributeError`` when a step is missing.
        """
        return self._checked(self.grant.check_callable, module, name, attr)

    def environment(self) -> dict[str, str]:
        """The process environment this task may see (``permissions.env`` plus a baseline such as PATH)."""
        return self.grant.environment()

    def _checked(self, check: Callable[..., Any], *args: Any) -> Any:
        try:
            return check(*args)
        except PermissionDenied as exc:
            self._denied(exc)

    def _denied(self, exc: PermissionDenied) -> NoReturn:
        self.audit("permission.denied", rule=exc.details.get("rule"), message=exc.message)
        raise exc

    def _secrets_in(self, url: str, sending: Any) -> list[str]:
        redactor = self.redactor
        if not redactor:
            return []
        import json

        text = sending if isinstance(sending, str) else json.dumps(sending, default=str, ensure_ascii=False)
        return redactor.found(f"{url}\n{text}")

    def path(self, relative: str | Path) -> Path:
        """``relative`` resolved inside the workspace; refuses paths that escape it."""
        base = self.workspace.resolve()
        target = (base / relative).resolve()
        if not target.is_relative_to(base):
            fail(f"path '{relative}' is outside the workspace {base}", error_class="permission_denied")
        return target
