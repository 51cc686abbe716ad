"""What a ``module:name`` reference really names, and whether a ``python`` grant covers it.

A grant ``python: [json]`` means the functions and classes *of* json. The attribute
chain after the module (``json:dumps``, ``json:JSONEncoder.encode``) is followed one
step at a time, and every step must be a class or function whose defining module
(``__module__``) is the granted module or inside it; a step that is a module
(``os.path:os.system``, ``json:codecs.open``), an object, or a function imported from
elsewhere (``from os import system`` in the granted module) is refused.

:func:`follow` and :func:`refusal` judge live objects (at run time, after the import the
grant allowed); :func:`static_refusal` judges the source without importing anything, for
``goatclaw validate``: it only answers when the source says for certain (the name is an
``import`` in the module), and says nothing otherwise.
"""

from __future__ import annotations

import ast
import importlib.machinery
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["follow", "home", "refusal", "static_refusal", "within"]


def follow(module: ModuleType, attr: str) -> list[Any]:
    """The objects along ``attr`` (``A.b``: ``[A, A.b]``) from ``module``; ``AttributeError`` names the missing part."""
    chain: list[Any] = []
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
        chain.append(obj)
    return chain


def within(name: str | None, granted: Sequence[str]) -> bool:
    """Whether the module ``name`` is one of ``granted`` or inside one (an alias such as ``os.path`` counts)."""
    if not name:
        return False
    for mod in granted:
        loaded = sys.modules.get(mod)
        for real in {mod, getattr(loaded, "__name__", mod)}:
            if name == real or name.startswith(real + "."):
                return True
    return False


def home(obj: Any) -> str | None:
    """The name of the module that defines ``obj`` (a function, class or method); ``None`` if it cannot be told."""
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if inspect.ismethoddescriptor(obj) and hasattr(obj, "__objclass__"):  # str.upper, dict.get
        return getattr(obj.__objclass__, "__module__", None)
    owner = getattr(obj, "__self__", None)
    if inspect.ismethod(obj) or (inspect.isbuiltin(obj) and inspect.isclass(owner)):  # a classmethod
        return getattr(owner, "__module__", None) if inspect.isclass(owner) else None
    name = getattr(obj, "__module__", None)
    return name if isinstance(name, str) else None


def _not_plain(obj: Any) -> str | None:
    """What ``obj`` is when it is not a plain function, class or method of a class (``None``: it is one)."""
    plain = inspect.unwrap(obj) if callable(obj) else obj
    if inspect.ismodule(plain):
        return f"the module {plain.__name__}"
    if inspect.isclass(plain) or inspect.isfunction(plain) or inspect.ismethoddescriptor(plain):
        return None
    owner = getattr(plain, "__self__", None)
    if inspect.ismethod(plain) or inspect.isbuiltin(plain):
        if owner is None or inspect.ismodule(owner) or inspect.isclass(owner):
            return None
        return f"a method of a {type(owner).__name__} object"
    return f"a {type(plain).__name__} object"


def refusal(chain: Sequence[Any], attr: str, granted: Sequence[str]) -> str | None:
    """Why the resolved ``chain`` of ``attr`` is not a function or class of the ``granted`` modules."""
    parts = attr.split(".")
    for n, obj in enumerate(chain):
        name = ".".join(parts[: n + 1])
        what = _not_plain(obj)
        if n < len(chain) - 1 and not inspect.isclass(obj):
            return f"follows '{name}', which is {what or 'a ' + type(obj).__name__}, not a class of {_show(granted)}"
        if what is not None:
            return f"names '{name}', which is {what}, not a plain function or class"
        where = home(obj)
        if where is None:
            return f"names '{name}', whose defining module cannot be told"
        if not within(where, granted):
            return f"names '{name}', which is defined in {where}, not in {_show(granted)}"
    return None


def _show(granted: Sequence[str]) -> str:
    return " or ".join(dict.fromkeys(granted))


# -- without importing --------------------------------------------------------------------


def static_refusal(module: str, attr: str, granted: Sequence[str], workspace: Path) -> str | None:
    """Why ``module:attr`` is refused, told without running any code (``None``: allowed, or it cannot be told).

    The module's source is found on ``sys.path``, then in ``workspace`` (as the ``python``
    task looks), without importing it or its parents, and read: a first name that the
    module binds only by ``import`` or ``from ... import`` of a module outside ``granted``
    is certain to be refused. A module already imported from that very file (or one
    without source, such as ``builtins`` or ``os.path``) is judged on its live objects.
    """
    source = _source_of(module, [*sys.path, str(workspace)])
    loaded = sys.modules.get(module)
    if loaded is not None and (source is None or _loaded_from(loaded, source)):
        try:
            return refusal(follow(loaded, attr), attr, granted)
        except AttributeError:
            return None  # the run says so, with its own message
    if source is None:
        return None
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    first = attr.split(".")[0]
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    bound = list(_bindings(tree.body, first, package))
    if not bound or any(b is None for b in bound) or any(within(b[0], granted) for b in bound):
        return None  # defined or assigned here, or imported from inside the grant: the run decides
    target, is_module = bound[-1]
    if is_module:
        return f"names '{first}', which is the module {target}, not a function or class of {_show(granted)}"
    return f"names '{first}', which is imported from {target}, not defined in {_show(granted)}"


def _loaded_from(module: ModuleType, source: Path) -> bool:
    """Whether the imported ``module`` is the one in ``source`` (not a same-named module from elsewhere)."""
    file = getattr(module, "__file__", None)
    try:
        return bool(file) and Path(file).resolve() == source.resolve()
    except OSError:
        return False


def _source_of(module: str, search: Sequence[str]) -> Path | None:
    """The ``.py`` file of ``module``, found along ``search`` one package at a time, importing nothing."""
    path: list[str] | None = list(search)
    spec = None
    parts = module.split(".")
    for n in range(len(parts)):
        name = ".".join(parts[: n + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def _bindings(body: Sequence[ast.stmt], name: str, package: str) -> Any:
    """How the module binds ``name`` at its top level: ``(module, is_module)`` for an import, ``None`` otherwise."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == name:
            yield None
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    yield (alias.name if alias.asname else alias.name.split(".")[0]), True
        elif isinstance(stmt, ast.ImportFrom):
            source = _absolute(stmt.module or "", stmt.level, package)
            for alias in stmt.names:
                if alias.name == "*" or (alias.asname or alias.name) == name:
                    yield (source, False) if alias.name != "*" else None
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)) or type(stmt).__name__ == "TryStar":
            for block in ("body", "orelse", "finalbody", "handlers"):
                for inner in getattr(stmt, block, ()) or ():
                    yield from _bindings(inner.body if isinstance(inner, ast.ExceptHandler) else [inner], name,
                                         package)
        elif name in _assigned(stmt):
            yield None


def _assigned(stmt: ast.stmt) -> set[str]:
    """Names a statement stores anywhere inside it (``x = ...``, ``for x in``, ``with ... as x``); a superset."""
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _absolute(module: str, level: int, package: str) -> str:
    """The absolute name of ``from <level dots><module> import``, seen from ``package``."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    base = parts[: len(parts) - (level - 1)] if level - 1 <= len(parts) else []
    return ".".join([*base, module] if module else base)
