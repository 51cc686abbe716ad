"""The one sandboxed Jinja2 environment: ``${{ }}`` templates and bare expressions.

* ``${{ expr }}`` interpolates; ``{% for %}``/``{% if %}`` blocks work as in Jinja2, and a
  prompt's own ``{{ }}`` is left alone. ``${# … #}`` is a comment.
* A value that is one whole ``${{ expr }}`` keeps its type (a list stays a list).
* ``if:`` and ``expr:`` are bare expressions.
* Names are strict: an undefined name is an error, never an empty string or ``None``.
* The sandbox is immutable (no ``list.append``), blocks ``_``-prefixed attributes and
  bounds ``*``/``**`` so that ``'a' * 10**9`` fails instead of eating memory.
* On mappings, keys win over methods: ``output.items`` is the ``items`` key.

Templates are compiled once per task definition and rendered many times.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

from goatclaw.errors import TemplateError

__all__ = [
    "Compiled",
    "Expression",
    "MAX_RENDER_CHARS",
    "check_expression",
    "check_value",
    "compile_expression",
    "compile_value",
    "has_template",
]

#: The most characters one rendered string (or one ``*`` result) may hold.
MAX_RENDER_CHARS = 10_000_000
_WHOLE = re.compile(r"^\s*\$\{\{(?P<expr>.*)\}\}\s*$", re.S)
_MARKERS = ("${{", "{%", "${#")


class _Environment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with ``${{ }}`` delimiters and data-first attributes."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 10_000:
            raise jinja2.exceptions.SecurityError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                    raise jinja2.exceptions.SecurityError(f"result would exceed {MAX_RENDER_CHARS:,} items")
        return super().call_binop(context, operator, left, right)


def _fromjson(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_ENV: _Environment | None = None


def environment() -> _Environment:
    """The shared environment (built on first use: importing goatclaw does nothing)."""
    global _ENV
    if _ENV is None:
        env = _Environment(
            variable_start_string="${{",
            variable_end_string="}}",
            comment_start_string="${#",
            comment_end_string="#}",
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["fromjson"] = _fromjson
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
        _ENV = env
    return _ENV


def has_template(text: str) -> bool:
    """Whether ``text`` holds any template syntax."""
    return any(m in text for m in _MARKERS)


@dataclass(frozen=True)
class Expression:
    """A compiled bare expression; call :meth:`evaluate` with a context mapping."""

    source: str
    _fn: Callable[..., Any]

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Evaluate, raising :class:`TemplateError` for undefined names or blocked access."""
        try:
            result = self._fn(**context)
            if isinstance(result, jinja2.Undefined):
                result._fail_with_undefined_error()
        except TemplateError:
            raise
        except Exception as exc:  # jinja2 and user-data errors alike: the user's mistake
            raise _runtime_error(exc, self.source) from None
        return result


def compile_expression(source: str) -> Expression:
    """Compile a bare expression such as ``output.confidence >= 0.8``."""
    try:
        fn = environment().compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"invalid expression: {exc.message}", lineno=exc.lineno) from None
    return Expression(source, fn)


class Compiled:
    """A value (string, list, mapping, scalar) with its templates compiled once."""

    __slots__ = ("_render", "is_constant", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._render = _compile(value) if _any_template(value) else None
        self.is_constant = self._render is None

    def render(self, context: Mapping[str, Any]) -> Any:
        """Render with ``context``; a constant value is returned as it is."""
        return self.value if self._render is None else self._render(context)


def compile_value(value: Any) -> Compiled:
    """Compile every template inside ``value``."""
    return Compiled(value)


def _any_template(value: Any) -> bool:
    """A quick scan: does ``value`` hold template syntax anywhere? (Concrete types first: fast.)"""
    kind = type(value)
    if kind is str:
        return "{" in value and has_template(value)
    if kind is int or kind is float or kind is bool or value is None:
        return False
    if kind is dict:
        return any(map(_any_template, value.values()))
    if kind is list or kind is tuple:
        return any(map(_any_template, value))
    if isinstance(value, str):
        return "{" in value and has_template(value)
    if isinstance(value, Mapping):
        return any(map(_any_template, value.values()))
    if isinstance(value, (list, tuple)):
        return any(map(_any_template, value))
    return False


def _compile(value: Any) -> Callable[[Mapping[str, Any]], Any] | None:
    if isinstance(value, str):
        return _compile_string(value) if has_template(value) else None
    if isinstance(value, Mapping):
        parts = {k: _compile(v) for k, v in value.items()}
        if all(p is None for p in parts.values()):
            return None
        const = dict(value)
        return lambda ctx: {k: (const[k] if p is None else p(ctx)) for k, p in parts.items()}
    if isinstance(value, (list, tuple)):
        items = [_compile(v) for v in value]
        if all(p is None for p in items):
            return None
        const_items = list(value)
        return lambda ctx: [(const_items[i] if p is None else p(ctx)) for i, p in enumerate(items)]
    return None


def _compile_string(text: str) -> Callable[[Mapping[str, Any]], Any]:
    whole = _WHOLE.match(text)
    if whole and "${{" not in whole.group("expr") and "{%" not in text:
        expr = compile_expression(whole.group("expr"))
        return expr.evaluate
    try:
        template = environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"invalid template: {exc.message}", lineno=exc.lineno) from None

    def render(ctx: Mapping[str, Any]) -> str:
        try:
            out = template.render(ctx)
        except Exception as exc:
            raise _runtime_error(exc, text) from None
        if len(out) > MAX_RENDER_CHARS:
            raise TemplateError(f"rendered text is over {MAX_RENDER_CHARS:,} characters")
        return out

    return render


def _runtime_error(exc: Exception, source: str) -> TemplateError:
    snippet = source.strip().replace("\n", " ")
    snippet = snippet if len(snippet) <= 80 else snippet[:77] + "..."
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return TemplateError(f"blocked by the template sandbox: {exc} (in '{snippet}')")
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(f"{exc.message} (in '{snippet}')")
    return TemplateError(f"{type(exc).__name__}: {exc} (in '{snippet}')")


# -- static checks ---------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateRefs:
    """What a template reads: free names and the task ids it names under ``tasks``."""

    names: frozenset[str]
    tasks: tuple[str, ...]


def check_value(value: Any) -> Iterable[tuple[tuple[str | int, ...], TemplateRefs | TemplateError]]:
    """For each templated string inside ``value``: its relative path and refs (or the error)."""
    if isinstance(value, str):
        if has_template(value):
            whole = _WHOLE.match(value)
            if whole and "${{" not in whole.group("expr") and "{%" not in value:
                yield (), check_expression(whole.group("expr"))
            else:
                yield (), _refs(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            for sub, r in check_value(v):
                yield (k, *sub), r
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            for sub, r in check_value(v):
                yield (i, *sub), r


def check_expression(source: str) -> TemplateRefs | TemplateError:
    """The refs of a bare expression, or the syntax error it has."""
    try:
        environment().compile_expression(source)
    except jinja2.TemplateSyntaxError as exc:
        return TemplateError(f"invalid expression: {exc.message}", lineno=exc.lineno)
    return _refs("${{ " + source + " }}")


def _refs(text: str) -> TemplateRefs | TemplateError:
    try:
        ast = environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return TemplateError(f"invalid template: {exc.message}", lineno=exc.lineno)
    names = frozenset(find_undeclared_variables(ast))
    task_ids: list[str] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if isinstance(base, nodes.Name) and base.name == "tasks":
            if isinstance(node, nodes.Getattr):
                task_ids.append(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                task_ids.append(node.arg.value)
    return TemplateRefs(names, tuple(task_ids))
