"""The optional parts of goatclaw (pip extras): what each brings, whether it is installed, how to add it.

goatclaw's distribution is ``goatclaw-pipelines`` (the PyPI name ``goatclaw`` belongs to an
unrelated project); the import package and the command are ``goatclaw``. The default
install runs every built-in task but ``mcp`` and ``research``, ``llm`` included. Six parts are extras, each imported
only where it is used:

=========  =======================================  =====================================
extra      brings                                   needed by
=========  =======================================  =====================================
memory     numpy, wordllama (offline embeddings)    the ``memory`` task, ``goatclaw memory``, ``why``
dask       dask.distributed                         ``apply --executor dask``
otel       the OpenTelemetry SDK, OTLP/HTTP         spans, when ``OTEL_*`` is set
mcp        the official MCP SDK (``mcp`` 2.x)       ``mcp_servers:``, the ``mcp`` task, ``goatclaw mcp``
research   trafilatura (readable text of pages)     the ``research`` task (with ``memory`` for ranking)
serve      starlette, uvicorn, argon2-cffi, pyotp   ``goatclaw serve``, ``goatclaw users``, ``goatclaw tokens``
=========  =======================================  =====================================

A missing extra is said once, as :func:`missing_message` words it: which extra, which
module is missing, and the install line that adds it *to this installation* (an editable
checkout gets ``pip install -e '/path[extra]'``, never a bare name looked up on an index).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["DISTRIBUTION", "EXTRAS", "extra_of", "install_line", "missing", "missing_message"]

#: The distribution's name on an index and in ``pip show`` (the import package is ``goatclaw``).
DISTRIBUTION = "goatclaw-pipelines"

#: Each extra's top-level modules; the first ones listed are those its users import.
EXTRAS: Mapping[str, tuple[str, ...]] = {
    "llm": ("litellm",),  # in the default install; kept as an extra name so old install lines work
    "memory": ("numpy", "wordllama"),
    "dask": ("dask", "distributed"),
    "otel": ("opentelemetry",),
    "mcp": ("mcp", "mcp_types"),
    "data": ("duckdb",),
    "research": ("trafilatura",),
    "serve": ("starlette", "uvicorn", "argon2", "pyotp"),
}


def extra_of(module: str | None) -> str | None:
    """The extra that brings the (possibly dotted) ``module``, or ``None`` if none does."""
    top = (module or "").partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing(extra: str, modules: tuple[str, ...] | None = None) -> str | None:
    """The first of the extra's ``modules`` (default: all of them) that cannot be imported, or ``None``.

    Found without importing anything (``importlib.util.find_spec``), so it is cheap.
    """
    for module in modules if modules is not None else EXTRAS[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def missing_message(exc: BaseException | None = None, *, extra: str | None = None, module: str | None = None,
                    needed_by: str | None = None) -> str | None:
    """What to tell a user whose import failed: the extra, the missing module and the install line.

    Give the ``ModuleNotFoundError`` (``None`` is returned when no extra brings its module), or
    ``extra``/``module`` directly. ``needed_by`` names what needs it (``task 'memory'``).
    """
    if exc is not None:
        if not isinstance(exc, ImportError):
            return None
        module = module or getattr(exc, "name", None)
        extra = extra or extra_of(module)
    if extra is None:
        return None
    module = (module or EXTRAS[extra][0]).partition(".")[0]
    who = f"{needed_by} needs" if needed_by else "this needs"
    return f"{who} the '{extra}' extra ({module} is not installed): {install_line(extra)}"


def install_line(extra: str) -> str:
    """The command that adds ``extra`` to this installation of goatclaw.

    From a checkout (``pip install -e .`` or ``pip install .``) it names that folder, so pip
    builds the local distribution again rather than looking a name up on an index.
    """
    origin = _origin()
    if origin is not None:
        folder, editable = origin
        target = "." if folder == Path.cwd() else str(folder)
        return f"pip install {'-e ' if editable else ''}{shlex.quote(f'{target}[{extra}]')}"
    return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}]')}"


def _origin() -> tuple[Path, bool] | None:
    """The local folder goatclaw was installed from and whether editable (PEP 610), else ``None``."""
    from importlib import metadata  # 15 ms of imports (email, zipfile): only when an install line is said

    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        text = None
    if text is None:  # not installed (run from a checkout on sys.path): the checkout holding this file
        here = Path(__file__).resolve().parent.parent
        return (here, True) if (here / "pyproject.toml").is_file() else None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    url = urlparse(str(info.get("url", "")))
    if url.scheme != "file" or "vcs_info" in info or "archive_info" in info:
        return None
    return Path(unquote(url.path)), bool(info.get("dir_info", {}).get("editable"))
