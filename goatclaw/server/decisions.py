"""Approval steps over HTTP: the requests of waiting runs, and the decisions that let them go on.

A run that reaches an approval stops in state ``waiting`` (docs/approvals.md); nothing of it
is held. ``GET …/approvals`` lists the requests with their evidence; ``POST
…/runs/RUN/approve`` and ``…/reject`` record the decision through :func:`goatclaw.decide`
(by the principal, audited there too, final) with ``resume=False``, and the server then
resumes the run through its own bounded queue (:func:`goatclaw.server.triggers.resume`),
so its events reach the event streams and SIGTERM drains it like any other run. A run that
is still going on (another process on the store) takes the decision when it reaches the task.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

import goatclaw
from goatclaw.server import requests, triggers
from goatclaw.server.auth import principal_of
from goatclaw.server.guard import AUDITED_KEY, CLIENT_KEY
from goatclaw.server.routing import Operation, Param, route

__all__ = ["approvals", "approve", "reject", "routes"]

_P = "/api/projects/{project}"
_ERR = {"$ref": "#/components/schemas/Error"}
_DENIED = {401: ("No principal (no token or session)", _ERR), 403: ("Not allowed (scope or project)", _ERR)}
_MISSING = {404: ("No such project or run", _ERR)}


async def approvals(request: Request) -> Response:
    """The project's approval requests, oldest first: waiting ones (``?all=true``: decided ones too)."""
    served = requests.served(request, "read")
    run_id = request.query_params.get("run")
    waiting = request.query_params.get("all", "false").lower() not in ("1", "true", "yes")
    if not served.store.is_file():
        return JSONResponse({"project": served.name, "approvals": [], "untrusted": True})
    rows = await anyio.to_thread.run_sync(lambda: goatclaw.approvals(store=served.store, project=served.project,
                                                                       run_id=run_id, waiting=waiting))
    return JSONResponse(json.loads(json.dumps({"project": served.name, "approvals": rows, "untrusted": True},
                                              default=str)))


async def approve(request: Request) -> Response:
    """Approve a waiting run's request (with the inputs its schema asks for); the run is queued to go on."""
    return await _decide(request, approve=True)


async def reject(request: Request) -> Response:
    """Reject a waiting run's request (with a reason); the run goes on, the task failing as ``rejected``."""
    return await _decide(request, approve=False)


async def _decide(request: Request, *, approve: bool) -> Response:
    """Record the decision through the public API, then resume the run through the queue."""
    served = requests.served(request, "approve")
    ref = requests.run_ref(request)
    data = await requests.json_body(request)
    requests.only_keys(data, "task", "inputs", "reason")
    task_id = requests.field(data, "task", str)
    inputs = requests.field(data, "inputs", dict)
    reason = requests.field(data, "reason", str)
    if inputs is not None and not approve:
        raise HTTPException(422, "a rejection takes a 'reason', not 'inputs'")
    who = principal_of(request)
    row = await requests.stored_run(request, served, ref)
    if row is None:
        raise HTTPException(404, f"no run '{ref}' in the project '{served.name}'")
    verb = "approved" if approve else "rejected"
    await requests.audited(request, f"approval.{verb}", {"task": task_id, "inputs": sorted(inputs or {}),
                                                     "reason": reason}, run_id=row.id, task_id=task_id)
    await _record(row.id, task_id, approve=approve, who=who.label, inputs=inputs, reason=reason, served=served)
    answer: dict[str, Any] = {"run_id": row.id, "decision": verb, "by": who.label}
    fresh = await requests.stored_run(request, served, row.id)
    if fresh is not None and fresh.status == "running" and not fresh.interrupted:
        return JSONResponse({**answer, "resumed": "the run is going on and takes the decision at the task"},
                            status_code=202)
    job = await triggers.resume(requests.server_of(request), served, fresh or row, who=who.label,
                                client=request.scope.get(CLIENT_KEY), action="run.resumed",
                                detail={"after": f"approval.{verb}"})
    request.scope[AUDITED_KEY] = True
    base = f"/api/projects/{served.name}/runs/{row.id}"
    return JSONResponse({**answer, "resumed": "queued", **job.to_dict(),
                         "links": {"run": base, "events": base + "/events"}}, status_code=202)


async def _record(run_id: str, task_id: str | None, *, approve: bool, who: str, inputs: Any, reason: str | None,
                  served: Any) -> None:
    """:func:`goatclaw.decide` without resuming: 422 for inputs the schema refuses, 409 when nothing waits."""
    try:
        await anyio.to_thread.run_sync(lambda: goatclaw.decide(
            run_id, task_id, approve=approve, who=who, inputs=inputs, reason=reason, store=served.store,
            project=served.project, resume=False))
    except goatclaw.SpecError as exc:
        raise HTTPException(422, "the inputs do not fit the request's schema: " + "; ".join(
            str(p) for p in exc.problems)) from None
    except goatclaw.StoreError:
        raise
    except goatclaw.GoatclawError as exc:
        raise HTTPException(409, str(exc)) from None


def routes() -> list[BaseRoute]:
    """The approval routes (the JSON API's table includes them)."""
    return [
        route(f"{_P}/approvals", approvals, ["GET"], Operation(
            "Approval requests (waiting; all=true: decided too) with their evidence", "read", tag="approvals",
            params=[Param("run", {"type": "string"}, "Only this run's requests."),
                    Param("all", {"type": "boolean", "default": False}, "Decided requests too.")],
            responses={200: ("Requests", None), **_DENIED, **_MISSING})),
        route(f"{_P}/runs/{{run_id}}/approve", approve, ["POST"], Operation(
            "Approve a waiting request; the run goes on (queued)", "approve", tag="approvals",
            body={"$ref": "#/components/schemas/Decision"},
            responses={202: ("Recorded; the run goes on", None), 409: ("Nothing waits, or decided already", _ERR),
                       422: ("The inputs do not fit the request's schema", _ERR), **_DENIED, **_MISSING})),
        route(f"{_P}/runs/{{run_id}}/reject", reject, ["POST"], Operation(
            "Reject a waiting request; the run goes on and the task fails as rejected", "approve",
            tag="approvals", body={"$ref": "#/components/schemas/Decision"},
            responses={202: ("Recorded; the run goes on", None), 409: ("Nothing waits, or decided already", _ERR),
                       **_DENIED, **_MISSING})),
    ]
