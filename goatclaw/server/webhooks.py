"""Webhooks: ``POST /hooks/{pipeline}`` starts a run of a pipeline that says ``on: webhook``.

::

    routes = webhook_routes(trigger, project=project, on_denied=threats.count)
    app = Starlette(routes=[*routes, ...])

What a request goes through, in order (nothing of the sender's is parsed before it is authenticated):

1. the pipeline is one of the project's with ``on: webhook`` (else 404, reported as denied);
2. the body is at most ``max_bytes`` (``on.webhook.max_bytes``, default 1 MiB), by its
   ``Content-Length`` and as it is read (else 413);
3. ``X-Hub-Signature-256: sha256=<hex>`` is the HMAC-SHA256 of the body under the secret
   named by ``on.webhook.secret`` (read from the environment, else the project's ``.env``),
   compared in constant time, as GitHub signs its deliveries (missing or wrong: 401, reported
   as denied; a secret not set on the server: 503);
4. the body is JSON (strict: no ``NaN``; else 400 saying where) and satisfies
   ``on.webhook.schema`` (else 422 with each problem located in the payload);
5. the ``on.webhook.vars`` paths pick the run's vars out of the payload (a missing one: 422);
6. a delivery id (``X-GitHub-Delivery``, else ``X-Delivery-Id``) seen before for this pipeline
   is a replay: 409, nothing starts (the last :data:`DELIVERIES` ids are kept, in memory);
7. ``trigger(pipeline_path, vars, trigger="webhook")`` starts the run; its answer (a run id,
   or anything with ``run_id``) is the 202 response's ``run``. A trigger that raises is 503.

``trigger`` here *starts* a run and returns (a sender such as GitHub waits at most ten
seconds for the answer); the scheduler's trigger, by contrast, runs one to its end.
``on_denied(client, reason)`` hears of every refused caller (its IP address and why), so the
server's threat score can count it; it may be async.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import goatclaw
from goatclaw import api
from goatclaw.errors import GoatclawError
from goatclaw.schedule import payload_vars

__all__ = ["DELIVERIES", "DELIVERY_HEADERS", "SIGNATURE_HEADER", "sign", "webhook_routes"]

_log = logging.getLogger("goatclaw.server.webhooks")

#: The header that carries the body's signature (GitHub's convention; Gitea and others send it too).
SIGNATURE_HEADER = "X-Hub-Signature-256"
#: Headers naming a delivery: a signed request sent again with the same id is a replay.
DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Delivery-Id")
#: How many delivery ids each endpoint remembers.
DELIVERIES = 10_000
_PREFIX = "sha256="

Trigger = Callable[..., Awaitable[Any]]
Denied = Callable[[str, str], Any]
Secrets = Callable[[str], str | None]


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body`` under ``secret``: ``sha256=<hex>``."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_routes(trigger: Trigger, *, project: Any = None, pipelines: Sequence[Any] | None = None,
                   secrets: Secrets | None = None, on_denied: Denied | None = None,
                   path: str | Sequence[str] = "/hooks/{pipeline}", recheck: float = 1.0) -> list[Route]:
    """The routes that serve the webhooks of ``pipelines`` (default: every one of ``project`` with ``on: webhook``).

    ``project`` is a :class:`~goatclaw.spec.project.Project` or its folder (default: the current one).
    ``path`` may be several paths: one endpoint serves them all (a delivery replayed on another
    of them is still a replay).

    ``secrets(name)`` gives a secret's value (default: the environment, else the project's
    ``.env``, read at each request so a rotated secret takes effect). Pipelines are found by
    their ``name:``; two with one name is a :class:`goatclaw.GoatclawError`.

    Found in the project (no ``pipelines`` given), the webhooks follow its pipeline files: a
    request more than ``recheck`` seconds after the last look lists and stats them, and when
    any changed, was added or went away they are checked again. A new webhook is served, one
    whose ``on: webhook`` was removed is 404, a changed secret or schema holds at once. An edit
    that leaves two webhooks with one name keeps the webhooks as they were, and the log says why.
    """
    project = api.project_at(project)
    follow = None
    if pipelines is None:
        follow = _Follow(functools.partial(api.pipeline_files_stamp, project),
                         lambda: _hooks(_discovered(project)), recheck)  # its stamp taken before the files are read
        pipelines = _discovered(project)
    endpoint = _Endpoint(_hooks(pipelines), trigger, secrets or _secrets_of(project.root), on_denied, follow)
    paths = [path] if isinstance(path, str) else list(path)
    return [Route(p, endpoint, methods=["POST"], name="webhook") for p in paths]


def _discovered(project: Any) -> list[Any]:
    """The project's pipelines that start by themselves or by a webhook (what fails to check is logged)."""
    found, problems = goatclaw.scheduled_pipelines(project)
    for problem in problems:
        _log.warning("not served as a webhook: %s", problem)
    return found


def _hooks(pipelines: Sequence[Any]) -> dict[str, Any]:
    """The pipelines with ``on: webhook``, by name; two with one name is a :class:`goatclaw.GoatclawError`."""
    hooks: dict[str, Any] = {}
    for pipeline in pipelines:
        if pipeline.webhook is None:
            continue
        if pipeline.name in hooks:
            raise GoatclawError(f"two webhook pipelines are named '{pipeline.name}': {hooks[pipeline.name].file} and "
                                f"{pipeline.file} (POST /hooks/<name> must name one)")
        hooks[pipeline.name] = pipeline
    return hooks


def _secrets_of(root: Path) -> Secrets:
    def read(name: str) -> str | None:
        return api.read_secrets([name], root).get(name) or None

    return read


class _Follow:
    """How an endpoint follows its project's pipeline files: a stamp of them, and the webhooks found again."""

    def __init__(self, stamp: Callable[[], Any], find: Callable[[], Mapping[str, Any]], recheck: float) -> None:
        self.stamp, self.find, self.recheck = stamp, find, recheck
        self.seen = stamp()  # the files as they were when the webhooks were found
        self.looked = time.monotonic()
        self.lock = asyncio.Lock()

    async def changed(self) -> Mapping[str, Any] | None:
        """The webhooks found again if the files changed since (looked at most every ``recheck`` s), else ``None``."""
        if time.monotonic() - self.looked < self.recheck:
            return None
        async with self.lock:
            if time.monotonic() - self.looked < self.recheck:
                return None  # another request looked meanwhile
            stamp = await asyncio.to_thread(self.stamp)
            self.looked = time.monotonic()
            if stamp == self.seen:
                return None
            self.seen = stamp  # a state of the files that does not check is said once, then looked at when it changes
            try:
                return await asyncio.to_thread(self.find)
            except GoatclawError as exc:
                _log.warning("webhooks: the pipeline files changed, and the webhooks stay as they were: %s", exc)
                return None


class _Endpoint:
    """The ASGI endpoint of the webhook route (a class, so Starlette hands it the request)."""

    def __init__(self, hooks: Mapping[str, Any], trigger: Trigger, secrets: Secrets, on_denied: Denied | None,
                 follow: _Follow | None = None) -> None:
        self.hooks = hooks
        self.trigger = trigger
        self.secrets = secrets
        self.on_denied = on_denied
        self.follow = follow  # None: the pipelines were given, and stay
        self.seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (pipeline, delivery id), oldest first

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> JSONResponse:
        """The recipe: find the pipeline, bound the body, check the signature, the payload, start the run."""
        if self.follow is not None and (hooks := await self.follow.changed()) is not None:
            self.hooks = hooks
        name = request.path_params.get("pipeline", "")
        pipeline = self.hooks.get(name)
        if pipeline is None:
            return await self._deny(request, 404, f"no webhook '{name}'")
        hook = pipeline.webhook
        try:
            body = await _body(request, hook.max_bytes)
        except ClientDisconnect:
            return _answer(400, "the client went away before the body ended")
        if body is None:
            return _answer(413, f"the body is over {hook.max_bytes} bytes")
        secret = self.secrets(hook.secret) if hook.secret else None
        if not secret:
            _log.warning("webhook '%s': its secret %s is not set on the server", name, hook.secret)
            return _answer(503, f"the webhook's secret ({hook.secret}) is not set on the server")
        refused = _signature_problem(request.headers.get(SIGNATURE_HEADER), secret, body)
        if refused:
            return await self._deny(request, 401, refused)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _answer(400, f"the body is not JSON: {exc}")
        variables, problems = payload_vars(pipeline, payload)
        if problems:
            return _answer(422, "the payload does not fit the webhook", problems=problems)
        delivery = next((request.headers[h] for h in DELIVERY_HEADERS if request.headers.get(h)), None)
        key = None if delivery is None else (name, delivery[:200])
        if key is not None:
            if key in self.seen:
                return _answer(409, f"delivery {delivery[:200]} was received already: not started again")
            self.seen[key] = None
            while len(self.seen) > DELIVERIES:
                self.seen.popitem(last=False)
        return await self._start(pipeline, variables, key)

    async def _start(self, pipeline: Any, variables: dict[str, Any], key: tuple[str, str] | None) -> JSONResponse:
        try:
            started = await self.trigger(str(pipeline.file), variables, trigger="webhook")
        except Exception as exc:
            if key is not None:  # not started: the sender's redelivery of it is welcome
                self.seen.pop(key, None)
            _log.warning("webhook '%s': the run could not start: %s: %s", pipeline.name, type(exc).__name__, exc)
            return _answer(503, f"the run could not start: {type(exc).__name__}: {exc}")
        run = started if isinstance(started, str) else getattr(started, "run_id", None)
        if run is None and isinstance(started, Mapping):
            run = started.get("run_id")
        return JSONResponse({"pipeline": pipeline.name, "run": run, "vars": sorted(variables)}, status_code=202)

    async def _deny(self, request: Request, status: int, reason: str) -> JSONResponse:
        client = request.client.host if request.client is not None else "unknown"
        _log.info("webhook refused %s: %s", client, reason)
        if self.on_denied is not None:
            try:
                outcome = self.on_denied(client, reason)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # the caller is refused all the same; the failure is said
                _log.warning("webhook: on_denied failed: %s: %s", type(exc).__name__, exc)
        return _answer(status, reason)


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` when it is (or says it is) over ``limit`` bytes; read no further than that."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _signature_problem(header: str | None, secret: str, body: bytes) -> str | None:
    """Why the signature header does not prove the body came from the secret's holder, or ``None``."""
    if not header:
        return f"missing {SIGNATURE_HEADER} (sha256=<hex HMAC of the body>)"
    given = header.strip()
    if not given.lower().startswith(_PREFIX):
        return f"{SIGNATURE_HEADER} must be sha256=<hex>"
    expected = sign(secret, body)
    if not hmac.compare_digest(expected.encode(), (_PREFIX + given[len(_PREFIX):].lower()).encode()):
        return f"{SIGNATURE_HEADER} does not match the body"
    return None


def _answer(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)
