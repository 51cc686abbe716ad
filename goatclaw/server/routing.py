"""Routes that describe themselves: each carries what the OpenAPI document says about it.

:func:`route` makes a plain :class:`starlette.routing.Route` and hangs an :class:`Operation` on
it (summary, the scope it needs, its query parameters, its body's schema, its answers), so
that ``/openapi.json`` is generated from the very list the app routes by
(:mod:`goatclaw.server.openapi`) and cannot drift from it. Another room's routes (schedules,
webhooks, the dashboard) can be made the same way and appear in the document too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import Route

__all__ = ["Operation", "Param", "route"]


@dataclass(frozen=True)
class Param:
    """A query parameter (or header) of an operation."""

    name: str
    schema: Mapping[str, Any]
    description: str
    where: str = "query"
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says of one method of a route."""

    summary: str
    scope: str | None = None  # the scope it needs (None: open)
    params: Sequence[Param] = ()
    body: Mapping[str, Any] | None = None  # a JSON Schema ($ref to components allowed)
    responses: Mapping[int, tuple[str, Mapping[str, Any] | None]] = field(default_factory=dict)
    content_type: str = "application/json"  # of the 2xx answer
    tag: str = "runs"
    hidden: bool = False


def route(path: str, endpoint: Callable[..., Any], methods: Sequence[str], operation: Operation,
          *, name: str | None = None) -> Route:
    """A Starlette route with ``operation`` attached (``route.operation``)."""
    made = Route(path, endpoint, methods=list(methods), name=name or endpoint.__name__)
    made.operation = operation  # type: ignore[attr-defined]
    return made
