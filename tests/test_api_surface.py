"""The front door and the shape of the package: exports, lazy imports, import direction, library owners."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import goatclaw

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "goatclaw"

HEAVY_AT_IMPORT = ["yaml", "jinja2", "networkx", "jsonschema", "sqlean", "rich", "typer", "litellm", "dask",
                   "wordllama", "mcp", "starlette", "uvicorn"]
HEAVY_FOR_CLI = ["litellm", "dask", "distributed", "wordllama", "mcp", "numpy", "httpx", "openai", "sqlite_vec",
                 "starlette", "uvicorn", "argon2", "pyotp"]


def test_all_is_sorted_and_complete() -> None:
    assert goatclaw.__all__ == sorted(goatclaw.__all__)
    assert len(set(goatclaw.__all__)) == len(goatclaw.__all__)
    for name in goatclaw.__all__:
        assert getattr(goatclaw, name) is not None, name
    assert sorted(dir(goatclaw)) == sorted(goatclaw.__all__)
    with pytest.raises(AttributeError):
        _ = goatclaw.no_such_name  # type: ignore[attr-defined]


def test_errors_share_one_root() -> None:
    errors = [getattr(goatclaw, n) for n in goatclaw.__all__ if n.endswith("Error") or n in (
        "PermissionDenied", "RunCancelled", "TaskTimeout")]
    assert errors
    for error in errors:
        assert issubclass(error, goatclaw.GoatclawError), error


def fresh_python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it must print one JSON document as its last line."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_importing_goatclaw_imports_nothing_heavy() -> None:
    found = fresh_python(
        "import json, sys\n"
        "import goatclaw\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_AT_IMPORT!r} if m in sys.modules)))\n"
    )
    assert found == []


def test_the_control_probe_detects_heavy_imports() -> None:
    """The probe above can fail: asking for the loader does import yaml."""
    found = fresh_python(
        "import json, sys\n"
        "import goatclaw\n"
        "goatclaw.load\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_AT_IMPORT!r} if m in sys.modules)))\n"
    )
    assert "yaml" in found  # type: ignore[operator]


@pytest.mark.parametrize("argv", [["validate", "pipelines/quickstart.yaml"], ["--help"], ["plan",
                                                                                           "pipelines/quickstart.yaml"]])
def test_fast_commands_import_no_heavy_library(argv: list[str]) -> None:
    found = fresh_python(
        "import json, sys\n"
        "from goatclaw.cli import main\n"
        f"code = main({argv!r}, exit=False)\n"
        f"print(json.dumps({{'code': code, 'heavy': sorted(m for m in {HEAVY_FOR_CLI!r} if m in sys.modules)}}))\n"
    )
    assert found == {"code": 0, "heavy": []}


# -- the import graph --------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (functions and TYPE_CHECKING blocks included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from goatclaw import api`
    return found


IMPORTS = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def importers_of(library: str) -> set[str]:
    return {mod for mod, names in IMPORTS.items()
            if any(name == library or name.startswith(library + ".") for name in names)}


def test_the_import_walk_sees_the_package() -> None:
    assert {"goatclaw.spec.loader", "goatclaw.engine.runner", "goatclaw.cli.app", "goatclaw.store"} <= set(IMPORTS)
    assert "goatclaw.engine.state" in IMPORTS["goatclaw.engine.runner"]
    assert "goatclaw.errors" in IMPORTS["goatclaw.spec.loader"]


def _wrong_way(sources: str, targets: tuple[str, ...]) -> list[str]:
    return sorted(f"{mod} imports {name}" for mod, names in IMPORTS.items()
                  if mod == sources or mod.startswith(sources + ".")
                  for name in names if any(name == t or name.startswith(t + ".") for t in targets))


def test_spec_imports_nothing_downstream() -> None:
    assert _wrong_way("goatclaw.spec", ("goatclaw.engine", "goatclaw.cli", "goatclaw.api", "goatclaw.store")) == []


def test_the_planner_imports_only_the_api_and_the_llm_room() -> None:
    ours = {n for n in IMPORTS["goatclaw.planner"] if n.startswith("goatclaw")}
    assert {n for n in ours if not n.startswith(("goatclaw.api", "goatclaw.llm", "goatclaw.errors"))} <= {"goatclaw"}


def test_engine_never_imports_the_cli() -> None:
    assert _wrong_way("goatclaw.engine", ("goatclaw.cli",)) == []


def test_nothing_but_the_cli_imports_the_cli() -> None:
    outside = {mod for mod in importers_of("goatclaw.cli") if not mod.startswith("goatclaw.cli")}
    assert outside <= {"goatclaw.__main__"}


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_only_the_cli_imports_terminal_libraries(library: str) -> None:
    users = importers_of(library)
    assert users, f"nobody imports {library}?"
    assert {u for u in users if not u.startswith("goatclaw.cli")} == set()


@pytest.mark.parametrize("library", ["starlette", "uvicorn", "argon2", "pyotp"])
def test_only_the_server_room_imports_the_web_libraries(library: str) -> None:
    users = importers_of(library)
    assert users, f"nobody imports {library}?"
    assert {u for u in users if not u.startswith("goatclaw.server.")} == set()


def test_the_server_room_calls_the_api_not_the_engine() -> None:
    assert _wrong_way("goatclaw.server", ("goatclaw.engine", "goatclaw.cli")) == []


@pytest.mark.parametrize(("library", "owner"), [
    ("yaml", "goatclaw.spec.loader"),
    ("jsonschema", "goatclaw.spec.schema"),
    ("fastjsonschema", "goatclaw.spec.schema"),
    # the sandbox pipeline files render in, and the dashboard's own page templates (autoescaped, from the package)
    ("jinja2", ("goatclaw.template", "goatclaw.server.ui.render")),
    ("networkx", "goatclaw.graph"),
    ("sqlean", "goatclaw.store"),
    ("re2", "goatclaw.regex"),
    ("jmespath", "goatclaw.tasks.jmes"),  # select: and paginate: of http and graphql
    ("jsonpath", "goatclaw.tasks.jsonpath"),  # a select: that starts with $ (RFC 9535)
    ("distributed", "goatclaw.engine.dask"),  # imported only when the dask executor is chosen
    ("dotenv", "goatclaw.providers"),  # .env files: read once, by python-dotenv
    # providers: the Ollama probe of goatclaw doctor; notify: the notify hook's one POST of a run's result
    ("httpx", ("goatclaw.tasks.http", "goatclaw.providers", "goatclaw.notify")),
    ("litellm", "goatclaw.llm.provider"),  # the LLM room's one border with litellm
    # the MCP SDK: its client half where tools come from (docs/mcp.md), its server half beside the
    # other faces of the public API (docs/mcp-server.md); DESIGN.md's two rooms, so no arrow points back up
    ("mcp", ("goatclaw.tools.mcp", "goatclaw.server.mcp")),
    ("prompt_toolkit", "goatclaw.cli.shell"),  # the interactive shell
    ("cronsim", "goatclaw.schedule"),  # cron expressions of schedule: (the timetable)
    ("keyring", "goatclaw.providers"),  # keys goatclaw init stored in the OS keyring
])
def test_each_library_has_one_owner(library: str, owner: str | tuple[str, ...]) -> None:
    assert importers_of(library) == ({owner} if isinstance(owner, str) else set(owner))
