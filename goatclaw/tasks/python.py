"""``python``: call a Python function by reference and return what it returns.

``function: "mypkg.module:name"`` names the callable (``module:Class.method`` works too).
A module that is not importable as is is looked for in the workspace, so a project's own
``steps.py`` next to its pipelines can be called as ``steps:summarise``. An ``async``
function is awaited; a plain one runs in a daemon thread of its own so that it may block
(after a timeout it is abandoned: it holds neither the run nor the process's exit). The result must
be JSON: it is stored and read by later tasks.

``permissions.python`` says which modules (``json``, ``mypkg``: the package and its
submodules) or single functions (``builtins:min``) may be called; it is checked before
the module is imported, and after it every step of ``name`` must be a class (the last a
function or class) defined in the granted module: ``json:codecs.open`` walks out of
``json`` and is refused. The function runs inside goatclaw's process, so it can do what
the process can: grant only code you trust.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from goatclaw.plugin import TaskContext, fail, in_thread, task

__all__ = ["python"]

# sys.path is process-wide: only one import with the workspace on it at a time.
_SYS_PATH_LOCK = threading.Lock()


@task(cacheable=False, permissions=("python",), sinks=("function", "args", "kwargs"))
async def python(ctx: TaskContext, *, function: str, args: list[Any] | None = None,
                 kwargs: dict[str, Any] | None = None) -> Any:
    """Call a Python function ``module:name`` with ``args`` and ``kwargs``; its JSON result is the output."""
    fn = _resolve(function, ctx)
    positional, named = _arguments(args, kwargs)
    if inspect.iscoroutinefunction(fn):
        result = await fn(*positional, **named)
    else:
        result = await in_thread(fn, *positional, **named)  # abandoned, not awaited, after a timeout
        if inspect.isawaitable(result):
            result = await result
    return _as_json(result, function)


def _resolve(ref: str, ctx: TaskContext) -> Callable[..., Any]:
    """The callable that ``module:attr`` names; ``invalid_input`` if there is none."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        fail(f"function '{ref}' is not a reference of the form 'module:name' (e.g. 'json:dumps')",
             error_class="invalid_input")
    module_name, attr = ref.split(":")
    ctx.require_module(module_name, attr)  # before the import: importing runs the module's code
    module = _import(module_name, ctx.workspace, ref)
    try:
        obj = ctx.require_callable(module, module_name, attr)  # each step defined in a granted module
    except AttributeError:
        fail(f"function '{ref}': '{module_name}' has no attribute '{attr}'", error_class="invalid_input")
    if not callable(obj):
        fail(f"function '{ref}' is a {type(obj).__name__}, not something that can be called",
             error_class="invalid_input")
    return obj


#: Modules imported from a workspace: name -> (workspace root, the file's mtime then).
_FROM_WORKSPACE: dict[str, tuple[str, int]] = {}


def _stamp(module: Any) -> int:
    try:
        return os.stat(module.__file__).st_mtime_ns
    except (OSError, TypeError):
        return 0


def _forget_if_stale(module_name: str, root: str) -> None:
    """Drop a module imported from another workspace, or from a file changed since (``goatclaw watch``)."""
    known = _FROM_WORKSPACE.get(module_name)
    module = sys.modules.get(module_name)
    if known is None or module is None:
        return
    if known[0] != root or known[1] != _stamp(module):
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        del _FROM_WORKSPACE[module_name]


def _import(module_name: str, workspace: Path, ref: str) -> Any:
    """Import a module, looking in the workspace too if it is not found on ``sys.path``.

    A module imported from a workspace is imported again when another workspace asks for
    a module of that name, or when its file changed since.
    """
    _forget_if_stale(module_name, str(workspace.resolve()))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_the_module(exc, module_name):
            _fail_import(ref, exc)
    except Exception as exc:
        _fail_import(ref, exc)
    root = str(workspace.resolve())
    with _SYS_PATH_LOCK:
        sys.path.insert(0, root)
        try:
            module = importlib.import_module(module_name)
            _FROM_WORKSPACE[module_name] = (root, _stamp(module))
            return module
        except ModuleNotFoundError as exc:
            if _is_the_module(exc, module_name):
                fail(f"function '{ref}': no module named '{module_name}' (looked on sys.path and in the "
                     f"workspace {root})", error_class="invalid_input")
            _fail_import(ref, exc)
        except Exception as exc:
            _fail_import(ref, exc)
        finally:
            sys.path.remove(root)


def _is_the_module(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether the missing module is ``module_name`` (or a parent), not something it imports."""
    return exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + "."))


def _fail_import(ref: str, exc: BaseException) -> NoReturn:
    """Importing the module raised: that is the module's problem, said plainly."""
    fail(f"function '{ref}': importing its module failed: {type(exc).__name__}: {exc}", error_class="invalid_input")


def _arguments(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """Check ``args`` is a list and ``kwargs`` a mapping with string keys."""
    if args is not None and not isinstance(args, (list, tuple)):
        fail(f"'args' must be a list, not {type(args).__name__}", error_class="invalid_input")
    if kwargs is not None and (not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)):
        fail("'kwargs' must be a mapping with string keys", error_class="invalid_input")
    return list(args or ()), dict(kwargs or {})


def _as_json(result: Any, ref: str) -> Any:
    """The result as later tasks will read it (tuples become lists); ``invalid_output`` if not JSON."""
    try:
        return json.loads(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError) as exc:
        fail(f"function '{ref}' returned a {type(result).__name__} that is not JSON-serialisable: {exc}",
             error_class="invalid_output")
