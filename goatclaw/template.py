"""The one sandboxed Jinja2 environment: ``${{ }}`` templates and bare expressions.

* ``${{ expr }}`` interpolates; ``{% for %}``/``{% if %}`` blocks work as in Jinja2, and a
  prompt's own ``{{ }}`` is left alone. ``${# … #}`` is a comment.
* A value that is one whole ``${{ expr }}`` keeps its type (a list stays a list).
* ``if:`` and ``expr:`` are bare expressions.
* Names are strict: an undefined name is an error, never an empty string or ``None``.
* The sandbox is immutable (no ``list.append``), blocks ``_``-prefixed attributes and
  bounds ``*``/``**``, ``%`` and ``format`` widths, padding, ``slice``/``batch`` counts
  and rendered output, so that ``'a' * 10**9`` fails instead of eating memory.
* Each evaluation is bounded in time (:data:`MAX_RENDER_SECONDS`): a watchdog thread
  interrupts a loop nest that prints nothing, and the render fails with a TemplateError.
* On mappings, keys win over methods: ``output.items`` is the ``items`` key.

Templates are compiled once per task definition and rendered many times.
"""

from __future__ import annotations

import ctypes
import json
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jinja2
from jinja2 import filters, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

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
#: The longest one template or expression may take to evaluate, in seconds.
MAX_RENDER_SECONDS = 5.0
_WHOLE = re.compile(r"^\s*\$\{\{(?P<expr>.*)\}\}\s*$", re.S)
_MARKERS = ("${{", "{%", "${#")


class _Environment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with ``${{ }}`` delimiters and data-first attributes."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            if hasattr(type(obj), "explain_missing"):  # e.g. env: why a variable is not visible
                return self.undefined(hint=obj.explain_missing(attribute), obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Mapping) and hasattr(type(obj), "explain_missing") and isinstance(argument, str) \
                and argument not in obj:
            return self.undefined(hint=obj.explain_missing(argument), obj=obj, name=argument)
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and (
                abs(right) > 10_000 or (isinstance(left, int) and left.bit_length() * right > 1_000_000)):
            raise jinja2.exceptions.SecurityError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                    raise jinja2.exceptions.SecurityError(f"result would exceed {MAX_RENDER_CHARS:,} items")
        if operator == "%" and isinstance(left, str):
            _check_printf(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name in _STR_SIZE_METHODS:
            size = max((a for a in (*args, *kwargs.values()) if type(a) is int), default=0)
            _bound(size * len(owner) if name == "expandtabs" else size)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format(fmt)
            return wrapped(*args, **kwargs)

        return checked


# The sandbox bounds time and memory only where Jinja2 lets one call build a huge string
# from a small number: padding widths, format widths and precisions, slice and batch counts.
_STR_SIZE_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _bound(size: int) -> None:
    if size > MAX_RENDER_CHARS:
        raise jinja2.exceptions.SecurityError(f"result would exceed {MAX_RENDER_CHARS:,} characters")


def _check_printf(fmt: str) -> None:
    """``'%9999999999s' % x``: refuse widths and precisions that add up past the bound."""
    total = 0
    for width, precision in _PRINTF.findall(fmt):
        if "*" in (width, precision):
            raise jinja2.exceptions.SecurityError("'*' widths are not allowed in % formats")
        total += int(width or 0) + int(precision or 0)
    _bound(total)


def _check_format(fmt: str) -> None:
    """``'{:>9999999999}'.format(x)``: the same for ``str.format`` specs (nested specs refused)."""
    total = 0
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise jinja2.exceptions.SecurityError("nested format specs are not allowed")
        total += sum(int(d) for d in _DIGITS.findall(spec or ""))
    _bound(total)


def _center(value: str, width: int = 80) -> str:
    _bound(width)
    return filters.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    _bound((width if isinstance(width, int) else len(width)) * (str(s).count("\n") + 1))
    return filters.do_indent(s, width, first, blank)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_printf(str(value))
    return filters.do_format(value, *args, **kwargs)


@jinja2.pass_eval_context
def _slice(eval_ctx: Any, value: Any, slices: int, fill_with: Any = None) -> Any:
    _bound(slices)
    return filters.do_slice(eval_ctx, value, slices, fill_with)


def _batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    _bound(linecount)
    return filters.do_batch(value, linecount, fill_with)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _bound(n * max * 20)
    return generate_lorem_ipsum(n, html, min, max)


def _strict_test(test: Callable[..., bool]) -> Callable[..., bool]:
    """A Jinja2 test that raises on an undefined value (only ``defined`` may probe one)."""

    def strict(value: Any, *args: Any) -> bool:
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        return test(value, *args)

    return strict


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
        env.filters.update(fromjson=_fromjson, center=_center, indent=_indent, format=_format, slice=_slice,
                           batch=_batch)
        env.globals["lipsum"] = _lipsum
        # `x is none` must not quietly answer False for an undefined or blocked x
        env.tests.update({name: _strict_test(test) for name, test in env.tests.items()
                          if name not in ("defined", "undefined") and not hasattr(test, "jinja_pass_arg")})
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
        _ENV = env
    return _ENV


class _Overtime(BaseException):
    """Raised inside a render that ran past its deadline (a BaseException: no template code catches it)."""


class _Watchdog:
    """One daemon thread, alive while renders run (and a second after), that interrupts overdue ones.

    A render registers its thread's deadline and removes it when done (under a lock); the
    watchdog removes an expired deadline *and* raises :class:`_Overtime` in that thread under
    the same lock, so the exception can only land inside the render that registered it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deadlines: dict[int, float] = {}
        self.thread: threading.Thread | None = None

    def start(self) -> bool:
        """Register the calling thread's render; False if one is already running (nested)."""
        ident = threading.get_ident()
        with self.lock:
            if ident in self.deadlines:
                return False
            self.deadlines[ident] = time.monotonic() + MAX_RENDER_SECONDS
            if self.thread is None:
                self.thread = threading.Thread(target=self._watch, name="goatclaw-template-watchdog", daemon=True)
                self.thread.start()
        return True

    def stop(self) -> None:
        """The calling thread's render is over."""
        with self.lock:
            self.deadlines.pop(threading.get_ident(), None)
        _checkpoint()  # a pending _Overtime surfaces here, inside the caller's try

    def _watch(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with self.lock:
                if self.deadlines:
                    idle_since = now
                elif now - idle_since > 1.0:  # exit when idle: no thread lingers (a fork then copies none)
                    self.thread = None
                    return
                for ident, deadline in list(self.deadlines.items()):
                    if now > deadline:
                        del self.deadlines[ident]
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_Overtime))


def _checkpoint() -> None:
    """A Python call: the interpreter delivers a pending asynchronous exception on entry."""


_WATCHDOG = _Watchdog()


def _bounded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(...)`` with the render deadline; a TemplateError when it passes."""
    try:
        owner = _WATCHDOG.start()
        try:
            return fn(*args, **kwargs)
        finally:
            if owner:
                _WATCHDOG.stop()
    except _Overtime:
        raise TemplateError(f"evaluation took longer than {MAX_RENDER_SECONDS:g}s (a runaway loop?)") from None


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
            result = _bounded(self._fn, **context)
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
    """Whether ``value`` holds template syntax anywhere (concrete types are checked first: fast)."""
    kind = type(value)
    if kind is str:
        return "{" in value and has_template(value)
    if kind is int or kind is float or kind is bool or value is None:
        return False
    if kind is dict or kind is MappingProxyType:
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
        return _bounded(_render, ctx)  # type: ignore[no-any-return]

    def _render(ctx: Mapping[str, Any]) -> str:
        # stream and count, so that a loop that prints too much stops at the bound, not at the end
        parts: list[str] = []
        size = 0
        try:
            for part in template.generate(ctx):
                size += len(part)
                if size > MAX_RENDER_CHARS:
                    raise TemplateError(f"rendered text is over {MAX_RENDER_CHARS:,} characters")
                parts.append(part)
        except TemplateError:
            raise
        except Exception as exc:
            raise _runtime_error(exc, text) from None
        return "".join(parts)

    return render


#: In an undefined name's explanation: the name exists but the task is not granted it.
DENIED_MARK = "is not visible to this task"


def _runtime_error(exc: Exception, source: str) -> TemplateError:
    snippet = source.strip().replace("\n", " ")
    snippet = snippet if len(snippet) <= 80 else snippet[:77] + "..."
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return TemplateError(f"blocked by the template sandbox: {exc} (in '{snippet}')")
    if isinstance(exc, jinja2.UndefinedError):
        denied = bool(exc.message) and DENIED_MARK in str(exc.message)  # _EnvView.explain_missing said why
        return TemplateError(f"{exc.message} (in '{snippet}')",
                             error_class="permission_denied" if denied else "invalid_input")
    return TemplateError(f"{type(exc).__name__}: {exc} (in '{snippet}')")


# -- static checks ---------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateRefs:
    """What a template reads: free names and the task ids it names under ``tasks``.

    ``run_errors``: whether it may read ``run.errors`` (named, through a computed key, or
    by taking ``run`` whole), the failed tasks' error texts that ``on_failure`` and
    ``finally`` tasks see.
    """

    names: frozenset[str]
    tasks: tuple[str, ...]
    run_errors: bool = False


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
    run_fields = 0  # uses of run.<a field other than errors>
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if not isinstance(base, nodes.Name):
            continue
        key = node.attr if isinstance(node, nodes.Getattr) else (
            node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None)
        if base.name == "tasks" and key is not None:
            task_ids.append(key)
        elif base.name == "run" and key is not None and key != "errors":
            run_fields += 1
    run_errors = "run" in names and sum(
        1 for n in ast.find_all(nodes.Name) if n.name == "run" and n.ctx == "load") > run_fields
    return TemplateRefs(names, tuple(task_ids), run_errors)
