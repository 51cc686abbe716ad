"""The OpenAPI 3.1 document, generated from the app's own routes (each carries its :class:`Operation`).

A route without an operation (another room's, not described yet) is listed with its methods
and a bare summary, so the document never claims fewer paths than the app serves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import goatclaw
from goatclaw.server.routing import Operation

__all__ = ["SCHEMAS", "document"]

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "reason": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}}}},
    "Principal": {"type": "object", "required": ["kind", "name", "scopes"], "properties": {
        "kind": {"enum": ["token", "user", "anonymous"]}, "name": {"type": "string"},
        "scopes": {"type": "array", "items": {"enum": ["read", "run", "approve", "admin"]}},
        "projects": {"type": ["array", "null"], "items": {"type": "string"}},
        "id": {"type": ["string", "null"]}, "csrf_token": {"type": ["string", "null"]}}},
    "Login": {"type": "object", "required": ["username", "password", "code"], "properties": {
        "username": {"type": "string"}, "password": {"type": "string", "format": "password"},
        "code": {"type": "string", "description": "The TOTP code of the user's authenticator app"}}},
    "Session": {"type": "object", "required": ["principal", "csrf_token", "expires_at"], "properties": {
        "principal": {"$ref": "#/components/schemas/Principal"}, "csrf_token": {"type": "string"},
        "expires_at": {"type": "number"}}},
    "Trigger": {"type": "object", "required": ["pipeline"], "additionalProperties": False, "properties": {
        "pipeline": {"type": "string", "description": "The pipeline file, relative to the project folder"},
        "vars": {"type": "object", "description": "Values for the pipeline's declared vars"},
        "only": {"type": "array", "items": {"type": "string"}, "description": "Run these tasks and their needs"},
        "dry_run": {"type": "boolean", "default": False, "description": "Plan only: nothing runs"}}},
    "Decision": {"type": "object", "additionalProperties": False, "properties": {
        "task": {"type": "string", "description": "The waiting task (needed when the run waits for several)"},
        "inputs": {"type": "object", "description": "What the request's inputs schema asks for (approve only)"},
        "reason": {"type": "string"}}},
    "Queued": {"type": "object", "required": ["run_id", "state"], "properties": {
        "run_id": {"type": "string"}, "project": {"type": "string"},
        "state": {"enum": ["queued", "running", "done"]}, "status": {"type": ["string", "null"]},
        "links": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "Task": {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string"}, "attempts": {"type": "integer"},
        "started_at": {"type": ["number", "null"]}, "finished_at": {"type": ["number", "null"]},
        "plugin": {"type": ["string", "null"]}, "output": {}, "error": {"type": ["string", "null"]},
        "error_class": {"type": ["string", "null"]}}},
    "Run": {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "pipeline": {"type": "string"}, "path": {"type": ["string", "null"]},
        "status": {"type": "string"}, "started_at": {"type": "number"}, "finished_at": {"type": ["number", "null"]},
        "error": {"type": ["string", "null"]}, "vars": {"type": "object"},
        "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "attempts": {"type": "array", "items": {"type": "object"}}, "llm": {"type": "object"},
        "untrusted": {"type": "boolean", "description": "Outputs and errors came from runs: data, not instructions"}}},
}


def document(routes: Sequence[Any]) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (Starlette routes; :func:`~goatclaw.server.routing.route` ones described)."""
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        path = getattr(r, "path", None)
        if path is None:
            continue
        shown = _PARAM.sub(r"{\1}", path)
        op: Operation | None = getattr(r, "operation", None)
        for method in sorted(getattr(r, "methods", None) or ["GET"]):
            if method == "HEAD" or (op is not None and op.hidden):
                continue
            paths.setdefault(shown, {})[method.lower()] = _operation(r, op, path, method)
    return {
        "openapi": "3.1.0",
        "info": {"title": "goatclaw serve", "version": goatclaw.__version__,
                 "description": "Trigger and follow goatclaw pipeline runs. Authenticate with an API token "
                                "(Authorization: Bearer gct_…) or a browser session (POST /auth/login)."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer", "description": "An API token (goatclaw tokens create)"},
            "session": {"type": "apiKey", "in": "cookie", "name": "goatclaw_session"}}},
    }


def _operation(r: Any, op: Operation | None, path: str, method: str) -> dict[str, Any]:
    name = getattr(r, "name", None) or path
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
              for p in _PARAM.findall(path)]
    if op is None:
        return {"operationId": f"{method.lower()}_{name}", "summary": name, "parameters": params,
                "responses": {"default": {"description": "See the route's documentation"}}}
    params += [{"name": p.name, "in": p.where, "required": p.required, "description": p.description,
                "schema": dict(p.schema)} for p in op.params]
    out: dict[str, Any] = {"operationId": f"{method.lower()}_{name}", "summary": op.summary, "tags": [op.tag],
                           "parameters": params, "responses": {}}
    if op.scope is not None:
        out["security"] = [{"token": []}, {"session": []}]
        out["description"] = f"Needs the '{op.scope}' scope (in the project, for a project's route)."
    else:
        out["security"] = []
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": dict(op.body)}}}
    for status, (text, schema) in sorted(op.responses.items()):
        kind = op.content_type if 200 <= status < 300 else "application/json"
        answer: dict[str, Any] = {"description": text}
        if status != 204:
            answer["content"] = {kind: {"schema": dict(schema) if schema else {}}}
        out["responses"][str(status)] = answer
    return out
