"""A hosted project's folder: its pipeline files, each checked, and the schema of its vars.

What ``GET /api/projects/P/pipelines`` lists: YAML files under the folder with a top-level
``tasks:`` (hidden folders, virtual environments and symlinks out of the folder skipped;
pipeline tests ``*.test.yaml`` and the project file left out), at most :data:`MAX_LISTED`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import goatclaw
from goatclaw import api

__all__ = ["MAX_LISTED", "pipeline_detail", "pipeline_files", "pipeline_rows", "vars_schema"]

#: The most pipeline files one listing gives.
MAX_LISTED = 1000


def pipeline_rows(served: Any) -> list[dict[str, Any]]:
    """Each pipeline file of the project: path, name, description, validity, vars' schema (or its problems)."""
    rows = []
    for file in pipeline_files(served.root):
        head = _heading(file)
        try:
            loaded = goatclaw.load(file, project=served.project)
        except goatclaw.GoatclawError as exc:
            problems = [str(p).replace(str(served.root) + os.sep, "") for p in getattr(exc, "problems", [])] \
                or [str(exc)]
            rows.append({"path": served.shown(file), **head, "valid": False, "problems": problems})
            continue
        rows.append({"path": served.shown(file), "name": loaded.name, "description": loaded.description,
                     "valid": True, "vars_schema": vars_schema(loaded), "tasks": list(loaded.tasks)})
    return rows


def pipeline_detail(served: Any, loaded: Any) -> dict[str, Any]:
    """One checked pipeline: vars' schema, tasks with their needs, plan levels, permissions."""
    from goatclaw.api import permissions_of

    compiled = goatclaw.plan(loaded)
    return json.loads(json.dumps({
        "path": served.shown(loaded.file), "name": loaded.name, "description": loaded.description,
        "vars_schema": vars_schema(loaded), "levels": [list(level) for level in compiled.levels],
        "tasks": {tid: {"uses": t.uses, "needs": list(t.needs)} for tid, t in loaded.tasks.items()},
        "permissions": permissions_of(loaded)}, default=str))


def vars_schema(loaded: Any) -> dict[str, Any]:
    """A JSON Schema of a pipeline's vars, from their defaults (what a trigger's ``vars`` may hold)."""
    props = {}
    for key, value in loaded.vars.items():
        kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value))
        if isinstance(value, list | tuple):
            kind = "array"
        elif isinstance(value, Mapping):
            kind = "object"
        props[key] = {**({"type": kind} if kind else {}), "default": json.loads(json.dumps(value, default=str))}
    return {"type": "object", "properties": props, "additionalProperties": False}


def pipeline_files(root: Path) -> list[Path]:
    """YAML files under ``root`` with a top-level ``tasks:`` (hidden folders and symlinks out of it skipped)."""
    return api.pipeline_files(root, limit=MAX_LISTED)


def _head(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.read(256_000)
    except OSError:
        return ""


def _heading(path: Path) -> dict[str, str | None]:
    head = _head(path)
    found: dict[str, str | None] = {"name": path.stem, "description": None}
    for key in ("name", "description"):
        match = re.search(rf"^{key}\s*:\s*(\S.*?)\s*$", head, re.MULTILINE)
        if match and not match[1].startswith(("|", ">", "#")):
            found[key] = match[1].strip("'\"")
    return found
