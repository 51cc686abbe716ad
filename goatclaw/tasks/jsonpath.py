"""JSONPath (RFC 9535) for ``select:``: the one module that imports python-jsonpath.

A ``select:`` that starts with ``$`` is JSONPath (``$.items[*].id``, ``$..name``,
``$.data[?@.stars > 10]``) rather than JMESPath. A singular query (names and indexes only:
``$.meta.total``, ``$.items[0]``) gives its one value, or ``None`` when nothing is there; any
other gives the list of every node it matches, in document order. The standard syntax only
(the library's strict mode: no ``=~`` and no other extension), and without the ``match()`` and ``search()`` functions:
their patterns would run Python's backtracking ``re`` over untrusted responses, so a filter
compares with ``==``, ``<``, ``length()``, ``count()`` and ``value()`` instead. python-jsonpath
is pure Python; it is imported when an expression is first compiled.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from goatclaw.plugin import fail

__all__ = ["JsonPath", "compile_jsonpath"]

#: Functions of RFC 9535 left out: each takes a regular expression.
_REFUSED_FUNCTIONS = ("match", "search")


class JsonPath:
    """A compiled JSONPath query and where it came from; :meth:`search` as :class:`~goatclaw.tasks.jmes.Expression`."""

    __slots__ = ("_query", "singular", "source", "text")

    def __init__(self, text: str, source: str, query: Any) -> None:
        self.text = text
        self.source = source
        self._query = query
        self.singular = bool(query.singular_query())

    def search(self, data: Any) -> Any:
        """The one value a singular query picks (``None`` if absent), else every value matched (a list)."""
        import jsonpath

        try:
            found = list(self._query.findall(data))
        except jsonpath.JSONPathError as exc:
            fail(f"{self.source}: '{self.text}' cannot be applied here: {_first_line(exc)}",
                 error_class="invalid_output")
        if self.singular:
            return found[0] if found else None
        return found


@cache
def _environment() -> Any:
    import jsonpath

    env = jsonpath.JSONPathEnvironment(strict=True)
    for name in _REFUSED_FUNCTIONS:
        env.function_extensions.pop(name, None)
    return env


def compile_jsonpath(text: str, source: str) -> JsonPath:
    """``text`` compiled, or a task failure ``invalid_input`` naming ``source`` and where the query is wrong."""
    import jsonpath

    try:
        return JsonPath(text, source, _environment().compile(text))
    except jsonpath.JSONPathError as exc:
        refused = next((f for f in _REFUSED_FUNCTIONS if f"function '{f}' is not defined" in str(exc)), None)
        why = (f"{refused}() is not available (it would run a regular expression over the response; "
               "compare with ==, <, length() or value())") if refused else _first_line(exc)
        fail(f"{source}: '{text}' is not a JSONPath query goatclaw runs: {why}", error_class="invalid_input")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
