"""The project file ``goatclaw.yaml``: project-wide settings, each with an embedded default.

It is found next to the pipeline file or in one of its parent folders (else in the
current folder or its parents). Relative paths in it (the store) are relative to the
folder it is in, which is also the workspace that tasks' relative paths start from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from goatclaw.errors import SpecError
from goatclaw.spec.loader import load_file
from goatclaw.spec.model import Budget, Defaults, Permissions, build_defaults, parse_duration
from goatclaw.spec.schema import check_document

__all__ = ["PROJECT_FILE", "Project", "find_project_file", "load_project"]

PROJECT_FILE = "goatclaw.yaml"
DEFAULT_STORE = ".goatclaw/goatclaw.db"


@dataclass(frozen=True)
class Project:
    """Checked project settings (embedded defaults where the file says nothing)."""

    root: Path
    file: Path | None = None
    store_path: Path = Path(DEFAULT_STORE)
    defaults: Defaults = Defaults()
    concurrency: int | None = None
    model: str | None = None
    fallbacks: tuple[str, ...] = ()
    #: ``model: {cascade: [...]}``: the models in turn (``model`` is then the last, for judges and repairs).
    cascade: tuple[str, ...] = ()
    #: ``model: {cascade: [...], feedback: true}``: the next model sees the rejected answer and the failed rules.
    cascade_feedback: bool = False
    #: Model name -> ``{api_base, api_key_env}``, for the model entries that say where they are served.
    endpoints: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    budget: Budget | None = None
    executor: str = "local"
    executor_address: str | None = None
    executor_workers: int | None = None
    #: Seconds to wait for a Dask scheduler's first worker (``executor: {wait_for_workers: ...}``; ``None``: 30 s).
    executor_wait: float | None = None
    permissions: Permissions = Permissions()
    plugins_allow: tuple[str, ...] | None = None
    plugins_deny: tuple[str, ...] = ()
    #: ``mcp_servers:`` as written (name -> ``{command, args, env, cwd}`` or ``{url, headers}``), schema-checked.
    mcp_servers: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def find_project_file(*starts: Path) -> Path | None:
    """The nearest ``goatclaw.yaml`` at or above any of ``starts`` (first match wins)."""
    for start in starts:
        folder = start.resolve()
        for candidate in (folder, *folder.parents):
            path = candidate / PROJECT_FILE
            if path.is_file():
                return path
    return None


def load_project(file: Path | None = None, *, root: Path | None = None) -> Project:
    """Load and check ``file`` (or return the embedded defaults when there is none)."""
    if file is None:
        base = (root or Path.cwd()).resolve()
        return Project(root=base, store_path=base / DEFAULT_STORE)
    doc = load_file(file)
    problems = doc.problems + check_document(doc, "goatclaw")
    if problems:
        raise SpecError(problems)
    data: dict[str, Any] = doc.data if isinstance(doc.data, dict) else {}
    base = file.resolve().parent
    store = data.get("store", {}).get("path", DEFAULT_STORE) if isinstance(data.get("store"), dict) else DEFAULT_STORE
    executor = data.get("executor", "local")
    budget = data.get("budget")
    plugins = data.get("plugins", {}) if isinstance(data.get("plugins"), dict) else {}
    cascade = data["model"]["cascade"] if isinstance(data.get("model"), dict) and "cascade" in data["model"] else []
    return Project(
        root=base,
        file=file,
        store_path=(base / store).resolve() if not Path(store).is_absolute() else Path(store),
        defaults=build_defaults(data.get("defaults"), None),
        concurrency=data.get("concurrency"),
        model=_model_name(cascade[-1] if cascade else data.get("model")),
        fallbacks=tuple(n for n in map(_model_name, data.get("fallbacks", ())) if n),
        cascade=tuple(n for n in map(_model_name, cascade) if n),
        cascade_feedback=isinstance(data.get("model"), dict) and data["model"].get("feedback") is True,
        endpoints=_endpoints([*(cascade or [data.get("model")]), *data.get("fallbacks", ())]),
        budget=Budget(float(budget["usd"]), budget.get("downgrade")) if isinstance(budget, dict) else None,
        executor=_executor_kind(executor),
        executor_address=_executor_address(executor),
        executor_workers=executor.get("workers") if isinstance(executor, dict) else None,
        executor_wait=parse_duration(executor.get("wait_for_workers")) if isinstance(executor, dict) else None,
        permissions=Permissions.from_data(data.get("permissions")),
        plugins_allow=tuple(plugins["allow"]) if "allow" in plugins else None,
        plugins_deny=tuple(plugins.get("deny", ())),
        mcp_servers=MappingProxyType(dict(data.get("mcp_servers") or {})),
        data=MappingProxyType(data),
    )


def _model_name(entry: Any) -> str | None:
    """The litellm name of a model entry (a name, or ``{name, api_base, api_key_env}``)."""
    return entry.get("name") if isinstance(entry, Mapping) else entry


def _endpoints(entries: list[Any]) -> Mapping[str, Mapping[str, str]]:
    """Where each model entry that says so is served: name -> ``{api_base, api_key_env}`` (schema-checked)."""
    found = {e["name"]: MappingProxyType({k: str(e[k]) for k in ("api_base", "api_key_env") if e.get(k)})
             for e in entries if isinstance(e, Mapping) and (e.get("api_base") or e.get("api_key_env"))}
    return MappingProxyType(found)


def _executor_kind(value: Any) -> str:
    """``executor:`` is ``local``, ``dask``, a scheduler address (the dask executor) or a mapping with ``type``."""
    if isinstance(value, dict):
        return str(value.get("type", "dask" if value.get("address") else "local"))
    return "dask" if "://" in str(value) else str(value)


def _executor_address(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("address")
    return str(value) if "://" in str(value) else None


_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "venv", "build", "dist", "site-packages"})


def _yaml_files(root: Path) -> Iterator[Path]:
    """Every ``.yaml``/``.yml`` file under ``root`` (resolved), sorted, hidden and tool folders skipped."""
    import os

    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                yield Path(folder) / name


def pipeline_files_stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Each YAML file :func:`pipeline_files` would look at, with its mtime (ns) and size: changes when any does.

    Nothing is read (only listed and stat'ed), so a long-lived process can ask often.
    """
    found: list[tuple[str, int, int]] = []
    for path in _yaml_files(root.resolve()):
        try:
            st = path.stat()
        except OSError:
            continue
        found.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(found)


def pipeline_files(root: Path, *, limit: int = 1000) -> list[Path]:
    """YAML files under ``root`` that look like pipelines (a top-level ``tasks:``), sorted; hidden folders skipped.

    Test files (``*.test.yaml``) and project files are not pipelines; a symlink pointing out
    of ``root`` is not listed (nor read). At most ``limit`` files.
    """
    import re

    root = root.resolve()
    found: list[Path] = []
    for path in _yaml_files(root):
        if path.name.endswith((".test.yaml", ".test.yml")) or path.name in ("goatclaw.yaml", "goatclaw.yml"):
            continue
        try:
            if not path.resolve().is_relative_to(root):
                continue
            with path.open(encoding="utf-8", errors="replace") as handle:
                head = handle.read(256_000)
        except OSError:
            continue
        if re.search(r"^tasks\s*:", head, re.MULTILINE):
            found.append(path)
            if len(found) >= limit:
                return found
    return found
