"""The approval form's typed inputs: fields from the request's JSON Schema, and the posted values typed back.

An approval request may ask the approver for inputs (``approval: {inputs: <JSON Schema>}``);
the page draws one field per top-level property (a checkbox for a boolean, a number box for
a number, a list for an ``enum``, a text box otherwise, a JSON box for objects and arrays)
and :func:`typed_inputs` turns the posted strings back into the types the schema names. The
approval API checks the values against the schema itself: this only parses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from goatclaw.errors import GoatclawError

__all__ = ["fields", "typed_inputs"]

#: Posted field names carry this prefix, so an input called ``csrf`` or ``reason`` cannot clash.
PREFIX = "in."


def fields(schema: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One form field per property of ``schema``: name, widget, label, help, default, choices, required."""
    if not isinstance(schema, Mapping):
        return []
    required = set(schema.get("required") or [])
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, Mapping) else {}
        kind = prop.get("type")
        widget = ("select" if "enum" in prop else "checkbox" if kind == "boolean" else
                  "number" if kind in ("integer", "number") else "json" if kind in ("object", "array") else "text")
        default = prop.get("default")
        out.append({"name": name, "field": PREFIX + name, "widget": widget, "type": kind,
                    "label": prop.get("title") or name, "help": prop.get("description"),
                    "default": json.dumps(default) if widget == "json" and default is not None else default,
                    "choices": [str(c) for c in prop.get("enum") or []], "required": name in required,
                    "step": "1" if kind == "integer" else "any"})
    return out


def typed_inputs(schema: Mapping[str, Any] | None, form: Mapping[str, Any]) -> dict[str, Any]:
    """The posted inputs as the schema's types; an empty optional field is left out.

    Raises GoatclawError for a value that will not parse as its type.
    """
    values: dict[str, Any] = {}
    for f in fields(schema):
        raw = form.get(f["field"])
        if f["widget"] == "checkbox":
            values[f["name"]] = raw is not None and raw != "false"
            continue
        if raw is None or raw == "":
            continue
        values[f["name"]] = _parse(f, str(raw))
    return values


def _parse(f: Mapping[str, Any], raw: str) -> Any:
    try:
        if f["widget"] == "json":
            return json.loads(raw)
        if f["type"] == "integer":
            return int(raw)
        if f["type"] == "number":
            return float(raw)
        if f["widget"] == "select" and f["type"] in ("integer", "number"):
            return json.loads(raw)
    except ValueError:
        raise GoatclawError(f"input '{f['name']}': {raw!r} is not a{'n' if f['type'] == 'integer' else ''} "
                            f"{f['type'] or 'JSON value'}") from None
    return raw
