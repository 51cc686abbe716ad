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

import contextvars
import ctypes
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import GeneratorType, MappingProxyType
from typing import Any

import jinja2
from jinja2 import filters, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import TemplateExpression
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

from goatclaw import sizes
from goatclaw.codecache import CodeCache, file_stamp
from goatclaw.errors import TemplateError
from goatclaw.sizes import TooLarge

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

#: The most characters one rendered string (or any value a template builds) may hold.
MAX_RENDER_CHARS = sizes.MAX_WEIGHT
#: The longest one template or expression may take to evaluate, in seconds.
MAX_RENDER_SECONDS = 5.0
#: How much more memory (bytes of the process's resident set) a render may take before it is stopped.
MAX_RENDER_BYTES = 512 * 2**20
_WHOLE = re.compile(r"^\s*\$\{\{(?P<expr>.*)\}\}\s*$", re.S)
_MARKERS = ("${{", "{%", "${#")


class _CodeGenerator(CodeGenerator):
    """Jinja2's code generator, with every value a template builds passed through a size check.

    ``a ~ b``, list, tuple and dict literals call the environment's :meth:`_Environment.joined`
    and :meth:`_Environment.built`; ``environment.concat`` (macro, ``set`` block and
    ``caller()`` output) is a bounded join too. So ``[x, x]`` doubled in a loop, or a string
    doubled with ``~``, is refused at the bound instead of growing until one C call
    (``|string``, ``|join``) takes minutes and gigabytes.
    """

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an assignment target: `{% for a, b in x %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.built(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_Dict(node, frame)
        self.write(")")


def _concat(parts: Iterable[str]) -> str:
    """``"".join(parts)`` that refuses a result past the bound before building it."""
    parts = parts if isinstance(parts, list) else list(parts)
    sizes.bound(sum(map(len, parts)))
    return "".join(parts)


class _Environment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with ``${{ }}`` delimiters, data-first attributes and bounded values."""

    code_generator_class = _CodeGenerator
    concat = staticmethod(_concat)  # type: ignore[assignment]
    intercepted_binops = frozenset({"*", "**", "%", "+"})

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
        memo = _memo()
        if operator == "*":
            _check_product(left, right, memo)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, (str, bytes)):
            sizes.bound(sizes.printf_size(left, right))
        elif operator == "+" and type(left) in (list, tuple) and type(right) is type(left):
            total = sizes.weight(left, memo) + sizes.weight(right, memo)  # both known: no walk of the result
            sizes.bound(total, "characters written out")
            result = left + right
            memo[id(result)] = (result, total)
            return result
        return sizes.check(super().call_binop(context, operator, left, right), memo)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):
            args = _check_text_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        return sizes.check(super().call(__context, __obj, *args, **kwargs), _memo())

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, name = value.__self__, value.__name__

        def checked(*args: Any, **kwargs: Any) -> str:
            if name == "format_map":
                sizes.bound(sizes.format_size(fmt, (), args[0] if args else {}))
            else:
                sizes.bound(sizes.format_size(fmt, args, kwargs))
            return wrapped(*args, **kwargs)

        return checked

    def built(self, value: Any) -> Any:
        """A list, tuple or dict literal's value, checked against the bound (shared items count each time)."""
        return sizes.check(value, _memo())

    def joined(self, values: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: the strings joined, refused before building past the bound."""
        return _concat([str(v) for v in values])

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        """Jinja2's compile; the code object is also handed to :func:`_capturing`'s list when one is open."""
        code = super().compile(*args, **kwargs)
        captured = _CAPTURED.get()
        if captured is not None and not isinstance(code, str):
            captured.append(code)
        return code


#: Where :meth:`_Environment.compile` puts the code it compiles, while an expression is compiled for the cache.
_CAPTURED: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("goatclaw_template_code", default=None)


def _check_product(left: Any, right: Any, memo: dict[int, tuple[Any, int]]) -> None:
    """``seq * n`` weighs ``n`` times ``seq`` (a list of lists counts its items); ``int * int`` adds bits."""
    if type(left) is int and type(right) is int:
        if left.bit_length() + right.bit_length() > sizes.MAX_INT_BITS:
            raise TooLarge(f"integer would exceed {sizes.MAX_INT_BITS:,} bits")
        return
    for seq, n in ((left, right), (right, left)):
        if isinstance(n, int) and n > 0:
            if isinstance(seq, (str, bytes, bytearray)):
                sizes.bound(len(seq) * n)
            elif isinstance(seq, (list, tuple)):
                sizes.bound((sizes.weight(seq, memo) - 2) * n, "characters written out")


def _check_power(left: Any, right: Any) -> None:
    if isinstance(right, int) and (abs(right) > 10_000 or (
            isinstance(left, int) and right > 0 and left.bit_length() * right > sizes.MAX_INT_BITS)):
        raise TooLarge("exponent too large")


#: String methods that can build a result much bigger than the string: checked before the call.
_STR_SIZE_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _check_text_method(owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) \
        -> tuple[Any, ...]:
    """Refuse a str/bytes method call whose result would pass the bound; the args to call it with."""
    ints = [a for a in (*args, *kwargs.values()) if type(a) is int]
    if name in _STR_SIZE_METHODS:
        sizes.bound(max(ints, default=0))
    elif name == "expandtabs":
        sizes.bound(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * max(ints, default=8))
    elif name == "replace" and len(args) >= 2:
        sizes.bound(sizes.replace_size(owner, *args[:3]))
    elif name == "join" and args:
        parts = list(args[0])  # a generator is read once, here
        sizes.bound(sizes.join_size(parts, owner))
        return (parts, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        sizes.bound(len(owner) * max(longest, 1))
    return args


def _bound(size: int) -> None:
    sizes.bound(size)


def _center(value: str, width: int = 80) -> str:
    _bound(width)
    return filters.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    _bound((width if isinstance(width, int) else len(width)) * (str(s).count("\n") + 1) + len(str(s)))
    return filters.do_indent(s, width, first, blank)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    sizes.bound(sizes.printf_size(str(value), kwargs or args))
    return filters.do_format(value, *args, **kwargs)


@jinja2.pass_eval_context
def _slice(eval_ctx: Any, value: Any, slices: int, fill_with: Any = None) -> Any:
    _bound(slices * (1 if fill_with is None else sizes.weight(fill_with, _memo())))
    return filters.do_slice(eval_ctx, value, slices, fill_with)


def _batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    _bound(linecount * (1 if fill_with is None else sizes.weight(fill_with, _memo())))
    return filters.do_batch(value, linecount, fill_with)


@jinja2.pass_context
def _map(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
    result = filters.do_map(context, value, *args, **kwargs)
    if "default" not in kwargs:
        return result  # each item appears once: no bigger than what it maps
    return sizes.check(list(result), _memo())  # a default appears once per item missing the attribute


def _sum(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """``sum`` of numbers only: adding lists or strings one by one takes quadratic time in one C call."""
    if type(start) not in (int, float):
        raise TooLarge("sum() adds numbers only (start= must be a number)")
    return filters.do_sum(environment(), iterable, attribute, start)


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    sizes.bound(sizes.join_size(items, str(d)))
    return filters.do_join(eval_ctx, items, d, attribute)


@jinja2.pass_eval_context
def _replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
    sizes.bound(sizes.replace_size(str(s), str(old), str(new), -1 if count is None else count))
    return filters.do_replace(eval_ctx, s, old, new, count)


def _wordwrap(s: str, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None,
              break_on_hyphens: bool = True) -> str:
    sizes.bound(len(s) * (1 + len(wrapstring or "\n")))
    return filters.do_wordwrap(environment(), s, width, break_long_words, wrapstring, break_on_hyphens)


@jinja2.pass_eval_context
def _urlize(eval_ctx: Any, value: str, trim_url_limit: int | None = None, nofollow: bool = False,
            target: str | None = None, rel: str | None = None, extra_schemes: Iterable[str] | None = None) -> str:
    sizes.bound(len(value) * (1 + len(target or "") + len(rel or "")))
    return filters.do_urlize(eval_ctx, value, trim_url_limit, nofollow, target, rel, extra_schemes)


def _tojson(value: Any, indent: int | None = None) -> str:
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 16):
        raise TooLarge("tojson indent must be a number from 0 to 16")
    return json.dumps(value, indent=indent, ensure_ascii=False)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _bound(n * max * 20)
    return generate_lorem_ipsum(n, html, min, max)


def _checked_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose text or number result is checked against the bounds (``x|forceescape`` chains grow)."""

    @functools.wraps(fn)  # keeps jinja_pass_arg (pass_context and friends)
    def checked(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if isinstance(result, (str, bytes)):
            sizes.bound(len(result))
        elif type(result) is int:
            sizes.check(result)
        return result

    return checked


_LOCAL = threading.local()


def _memo() -> dict[int, tuple[Any, int]]:
    """The weights of the containers seen by the current render (see :func:`goatclaw.sizes.weight`)."""
    memo: dict[int, tuple[Any, int]] | None = getattr(_LOCAL, "memo", None)
    if memo is None:
        memo = _LOCAL.memo = {}
    return memo


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
_CODE: CodeCache | None = None


def _code_cache() -> CodeCache:
    """The on-disk cache of compiled templates and their refs (goatclaw/codecache.py).

    Its salt is Jinja2's version and this file (the environment's options, its code
    generator): what the compiled code depends on besides the source.
    """
    global _CODE
    if _CODE is None:
        _CODE = CodeCache("templates", "jinja2", jinja2.__version__, file_stamp(__file__))
    return _CODE


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
                           batch=_batch, map=_map, sum=_sum, join=_join, replace=_replace, wordwrap=_wordwrap,
                           urlize=_urlize, tojson=_tojson)
        env.filters.update({name: _checked_filter(fn) for name, fn in env.filters.items()})
        env.globals["lipsum"] = _lipsum
        # `x is none` must not quietly answer False for an undefined or blocked x
        env.tests.update({name: _strict_test(test) for name, test in env.tests.items()
                          if name not in ("defined", "undefined") and not hasattr(test, "jinja_pass_arg")})
        _ENV = env
    return _ENV


class _Overtime(BaseException):
    """Raised inside a render that ran past its deadline (a BaseException: no template code catches it)."""


class _Overmemory(BaseException):
    """Raised inside a render that grew the process by more than :data:`MAX_RENDER_BYTES`."""


def _resident_bytes() -> int | None:
    """The process's resident set size (Linux ``/proc``), or ``None`` where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Watchdog:
    """One daemon thread, alive while renders run (and a second after), that interrupts overdue ones.

    A render registers its thread's deadline and removes it when done (under a lock); the
    watchdog removes an expired deadline *and* raises :class:`_Overtime` in that thread under
    the same lock, so the exception can only land inside the render that registered it. It
    also reads the process's resident memory on each tick: a render that has grown it by
    more than :data:`MAX_RENDER_BYTES` since the watchdog first saw it gets :class:`_Overmemory`
    (a render shorter than one tick is never measured, and costs nothing). No single C call
    runs long or allocates much (the sandbox refuses those up front), so the exception lands
    within a tick or so.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deadlines: dict[int, float] = {}
        self.baselines: dict[int, int] = {}
        self.thread: threading.Thread | None = None

    def start(self, seconds: float) -> bool:
        """Register the calling thread's render; False if one is already running (nested)."""
        ident = threading.get_ident()
        with self.lock:
            if ident in self.deadlines:
                return False
            self.deadlines[ident] = time.monotonic() + seconds
            if self.thread is None:
                self.thread = threading.Thread(target=self._watch, name="goatclaw-template-watchdog", daemon=True)
                self.thread.start()
        return True

    def stop(self) -> None:
        """The calling thread's render is over."""
        ident = threading.get_ident()
        with self.lock:
            self.deadlines.pop(ident, None)
            self.baselines.pop(ident, None)
        _checkpoint()  # a pending _Overtime surfaces here, inside the caller's try

    def _watch(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(0.02)
            now = time.monotonic()
            with self.lock:
                if self.deadlines:
                    idle_since = now
                elif now - idle_since > 1.0:  # exit when idle: no thread lingers (a fork then copies none)
                    self.thread = None
                    return
                rss = _resident_bytes() if self.deadlines else None
                for ident, deadline in list(self.deadlines.items()):
                    base = self.baselines.setdefault(ident, rss) if rss is not None else None
                    if now > deadline:
                        self._interrupt(ident, _Overtime)
                    elif base is not None and rss is not None and rss - base > MAX_RENDER_BYTES:
                        self._interrupt(ident, _Overmemory)

    def _interrupt(self, ident: int, exc: type[BaseException]) -> None:
        """Raise ``exc`` in the render of thread ``ident`` (the lock is held)."""
        del self.deadlines[ident]
        self.baselines.pop(ident, None)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


def _checkpoint() -> None:
    """A Python call: the interpreter delivers a pending asynchronous exception on entry."""


_WATCHDOG = _Watchdog()


def _bounded(fn: Callable[[Any], Any], arg: Any, limit: float | None = None) -> Any:
    """``fn(arg)`` with the render deadline (or ``limit`` seconds when shorter); a TemplateError when it passes.

    Nested calls (a render inside a render) share the outermost one's deadline.
    """
    seconds = MAX_RENDER_SECONDS if limit is None or limit > MAX_RENDER_SECONDS else limit
    try:
        owner = _WATCHDOG.start(seconds)
        if owner:
            _LOCAL.seconds = seconds
        try:
            return fn(arg)
        finally:
            if owner:
                _LOCAL.memo = None
                _WATCHDOG.stop()
    except _Overtime:
        took = getattr(_LOCAL, "seconds", seconds)  # the outermost render's limit
        if took < MAX_RENDER_SECONDS:
            raise TemplateError(f"evaluation took longer than the task's timeout ({took:g}s)",
                                error_class="timeout") from None
        raise TemplateError(f"evaluation took longer than {MAX_RENDER_SECONDS:g}s (a runaway loop?)") from None
    except _Overmemory:
        raise TemplateError(f"evaluation took more than {MAX_RENDER_BYTES // 2**20:,} MiB of memory") from None


def has_template(text: str) -> bool:
    """Whether ``text`` holds any template syntax."""
    return any(m in text for m in _MARKERS)


@dataclass(frozen=True)
class Expression:
    """A compiled bare expression; call :meth:`evaluate` with a context mapping."""

    source: str
    _fn: Callable[..., Any]

    def evaluate(self, context: Mapping[str, Any], *, limit: float | None = None) -> Any:
        """Evaluate, raising :class:`TemplateError` for undefined names or blocked access.

        ``limit``: a time limit shorter than :data:`MAX_RENDER_SECONDS` (a task's timeout).
        """
        try:
            result = _bounded(self._concrete, context, limit)
        except TemplateError:
            raise
        except Exception as exc:  # jinja2 and user-data errors alike: the user's mistake
            raise _runtime_error(exc, self.source) from None
        return result

    def _concrete(self, context: Mapping[str, Any]) -> Any:
        return _concrete(self._fn(context))


_PLAIN = (str, int, float, bool, type(None))


def _concrete(value: Any) -> Any:
    """``value`` with lazy sequences (``x|map(...)``) made lists, failing on an undefined value anywhere inside.

    A sandbox-blocked attribute is an undefined value that fails only when used: inside a list
    (``range(1)|map(attribute='__class__')|list``) it would fail later, when the output is stored.
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, GeneratorType):
        value = sizes.check(list(value), _memo())
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, _PLAIN) for v in value):
            return value
        items = [_concrete(v) for v in value]  # a new container only when an item changed (rare)
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        values = {k: _concrete(v) for k, v in value.items()}
        return value if all(values[k] is v for k, v in value.items()) else values
    return value


#: How many compiled expressions and templates are kept, keyed by their source (least recently used go first).
CACHE_SIZE = 4096
#: A dotted path such as ``tasks.fetch.output``: read by key lookups, without compiling it with Jinja2.
_DOTTED = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)\s*")
#: Words Jinja2 reads as operators, constants or its own names (`self`), never as a plain name or attribute.
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "self",
                       "None"})


def _dotted_parts(source: str) -> tuple[str, ...] | None:
    """The names of ``a.b.c`` when ``source`` is just such a path (the commonest expression), else ``None``."""
    match = _DOTTED.fullmatch(source)
    if match is None:
        return None
    parts = tuple(match.group(1).split("."))
    return None if any(p in _KEYWORDS for p in parts) else parts


def _dotted_fn(source: str, parts: tuple[str, ...]) -> Callable[..., Any]:
    """``a.b.c`` evaluated as the sandbox does (:meth:`_Environment.getattr`: keys first, no ``_`` names).

    Any step that does not give a plain defined value (a missing name, an undefined or
    blocked attribute, a name that only Jinja2's globals hold) is left to the compiled
    expression, so that what it returns or the error it raises is exactly Jinja2's.
    """
    env = environment()
    root, rest = parts[0], parts[1:]
    full: list[Callable[..., Any]] = []

    def jinja(context: Mapping[str, Any]) -> Any:
        if not full:
            full.append(env.compile_expression(source, undefined_to_none=False))
        return full[0](context)

    def fn(context: Mapping[str, Any]) -> Any:
        try:
            value = context[root]
        except (KeyError, TypeError):
            return jinja(context)
        for name in rest:
            value = env.getattr(value, name)
            if isinstance(value, jinja2.Undefined):
                return jinja(context)
        return value

    return fn


def compile_expression(source: str) -> Expression:
    """Compile a bare expression such as ``output.confidence >= 0.8`` (cached by source: compiled once)."""
    return _compile_expression(source)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compile_expression(source: str) -> Expression:
    parts = _dotted_parts(source)
    if parts is not None:
        return Expression(source, _dotted_fn(source, parts))
    return Expression(source, _jinja_expression(source))


def _jinja_expression(source: str) -> Any:
    """``environment().compile_expression(source, undefined_to_none=False)``, its code from the disk cache when kept."""
    env = environment()
    code = _code_cache().get("expression", source)
    if code is not None:
        return TemplateExpression(env.template_class.from_code(env, code, env.make_globals(None), None), False)
    captured: list[Any] = []
    token = _CAPTURED.set(captured)
    try:
        fn = env.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"invalid expression: {exc.message}{_habit(source)}", lineno=exc.lineno) from None
    finally:
        _CAPTURED.reset(token)
    if len(captured) == 1:
        _code_cache().put("expression", source, captured[0])
    return fn


@functools.lru_cache(maxsize=CACHE_SIZE)
def _template(text: str) -> jinja2.Template:
    """The compiled template of ``text`` (cached by source; a Template renders any number of times).

    ``environment().from_string(text)``, its code from the disk cache when kept.
    """
    env = environment()
    code = _code_cache().get("template", text)
    if code is None:
        code = env.compile(text)
        _code_cache().put("template", text, code)
    return env.template_class.from_code(env, code, env.make_globals(None), None)


class Compiled:
    """A value (string, list, mapping, scalar) with its templates compiled once."""

    __slots__ = ("_render", "is_constant", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._render = _compile(value) if _any_template(value) else None
        self.is_constant = self._render is None

    def render(self, context: Mapping[str, Any], *, limit: float | None = None) -> Any:
        """Render with ``context``; a constant value is returned as it is.

        The whole value shares one deadline: :data:`MAX_RENDER_SECONDS`, or ``limit`` when
        shorter (a task's timeout, so that rendering its inputs cannot outlast it).
        """
        if self._render is None:
            return self.value
        return self._render(context) if limit is None else _bounded(self._render, context, limit)


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
        template = _template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"invalid template: {exc.message}{_habit(text)}", lineno=exc.lineno) from None

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
    if isinstance(exc, (jinja2.exceptions.SecurityError, TooLarge)):
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
    #: ``vars.<name>`` read with a constant name
    vars: tuple[str, ...] = ()
    #: ``tasks.<id>.<field>`` read with constant keys: (id, field)
    task_fields: tuple[tuple[str, str], ...] = ()


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
    """The refs of a bare expression, or the syntax error it has (compiled once: the run reuses it)."""
    parts = _dotted_parts(source)
    if parts is not None:
        return _dotted_refs(parts)
    try:
        compile_expression(source)
    except TemplateError:
        try:
            environment().compile_expression(source)
        except jinja2.TemplateSyntaxError as exc:
            return TemplateError(f"invalid expression: {exc.message}{_habit(source, bare=True)}", lineno=exc.lineno)
        raise
    return _refs("${{ " + source + " }}")


def _dotted_refs(parts: tuple[str, ...]) -> TemplateRefs:
    """What :func:`_refs` finds in the path ``a.b.c``, without parsing it."""
    root = parts[0]
    tasks = (parts[1],) if root == "tasks" and len(parts) > 1 else ()
    fields = ((parts[1], parts[2]),) if root == "tasks" and len(parts) > 2 else ()
    var_names = (parts[1],) if root == "vars" and len(parts) > 1 else ()
    run_errors = root == "run" and (len(parts) == 1 or parts[1] == "errors")
    return TemplateRefs(frozenset({root}), tasks, run_errors, var_names, fields)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _refs(text: str) -> TemplateRefs | TemplateError:
    """What ``text`` reads (or its syntax error); the refs of a valid text are kept in the disk cache."""
    kept = _code_cache().get("refs", text)
    if kept is not None:
        names, tasks, run_errors, var_names, task_fields = kept
        return TemplateRefs(frozenset(names), tasks, run_errors, var_names, task_fields)
    found = _parsed_refs(text)
    if isinstance(found, TemplateRefs):
        _code_cache().put("refs", text, (tuple(sorted(found.names)), found.tasks, found.run_errors, found.vars,
                                         found.task_fields))
    return found


def _parsed_refs(text: str) -> TemplateRefs | TemplateError:
    try:
        ast = environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return TemplateError(f"invalid template: {exc.message}{_habit(text)}", lineno=exc.lineno)
    names = frozenset(find_undeclared_variables(ast))
    task_ids: list[str] = []
    var_names: list[str] = []
    task_fields: list[tuple[str, str]] = []
    run_fields = 0  # uses of run.<a field other than errors>
    called = {id(call.node) for call in ast.find_all(nodes.Call)}  # vars.get(...) is a method, not a name
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        key = _constant_key(node)
        if isinstance(base, (nodes.Getattr, nodes.Getitem)) and isinstance(base.node, nodes.Name) \
                and base.node.name == "tasks" and key is not None and id(node) not in called:
            owner = _constant_key(base)
            if owner is not None:
                task_fields.append((owner, key))
        if not isinstance(base, nodes.Name):
            continue
        if base.name == "tasks" and key is not None:
            task_ids.append(key)
        elif base.name == "vars" and key is not None and id(node) not in called:
            var_names.append(key)
        elif base.name == "run" and key is not None and key != "errors":
            run_fields += 1
    run_errors = "run" in names and sum(
        1 for n in ast.find_all(nodes.Name) if n.name == "run" and n.ctx == "load") > run_fields
    return TemplateRefs(names, tuple(task_ids), run_errors, tuple(var_names), tuple(task_fields))


_HABITS = ((re.compile(r"&&"), "`and` for `&&`"), (re.compile(r"\|\|"), "`or` for `||`"),
           (re.compile(r"(?:^|[\s(])!(?=[A-Za-z_(])"), "`not` for `!`"))


def _habit(source: str, *, bare: bool = False) -> str:
    """For a syntax error: how a GitHub Actions (or C) habit in ``source`` is written here."""
    fixes = [fix for pattern, fix in _HABITS if pattern.search(source)]
    out = f" (write {', '.join(fixes)})" if fixes else ""
    if bare and "${{" in source:
        out += " (`if:` and `expr:` are bare expressions: write them without `${{ }}`, e.g. `if: vars.ok`)"
    return out


def _constant_key(node: nodes.Getattr | nodes.Getitem) -> str | None:
    """The key of ``x.key`` or ``x['key']``; ``None`` for a computed one."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None
