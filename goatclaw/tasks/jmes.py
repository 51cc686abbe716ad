"""JMESPath expressions for ``select:`` and pagination paths: the one module that imports jmespath.

JMESPath (https://jmespath.org) picks fields from JSON: ``items[].{id: id, name: name}``,
``data.next``, ``length(results)``. An expression is compiled once per task attempt; a bad
one fails the task ``invalid_input`` naming the argument it came from. jmespath is pure
Python and small; it is imported when an expression is first compiled.
"""

from __future__ import annotations

from typing import Any

from goatclaw.plugin import fail

__all__ = ["Expression", "compile_expression", "compile_select"]


class Expression:
    """A compiled JMESPath expression and where it came from (for messages)."""

    __slots__ = ("_parsed", "source", "text")

    def __init__(self, text: str, source: str, parsed: Any) -> None:
        self.text = text
        self.source = source
        self._parsed = parsed

    def search(self, data: Any) -> Any:
        """What the expression picks from ``data`` (``None`` when nothing matches)."""
        import jmespath.exceptions

        try:
            return self._parsed.search(data)
        except jmespath.exceptions.JMESPathError as exc:  # a function given the wrong type, say
            fail(f"{self.source}: '{self.text}' cannot be applied here: {_one_line(exc)}", error_class="invalid_output")


def compile_expression(text: Any, source: str) -> Expression:
    """``text`` compiled, or a task failure ``invalid_input`` naming ``source`` (``select``, ``paginate.items``)."""
    import jmespath
    import jmespath.exceptions

    if not isinstance(text, str) or not text.strip():
        fail(f"{source} must be a JMESPath expression such as 'items[].id', not {text!r}",
             error_class="invalid_input")
    try:
        return Expression(text, source, jmespath.compile(text))
    except jmespath.exceptions.JMESPathError as exc:
        fail(f"{source}: '{text}' is not a valid JMESPath expression: {_one_line(exc)}", error_class="invalid_input")


def compile_select(text: Any, source: str = "select") -> Any:
    """A ``select:``: JSONPath when it starts with ``$`` (:mod:`goatclaw.tasks.jsonpath`), else JMESPath."""
    if isinstance(text, str) and text.lstrip().startswith("$"):
        from goatclaw.tasks.jsonpath import compile_jsonpath

        return compile_jsonpath(text.strip(), source)
    return compile_expression(text, source)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
