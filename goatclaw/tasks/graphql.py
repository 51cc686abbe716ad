"""``graphql``: a GraphQL query or mutation over HTTP, its ``errors`` turned into task failures.

::

    uses: graphql
    with:
      url: https://api.example.com/graphql
      query: |
        query Issues($after: String) {
          repo { issues(first: 50, after: $after) { nodes { id title } pageInfo { endCursor hasNextPage } } }
        }
      variables: {}
      auth: {bearer: "${{ secrets.API_TOKEN }}"}
      paginate: {cursor: repo.issues.pageInfo.endCursor, has_next: repo.issues.pageInfo.hasNextPage,
                 variable: after, items: repo.issues.nodes, max_pages: 10}

The request goes through the ``http`` task's :class:`~goatclaw.tasks.http.Session`: the same
``permissions.network`` checks, credentials, rate limits, audit and ``Retry-After`` waits. The
output is ``{"data": ...}`` (``select:`` picks from it), or, paginating, ``{"items", "pages",
"truncated", "stopped"}``. A response with ``errors`` fails the task with the class its first
error's code means (``extensions.code`` or ``type``): ``UNAUTHENTICATED``/``FORBIDDEN`` are
``auth``, ``BAD_USER_INPUT``/``GRAPHQL_VALIDATION_FAILED``/``GRAPHQL_PARSE_FAILED`` are
``invalid_input``, ``RATE_LIMITED``/``THROTTLED`` are ``rate_limit``, ``INTERNAL_SERVER_ERROR``
is ``server_error``; any other is ``upstream``. With ``partial: true`` a response that has
data *and* errors succeeds, the errors listed in the output. Paths in ``paginate`` are JMESPath
over ``data``, and so is ``select`` (or JSONPath, when it starts with ``$``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from goatclaw.plugin import TaskContext, fail, task
from goatclaw.tasks.http import Call, Session, _check_options, _max_wait
from goatclaw.tasks.httpauth import parse_auth
from goatclaw.tasks.jmes import compile_expression, compile_select
from goatclaw.tasks.pagination import Page, Pager

__all__ = ["ERROR_CLASSES", "graphql"]

#: GraphQL error codes (``extensions.code``, or GitHub's ``type``) and the task error class each means.
ERROR_CLASSES: Mapping[str, str] = {
    "UNAUTHENTICATED": "auth", "UNAUTHORIZED": "auth", "FORBIDDEN": "auth",
    "BAD_USER_INPUT": "invalid_input", "GRAPHQL_VALIDATION_FAILED": "invalid_input",
    "GRAPHQL_PARSE_FAILED": "invalid_input", "BAD_REQUEST": "invalid_input", "NOT_FOUND": "invalid_input",
    "PERSISTED_QUERY_NOT_FOUND": "invalid_input",
    "RATE_LIMITED": "rate_limit", "THROTTLED": "rate_limit", "TOO_MANY_REQUESTS": "rate_limit",
    "INTERNAL_SERVER_ERROR": "server_error", "SERVICE_UNAVAILABLE": "server_error", "TIMEOUT": "timeout",
}
_MESSAGES = 3  # errors quoted in a failure message
_KEPT_ERRORS = 20  # errors kept in the failure's details
_ANSWERS = frozenset([*range(200, 300), 400, 422])  # statuses whose body may carry GraphQL errors


@task(cacheable=False, permissions=("network",), untrusted_output=True, sinks=("url",))
async def graphql(ctx: TaskContext, *, url: str, query: str, variables: dict[str, Any] | None = None,
                  operation_name: str | None = None, headers: dict[str, str] | None = None,
                  auth: dict[str, Any] | None = None, paginate: dict[str, Any] | None = None,
                  select: str | None = None, partial: bool = False, timeout: float = 30,
                  max_wait: float | None = None) -> dict[str, Any]:
    """Send ``query`` with ``variables`` to a GraphQL endpoint; returns ``data`` (or the paginated ``items``).

    ``errors`` in the answer fail the task with the class their code means (``partial: true``
    keeps data that came with errors). ``auth``, ``select`` and ``max_wait`` are as for ``http``;
    ``paginate`` follows a cursor: ``{cursor, variable, has_next?, items?, max_pages?, max_items?}``.
    """
    _check_options(url, None, None, "json", timeout)
    if not isinstance(query, str) or not query.strip():
        fail("query must be the text of a GraphQL query or mutation", error_class="invalid_input")
    if variables is not None and not isinstance(variables, Mapping):
        fail(f"variables must be a mapping, not {type(variables).__name__}", error_class="invalid_input")
    picker = compile_select(select) if select is not None else None
    pager = _pager(paginate) if paginate is not None else None
    base = Call("POST", url, {"Accept": "application/graphql-response+json, application/json", **(headers or {})},
                {}, None)
    payload = {"query": query, **({"operationName": operation_name} if operation_name else {})}
    async with Session(ctx, timeout=timeout, max_wait=_max_wait(max_wait, paginating=pager is not None),
                       auth=parse_auth(auth)) as session:
        async def ask(values: dict[str, Any]) -> tuple[Any, list[Any], str, int]:
            call = Call(base.method, base.url, base.headers, {}, {**payload, "variables": values})
            reply = await session.send(call, _ANSWERS, "json")
            data, errors = _answer(reply.body, reply.url, reply.status, partial)
            return data, errors, reply.url, reply.status

        if pager is None:
            data, errors, _, _ = await ask(dict(variables or {}))
            out: dict[str, Any] = {"data": picker.search(data) if picker is not None else data}
            return {**out, "errors": errors} if errors else out

        async def fetch(_url: str, values: dict[str, Any]) -> Page:
            data, _, where, status = await ask(values)
            return Page(data, where, None, status)

        return await pager.harvest(fetch, url, dict(variables or {}), picker)


def _pager(spec: Any) -> Pager:
    """``paginate:`` of a GraphQL query as the http pager's cursor style over the variables."""
    if not isinstance(spec, Mapping):
        fail("paginate must be a mapping: {cursor: <path>, variable: <name>, has_next: <path>, items: <path>}",
             error_class="invalid_input")
    allowed = {"cursor", "variable", "has_next", "items", "max_pages", "max_items"}
    extra = sorted(set(map(str, spec)) - allowed)
    if extra or "cursor" not in spec or "variable" not in spec:
        fail(f"graphql paginate needs cursor and variable and takes: {', '.join(sorted(allowed))}"
             + (f" (not {', '.join(extra)})" if extra else ""), error_class="invalid_input")
    cursor = spec["cursor"]
    if "has_next" in spec:  # a cursor only while has_next holds: JMESPath's && yields false otherwise
        compile_expression(spec["has_next"], "paginate.has_next")
        compile_expression(cursor, "paginate.cursor")
        cursor = f"({spec['has_next']}) && ({cursor})"
    rest = {k: spec[k] for k in ("items", "max_pages", "max_items") if k in spec}
    return Pager.parse({"cursor": cursor, "param": spec["variable"], **rest})


def _answer(body: Any, url: str, status: int, partial: bool) -> tuple[Any, list[Any]]:
    """``data`` and the errors kept, or a failure for errors (or a body that is no GraphQL answer)."""
    if not isinstance(body, Mapping) or ("data" not in body and "errors" not in body):
        if status >= 400:
            fail(f"POST {url} returned {status} without a GraphQL answer", error_class="invalid_input", status=status)
        fail(f"POST {url}: the answer is not a GraphQL response (no data or errors)", error_class="invalid_output",
             status=status)
    errors = body.get("errors") or []
    if not isinstance(errors, list):
        errors = [errors]
    data = body.get("data")
    if errors and (data is None or not partial):
        _fail_errors(errors, url, status)
    return data, errors[:_KEPT_ERRORS]


def _fail_errors(errors: list[Any], url: str, status: int) -> None:
    """Fail with the class of the first error's code, quoting the first few messages with their paths."""
    codes = [_code(e) for e in errors]
    error_class = next((ERROR_CLASSES[c] for c in codes if c in ERROR_CLASSES), "upstream")
    shown = "; ".join(_describe(e) for e in errors[:_MESSAGES])
    more = f" (and {len(errors) - _MESSAGES} more)" if len(errors) > _MESSAGES else ""
    fail(f"POST {url}: GraphQL error{'s' if len(errors) > 1 else ''}: {shown}{more}", error_class=error_class,
         status=status, codes=[c for c in codes if c], errors=errors[:_KEPT_ERRORS])


def _code(error: Any) -> str | None:
    if not isinstance(error, Mapping):
        return None
    ext = error.get("extensions")
    code = ext.get("code") if isinstance(ext, Mapping) else None
    code = code if isinstance(code, str) else error.get("type")
    return code.upper() if isinstance(code, str) else None


def _describe(error: Any) -> str:
    if not isinstance(error, Mapping):
        return str(error)[:300]
    text = str(error.get("message", "an error without a message"))[:300]
    path = error.get("path")
    where = ".".join(str(p) for p in path) if isinstance(path, list) and path else ""
    code = _code(error)
    return (f"{where}: " if where else "") + text + (f" [{code}]" if code else "")
