"""What every route of the JSON API does with its request: the project it names, its body, its audit row.

Shared by the route modules (:mod:`goatclaw.server.endpoints`, :mod:`goatclaw.server.decisions`)
and open to other rooms' routes: :func:`served` is the project once the principal may use a
scope in it; :func:`json_body` and :func:`field` read a JSON object body (400/422 with the
reason); :func:`audited` writes a change's audit row before the change (503 when it cannot).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

import goatclaw
from goatclaw.server.auth import principal_of, require
from goatclaw.server.guard import AUDITED_KEY, CLIENT_KEY

__all__ = ["audited", "field", "int_param", "json_body", "only_keys", "run_ref", "served", "server_of", "stored_run"]

_REF = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def server_of(request: Request) -> Any:
    """The :class:`~goatclaw.server.app.Server` of the app serving ``request``."""
    return request.app.state.goatclaw


def served(request: Request, scope: str) -> Any:
    """The route's project, once the principal may use ``scope`` in it (401/403, or 404 for no such project)."""
    require(request, scope)
    name = request.path_params["project"]
    found = server_of(request).project(name)
    require(request, scope, project=name)
    return found


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body (400 when it is not one)."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")  # Python's json would take NaN and Infinity


def only_keys(data: Mapping[str, Any], *keys: str) -> None:
    """Refuse (422) a body with fields other than ``keys``."""
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise HTTPException(422, f"unknown field {', '.join(map(repr, unknown))} (fields: {', '.join(keys)})")


def field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``data[key]`` if it is a ``kind`` (``default`` when absent); 422 naming the field otherwise."""
    value = data.get(key, default)
    if value is not default and not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise HTTPException(422, f"'{key}' must be {names}")
    return value


async def audited(request: Request, action: str, detail: dict[str, Any], *, run_id: str | None = None,
                   task_id: str | None = None, store: Path | None = None) -> None:
    """Write the change's audit row before doing it (503 when it cannot be written)."""
    server = server_of(request)
    name = request.path_params.get("project")
    target = store or (server.projects[name].store if name in server.projects else server.home.store)
    row = {"principal": principal_of(request).label, "client": request.scope.get(CLIENT_KEY), **detail}
    try:
        await server.stores.audit(target, action, row, run_id=run_id, task_id=task_id)
    except goatclaw.GoatclawError as exc:
        raise HTTPException(503, f"the change was not made: its audit row could not be written ({exc})") from None
    request.scope[AUDITED_KEY] = True


def int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high] (400 otherwise)."""
    text = request.query_params.get(key)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise HTTPException(400, f"'{key}' must be a whole number from {low} to {high}")
    return int(text)


def run_ref(request: Request) -> str:
    """The ``run_id`` path parameter: a run id, a prefix of one, or ``last`` (400 for anything else)."""
    ref = request.path_params["run_id"]
    if not _REF.fullmatch(ref):
        raise HTTPException(400, "a run id has letters, digits, '.', '_' and '-' only")
    return str(ref)


async def stored_run(request: Request, served: Any, ref: str) -> Any:
    """The stored run ``ref`` (id, unique prefix or ``last``), or ``None``; 409 for an ambiguous prefix."""
    def find(db: Any) -> Any:
        return db.run(ref)

    try:
        return await server_of(request).stores.call(served.store, find)
    except goatclaw.StoreError as exc:
        raise HTTPException(409, str(exc)) from None
