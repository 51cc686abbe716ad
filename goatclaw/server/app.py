"""The HTTP API of ``goatclaw serve``: :func:`build_app` makes the Starlette app, the one function tests call.

::

    from goatclaw.server.app import build_app

    app = build_app(["path/to/project"])          # or {"demo": "path/to/demo", "ops": "path/to/ops"}
    # uvicorn.run(app, host="127.0.0.1", port=8750)  — what `goatclaw serve` does, see goatclaw.server.serving

One server hosts one or more *projects* (folders with a goatclaw.yaml): each keeps its own
store and workspace, and its routes live under ``/api/projects/{name}/``. The first project is
the *home* project: its store holds the users, tokens and sessions (goatclaw.server.auth) and
its goatclaw.yaml's ``server:`` section the settings (goatclaw.server.settings).

The app is routes as a plain list (:func:`goatclaw.server.endpoints.routes`, each describing
itself for ``/openapi.json``), one middleware (:class:`goatclaw.server.guard.Gatekeeper`: address
lists, threat scores, rate limits, authentication, audit), and a lifespan that starts the run
queue's workers and drains them when the server stops. Other rooms add their routes with
``extra_routes`` and their long-lived parts (a scheduler) with ``services``; they find the
shared state at ``request.app.state.goatclaw`` (a :class:`Server`), the principal with
:func:`goatclaw.server.auth.principal_of`, and start runs with
:func:`goatclaw.server.triggers.trigger` (checked, audited, through the bounded queue).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

import goatclaw
from goatclaw import api
from goatclaw.server.auth import Authenticator
from goatclaw.server.guard import ClientThreats, Counters, Gatekeeper, RateLimits
from goatclaw.server.runs import Refused, RunQueue
from goatclaw.server.settings import ServerSettings
from goatclaw.server.stores import Stores

__all__ = ["STATE_KEY", "ServedProject", "Server", "Service", "build_app", "served_projects"]

#: ``app.state`` attribute holding the :class:`Server`.
STATE_KEY = "goatclaw"
#: A long-lived part of the server: given the :class:`Server`, an async context manager it runs inside.
Service = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


class ServeError(goatclaw.GoatclawError):
    """The server cannot start as asked (a missing folder, two projects with one name)."""

    exit_code = 2


@dataclass(frozen=True)
class ServedProject:
    """One hosted project: its name (in URLs and token scopes), folder, checked settings and store."""

    name: str
    root: Path
    project: Any  # goatclaw.spec.project.Project
    store: Path

    def shown(self, path: str | Path | None) -> str | None:
        """A path as the API shows it: relative to the project folder when inside it."""
        if path is None:
            return None
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return p.name


@dataclass
class Server:
    """Everything the routes share: projects, settings, stores, auth, the run queue, counters, the clock."""

    projects: dict[str, ServedProject]
    settings: ServerSettings
    stores: Stores
    auth: Authenticator
    queue: RunQueue
    threats: ClientThreats
    counters: Counters
    clock: Callable[[], float] = time.time
    started_at: float = field(default_factory=time.time)
    stopped: bool = False
    services: tuple[Any, ...] = ()  # started inside the lifespan (build_app's ``services``)
    schedulers: dict[str, Any] = field(default_factory=dict)  # by project, while the schedules service runs
    #: Checked pipelines by file, with the (mtime, size) they were loaded at: a changed file is loaded again.
    pipelines: dict[Path, tuple[tuple[int, int], Any]] = field(default_factory=dict)

    @property
    def home(self) -> ServedProject:
        """The first project: its store holds users, tokens and sessions."""
        return next(iter(self.projects.values()))

    def project(self, name: str) -> ServedProject:
        """A hosted project by name (404 when there is none)."""
        found = self.projects.get(name)
        if found is None:
            raise Refused(f"no project '{name}' on this server", 404)
        return found


def served_projects(folders: Sequence[str | Path] | Mapping[str, str | Path | ServedProject]
                    ) -> dict[str, ServedProject]:
    """Hosted projects from folders (named after the folder) or ``{name: folder}``; checked, in order.

    ``{name: ServedProject}`` (what this returned before) is taken as it is.
    """
    if isinstance(folders, Mapping) and folders and all(isinstance(v, ServedProject) for v in folders.values()):
        return dict(folders)  # type: ignore[arg-type]
    pairs = list(folders.items()) if isinstance(folders, Mapping) else [(None, f) for f in folders]
    if not pairs:
        raise ServeError("serve at least one project folder")
    found: dict[str, ServedProject] = {}
    for name, folder in pairs:
        root = Path(folder).resolve()
        if not root.is_dir():
            raise ServeError(f"{folder}: not a folder")
        label = name or _name_of(root)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", label):
            raise ServeError(f"'{label}' cannot name a project (letters, digits, '.', '_', '-'; up to 64)")
        if label in found:
            raise ServeError(f"two projects are named '{label}': name them, as NAME=DIR")
        file = root / "goatclaw.yaml"
        if not file.is_file():
            raise ServeError(f"{folder}: no goatclaw.yaml (a project folder has one; `goatclaw init` writes it)")
        project = api.load_project_for(file)
        found[label] = ServedProject(label, root, project, Path(project.store_path))
    return found


def _name_of(root: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", root.name).strip("-.") or "project"


def build_app(projects: Sequence[str | Path] | Mapping[str, str | Path | ServedProject], *,
              settings: ServerSettings | None = None,
              extra_routes: Sequence[BaseRoute] = (), services: Sequence[Service] = (),
              clock: Callable[[], float] = time.time,
              monotonic: Callable[[], float] = time.monotonic, runner: Any = None) -> Starlette:
    """The Starlette app serving ``projects`` (see the module docstring).

    ``settings`` default to the home project's ``server:`` section; ``clock`` (wall time:
    session expiry) and ``monotonic`` (rate windows, blocks) are there for tests to move;
    ``runner`` replaces how a job runs (default: :func:`goatclaw.arun`). ``services`` are
    started with the app and stopped before its runs are drained: each is a function of the
    :class:`Server` giving an async context manager (a scheduler's loop lives inside it).
    """
    from goatclaw.server import endpoints

    served = served_projects(projects)
    home = next(iter(served.values()))
    chosen = settings or _settings_of(home)
    stores = Stores()
    server = Server(
        projects=served, settings=chosen, stores=stores,
        auth=Authenticator(home.store, stores.connect, session_ttl=chosen.session_ttl, clock=clock),
        queue=RunQueue(chosen.max_running, chosen.max_queued, runner=runner),
        threats=ClientThreats(chosen.threat_threshold, chosen.block_for, chosen.forget_after, clock=monotonic),
        counters=Counters(), clock=clock,
    )
    gate = Middleware(
        Gatekeeper, settings=chosen, auth=server.auth, threats=server.threats,
        ip_limits=RateLimits(chosen.per_ip_per_minute, window=chosen.window, clock=monotonic),
        token_limits=RateLimits(chosen.per_token_per_minute, window=chosen.window, clock=monotonic),
        counters=server.counters, store_of=lambda scope: _store_of(server, scope), audit=stores.audit,
    )
    app = Starlette(routes=[*endpoints.routes(), *extra_routes], middleware=[gate], lifespan=_lifespan,
                    exception_handlers={HTTPException: _http_error, Refused: _refused,
                                        goatclaw.GoatclawError: _goatclaw_error},
                    max_body_size=chosen.max_body)
    setattr(app.state, STATE_KEY, server)
    server.services = tuple(services)
    return app


def _settings_of(home: ServedProject) -> ServerSettings:
    """``server:`` of the home project's goatclaw.yaml (a CIDR range or duration it cannot read: exit 2)."""
    try:
        return ServerSettings.from_data(home.project.data.get("server"))
    except ValueError as exc:
        raise ServeError(f"{home.project.file or home.root}: server: {exc}") from None


def _store_of(server: Server, scope: Mapping[str, Any]) -> Path:
    """The store whose audit chain a request's row goes to: its project's, else the home store."""
    name = (scope.get("path_params") or {}).get("project")
    found = server.projects.get(name) if isinstance(name, str) else None
    return (found or server.home).store


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the run workers; at shutdown drain them (the grace period, then cancel) and close the stores."""
    server: Server = getattr(app.state, STATE_KEY)
    server.queue.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            for service in server.services:
                await stack.enter_async_context(service(server))
            yield
    finally:
        if not server.queue.stopping:  # serving.py drains first on SIGTERM; a test's shutdown lands here
            await server.queue.drain(server.settings.grace)
        server.stopped = True
        server.stores.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    """An HTTP error as JSON: ``{"error": "..."}`` with the status (and its headers)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _refused(request: Request, exc: Exception) -> Response:
    """A run the server will not start or resume: its status, ``{"error": …}``, and ``Retry-After`` if any."""
    assert isinstance(exc, Refused)
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _goatclaw_error(request: Request, exc: Exception) -> Response:
    """Goatclaw's own refusal (a store error, a resume that cannot be): 409 with the message, or 422 for a spec."""
    if isinstance(exc, goatclaw.SpecError):
        return JSONResponse({"error": "the pipeline is invalid", "problems": [str(p) for p in exc.problems]},
                            status_code=422)
    if isinstance(exc, goatclaw.StoreError):
        return JSONResponse({"error": str(exc)}, status_code=503)
    return JSONResponse({"error": str(exc)}, status_code=409)
