"""Every fenced code block of README.md and docs/*.md runs (issue #17.2), and the install lines are safe.

The blocks are collected by language; each test is named after the block's file and line
(``README.md:37``):

- ``yaml``: a pipeline (or a fragment of one: ``version: 1`` is added, and a fragment of a
  task goes into a task), a project file, a pipeline test file, a GitHub Actions workflow or a
  ``.pre-commit-config.yaml``. Pipelines are checked with :func:`goatclaw.check` and must have
  no error; a whole pipeline (one that says ``version:``) is also run and must succeed. Test
  files are run with :func:`goatclaw.testing.run_pipeline_test`, project files loaded; the
  workflow's and the pre-commit hooks' goatclaw commands run as the CI runner and pre-commit
  would run them. A first line ``# some/path.yaml`` says where the block lives; the blocks of a
  page that name a path are written there for the page's later blocks (a page reads as one
  session), and a pipeline is checked under the page's latest project file.
- ``sh``, ``bash``, ``console``: each command (``$ `` lines of a console block) runs with bash
  in a copy of the repository that holds one stored quickstart run, and must exit 0. Setting up
  an environment is not run (:data:`NOT_RUN`): the install lines are resolved by
  :func:`test_install_line` instead.
- ``python``: executed in that copy; then its ``test_*`` functions are called.
- ``json``, ``toml``: parsed; the plugin page's ``pyproject.toml`` must declare what the example
  package declares.
- untagged and ``text`` blocks are output, synopses and trees: not run.

A block that cannot run says why in the Markdown, on the line right before it (visible to
anyone who edits the page):

- ``<!-- docs-test: skip REASON -->``: not run at all;
- ``<!-- docs-test: check-only REASON -->``: a whole pipeline that is checked but not run;
- ``<!-- docs-test: error TEXT -->``: a YAML block that shows a mistake: checking it must
  report an error containing TEXT.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

import goatclaw
from goatclaw.errors import SpecError
from goatclaw.spec.project import load_project
from goatclaw.testing import run_pipeline_test

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCHEMAS = REPO / "goatclaw" / "schemas"

#: What the temporary copy of the repository holds (what the documented commands read).
COPIED = ["goatclaw.yaml", "pipelines", "plugins", ".pre-commit-hooks.yaml"]

#: Commands that set up an environment rather than use goatclaw: not run here, and why.
NOT_RUN: dict[str, str] = {
    "python3 -m venv": "the tests already run in a virtual environment",
    ". .venv/bin/activate": "the tests already run in a virtual environment",
    "pip install": "test_install_line resolves every install line against this checkout",
    "python -m pip install": "test_install_line resolves every install line against this checkout",
    "pytest": "this is the test suite that runs these blocks",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w+-]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>skip|check-only|error)\b\s*(?P<text>.*?)\s*-->\s*$")
_PATH_COMMENT = re.compile(r"^#\s*(?P<path>[\w./-]+\.(?:ya?ml))\b")
_SHELL = {"sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: tuple[str, str] | None = None  # (kind, text) of a docs-test comment right before it
    earlier: tuple[Block, ...] = field(default=(), repr=False)  # the page's blocks before this one

    @property
    def name(self) -> str:
        """``README.md:37``."""
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def named_path(self) -> str | None:
        """The path a first line ``# some/path.yaml`` gives the block."""
        first = self.text.splitlines()[0] if self.text else ""
        match = _PATH_COMMENT.match(first)
        return match["path"] if match else None


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order, each with its marker and the blocks before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence)
        body = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line
                                         for line in lines[i + 1:end]))
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mark = _MARKER.match(before)
        found.append(Block(page, i + 1, opening["lang"].lower(), body + "\n",
                           (mark["kind"], mark["text"]) if mark else None, tuple(found)))
        i = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def _cases(*langs: str) -> list[Any]:
    return [pytest.param(b, id=b.name) for b in ALL_BLOCKS if b.lang in langs]


# --- the workspace -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's pipelines and project file with one stored quickstart run."""
    root = tmp_path_factory.mktemp("docs") / "repo"
    root.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name,
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "out", "__pycache__"))
        else:
            shutil.copy2(source, root / name)
    (root / "schemas").symlink_to(SCHEMAS)
    done = subprocess.run([*_goatclaw(), "apply", "pipelines/quickstart.yaml", "--output", "plain"], cwd=root,
                          env=_env(root), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture
def workspace(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the template, the current folder, with the environment the commands see."""
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.chdir(root)
    for name, value in _env(root).items():
        monkeypatch.setenv(name, value)
    for name in ("CI", "GOATCLAW_STORE", "GOATCLAW_LLM", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    return root


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE", "GOATCLAW_LLM")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["GITHUB_STEP_SUMMARY"] = str(root / "step-summary.md")
    env["COLUMNS"] = "120"
    return env


def _goatclaw() -> list[str]:
    return [sys.executable, "-m", "goatclaw"]


def _write_named_blocks(block: Block, root: Path) -> None:
    """Write the page's earlier blocks that name a path where they say (a page is one session)."""
    for earlier in block.earlier:
        if earlier.lang == "yaml" and earlier.named_path and earlier.marker is None:
            target = root / earlier.named_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_completed(earlier)[0])


def _skip_if_marked(block: Block) -> None:
    if block.marker and block.marker[0] == "skip":
        assert block.marker[1], f"{block.name}: a docs-test skip must say why"
        pytest.skip(f"{block.name}: {block.marker[1]}")


# --- YAML ----------------------------------------------------------------------------------------------------


def _properties(schema: str, *path: str) -> set[str]:
    data = json.loads((SCHEMAS / f"{schema}.schema.json").read_text())
    for key in path:
        data = data[key]
    return set(data["properties"])


PIPELINE_KEYS = _properties("pipeline")
TASK_KEYS = _properties("pipeline", "$defs", "task")
PROJECT_KEYS = _properties("goatclaw")
TEST_KEYS = _properties("test")


def yaml_kind(block: Block) -> str:
    """What a YAML block is: pipeline, task (a fragment of one), project, test, workflow or pre-commit."""
    path = block.named_path or ""
    if path.startswith(".github/workflows/"):
        return "workflow"
    if path == ".pre-commit-config.yaml":
        return "pre-commit"
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), f"{block.name}: a YAML block must be a mapping"
    keys = {"on" if k is True else k for k in data}  # PyYAML reads a bare `on:` key as True; goatclaw does not
    if path.endswith("goatclaw.yaml"):
        return "project"
    if path.endswith(".test.yaml") or ("tests" in keys and keys <= TEST_KEYS):
        return "test"
    if keys <= PIPELINE_KEYS:
        return "pipeline"
    if keys <= TASK_KEYS:
        return "task"
    if keys <= PROJECT_KEYS:
        return "project"
    raise AssertionError(f"{block.name}: keys {sorted(keys)} are not those of any goatclaw file: "
                         "name the file on its first line (# path.yaml)")


def _completed(block: Block) -> tuple[str, int]:
    """The block as a whole file, and how many lines were added before its first line."""
    kind = yaml_kind(block)
    if kind in ("workflow", "pre-commit"):
        return block.text, 0
    if kind == "task":
        return "version: 1\ntasks:\n  t:\n    uses: echo\n" + textwrap.indent(block.text, "    "), 4
    data = yaml.safe_load(block.text)
    if kind in ("pipeline", "project", "test") and "version" not in data:
        tail = "tasks: {noop: {uses: echo}}\n" if kind == "pipeline" and "tasks" not in data else ""
        return "version: 1\n" + block.text + tail, 1
    return block.text, 0


def _located(problems: list[Any], block: Block, file: Path, added: int) -> str:
    """Problems with their lines moved from the written file to the Markdown page."""
    out = []
    for problem in problems:
        loc = problem.location
        if loc and Path(loc.file).resolve() == file.resolve():
            where = f"{block.page.relative_to(REPO)}:{block.line + loc.line - added}:{loc.col}"
            out.append(f"{where}: {problem.path + ': ' if problem.path else ''}{problem.message}")
        else:
            out.append(str(problem))
    return "\n".join(out)


def _project_for(block: Block, root: Path) -> None:
    """The page's latest project block before ``block`` becomes the copy's goatclaw.yaml."""
    latest = [b for b in block.earlier if b.lang == "yaml" and b.marker is None and yaml_kind(b) == "project"]
    if latest:
        (root / "goatclaw.yaml").write_text(_completed(latest[-1])[0])


@pytest.mark.parametrize("block", _cases("yaml"))
def test_yaml_block(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_if_marked(block)
    kind = yaml_kind(block)
    _write_named_blocks(block, workspace)
    if kind == "workflow":
        return _run_workflow(block, workspace)
    if kind == "pre-commit":
        return _run_pre_commit(block, workspace)
    _project_for(block, workspace)
    text, added = _completed(block)
    if kind == "project":
        file = workspace / "goatclaw.yaml"
        file.write_text(text)
        try:
            load_project(file)
        except SpecError as exc:
            pytest.fail(f"{block.name}: the project file is invalid:\n{_located(exc.problems, block, file, added)}")
        return None
    default = f"pipelines/doc-{block.line}.test.yaml" if kind == "test" else f"pipelines/doc-{block.line}.yaml"
    file = workspace / (block.named_path or default)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    if kind == "test":
        run_pipeline_test(file)  # raises AssertionError listing every failed check
        return None
    # llm tasks are checked as they would be where the provider keys are set; they are never run here
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-docs-test")
    pipeline, problems = goatclaw.check(file)
    errors = [p for p in problems if p.severity == "error"]
    if block.marker and block.marker[0] == "error":
        shown = _located(errors, block, file, added)
        assert errors, f"{block.name}: shows a mistake ({block.marker[1]}) that checking does not find"
        assert block.marker[1] in shown, f"{block.name}: expected an error with {block.marker[1]!r}, got:\n{shown}"
        return None
    assert not errors, f"{block.name}: the pipeline is invalid:\n{_located(errors, block, file, added)}"
    if "version" in yaml.safe_load(block.text) and not block.marker:
        result = goatclaw.run(pipeline)
        failed = {tid: r.error for tid, r in result.tasks.items() if r.error}
        assert result.status.value == "succeeded", f"{block.name}: the pipeline's run {result.status.value}: {failed}"
    return None


def _run_workflow(block: Block, root: Path) -> None:
    """Each step's goatclaw command, as an Actions runner runs it (CI=true), offline (LLM answers replayed)."""
    workflow = yaml.safe_load(block.text)
    env = {**_env(root), "CI": "true", "GOATCLAW_LLM": "replay", "OPENAI_API_KEY": "sk-docs-test"}
    ran = 0
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            command = step.get("run")
            if command is None or _not_run(command):
                continue
            done = subprocess.run(["bash", "-ec", command], cwd=root, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, f"{block.name}: step {step.get('name', command)!r} failed:\n" \
                                         f"{done.stdout}{done.stderr}"
            ran += 1
    assert ran, f"{block.name}: no step of the workflow ran"


def _run_pre_commit(block: Block, root: Path) -> None:
    """Each configured hook of this repository, as pre-commit runs it on every file; nothing may change."""
    config = yaml.safe_load(block.text)
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".goatclaw" not in p.parts)
    before = _digests(root)
    for hook in (h for repo in config["repos"] for h in repo["hooks"]):
        assert hook["id"] in hooks, f"{block.name}: no hook {hook['id']!r} in .pre-commit-hooks.yaml"
        for requirement in hook.get("additional_dependencies", []):  # the plugin packages: installed here
            importlib.metadata.distribution(Requirement(requirement).name)
        spec = hooks[hook["id"]]
        argv = [*shlex.split(spec["entry"]), *hook.get("args", [])]
        if spec.get("pass_filenames", True):
            argv += [f for f in files if re.search(spec.get("files", ""), f)
                     and not (spec.get("exclude") and re.search(spec["exclude"], f))]
        done = subprocess.run(argv, cwd=root, env=_env(root), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{block.name}: hook {hook['id']} failed:\n{done.stdout}{done.stderr}"
    assert _digests(root) == before, f"{block.name}: the hooks changed files of the repository"


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and ".goatclaw" not in p.parts}


# --- shell ---------------------------------------------------------------------------------------------------


def _not_run(command: str) -> str | None:
    """Why ``command`` is not run here (:data:`NOT_RUN`), or None."""
    stripped = command.strip()
    return next((why for prefix, why in NOT_RUN.items() if stripped == prefix or stripped.startswith(prefix + " ")),
                None)


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: continuation lines joined, ``&&`` chains split, comments dropped."""
    lines = block.text.splitlines()
    if block.lang == "console":
        prompts = [line[2:] for line in lines if line.startswith("$ ")]
        assert prompts, f"{block.name}: a console block without a '$ ' command: tag it text"
        lines = prompts
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        commands += [part.strip() for part in line.split(" && ")]
    return commands


@pytest.mark.parametrize("block", _cases(*_SHELL))
def test_shell_block(block: Block, workspace: Path) -> None:
    _skip_if_marked(block)
    _write_named_blocks(block, workspace)
    # the page's earlier shell blocks ran first, as for a reader going down the page
    session = [b for b in block.earlier if b.lang in _SHELL and not b.marker]
    for earlier in [*session, block]:
        for command in (c for c in shell_commands(earlier) if not _not_run(c)):
            done = subprocess.run(["bash", "-c", command], cwd=workspace, env=_env(workspace), capture_output=True,
                                  text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, f"{earlier.name}: `{command}` exited {done.returncode}:\n" \
                                         f"{done.stdout[-3000:]}{done.stderr[-3000:]}"


# --- Python --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _cases("python"))
def test_python_block(block: Block, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_if_marked(block)
    _write_named_blocks(block, workspace)
    namespace: dict[str, Any] = {"__name__": f"docs_block_{block.line}"}
    # the page's earlier Python blocks ran first, in one namespace: a page's snippets continue one another
    for earlier in [*(b for b in block.earlier if b.lang == "python" and not b.marker), block]:
        # blank lines first, so that a traceback names the line of the Markdown page; no __future__ of ours
        code = compile("\n" * earlier.line + earlier.text, str(earlier.page.relative_to(REPO)), "exec",
                       dont_inherit=True)
        exec(code, namespace)
    fixtures = {"tmp_path": tmp_path / "test-fn", "monkeypatch": monkeypatch}
    fixtures["tmp_path"].mkdir()
    tests = {name: fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)
             and f"def {name}(" in block.text}
    for fn in tests.values():
        params = inspect.signature(fn).parameters
        if set(params) <= set(fixtures):
            fn(**{p: fixtures[p] for p in params})


# --- JSON and TOML -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _cases("json"))
def test_json_block(block: Block) -> None:
    _skip_if_marked(block)
    json.loads(block.text)


@pytest.mark.parametrize("block", _cases("toml"))
def test_toml_block(block: Block) -> None:
    _skip_if_marked(block)
    data = tomllib.loads(block.text)
    if data.get("project", {}).get("name") == "goatclaw-example":
        shipped = tomllib.loads((REPO / "plugins" / "goatclaw-example" / "pyproject.toml").read_text())
        assert data["project"]["entry-points"] == shipped["project"]["entry-points"]
        assert data["project"]["dependencies"] == shipped["project"]["dependencies"]


def test_every_block_is_collected() -> None:
    """Every fence was read as a block (an unclosed fence or a stray marker would hide the rest of a page)."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        fences = sum(1 for line in lines if _FENCE.match(line) or line.strip().startswith("```"))
        ours = [b for b in ALL_BLOCKS if b.page == page]
        assert fences == 2 * len(ours), f"{page.name}: {fences} fence lines for {len(ours)} blocks"
        markers = [i for i, line in enumerate(lines, 1) if _MARKER.match(line)]
        assert len(markers) == sum(1 for b in ours if b.marker), f"{page.name}: a docs-test marker not before a block"


def test_no_stale_sentences() -> None:
    """The docs describe what exists, not issues: no "see the open issues", no "issue 5"."""
    stale = re.compile(r"\b(open issues?|issues?\s*#?\d+|see the issues?|the issue (leaves|says)|not done yet"
                       r"|not yet implemented)\b", re.IGNORECASE)
    found = [f"{page.relative_to(REPO)}:{n}: {line.strip()}" for page in PAGES
             for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1) if stale.search(line)]
    assert not found, "\n".join(found)


_TEST_REF = re.compile(r"`(?P<file>tests/[\w/]+\.py)?::(?P<name>test_\w+)`")


def test_every_test_a_page_names_exists() -> None:
    """A page that says "held by tests/x.py::test_y" (docs/security.md's promises) names a real test."""
    missing = []
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            file = None
            for ref in _TEST_REF.finditer(line):
                file = ref["file"] or file  # `::test_b` after `tests/x.py::test_a` is in the same file
                path = REPO / file if file else None
                if path is None or not re.search(rf"^(async )?def {ref['name']}\(", path.read_text() if path.exists()
                                                 else "", re.MULTILINE):
                    missing.append(f"{page.relative_to(REPO)}:{n}: {file}::{ref['name']}")
    assert not missing, "\n".join(missing)


# --- install lines -------------------------------------------------------------------------------------------

#: Placeholders of the install lines, and what they are in this repository.
PLACEHOLDERS = {"/path/to/goatclaw": ".", "./goatclaw-example": "./plugins/goatclaw-example"}

_PIP_INSTALL = re.compile(r"\bpip install\s+(?P<args>[^`#\n&|;>]+)")


@dataclass(frozen=True)
class InstallLine:
    """A documented ``pip install``: where it is, its arguments, and them with placeholders replaced."""

    where: str
    args: tuple[str, ...]
    real: tuple[str, ...]
    command: bool = False  # in a code block (a command to copy), not inline code in a sentence

    @property
    def targets(self) -> tuple[str, ...]:
        """What it installs (options dropped)."""
        return tuple(a for a in self.real if not a.startswith("-"))

    @property
    def local(self) -> bool:
        """Whether it installs from this checkout (a path), not only from the index."""
        return any(t.startswith((".", "/")) for t in self.targets)


def install_lines() -> Iterator[InstallLine]:
    """Every ``pip install`` of README.md and docs/ (code blocks and inline code), with where it is."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        fenced = {n for b in ALL_BLOCKS if b.page == page for n in range(b.line, b.line + b.text.count("\n") + 1)}
        for n, line in enumerate(lines, 1):
            if line.rstrip().endswith("pip install") and n < len(lines):  # inline code broken across lines
                line = f"{line.rstrip()} {lines[n].strip()}"
            for match in _PIP_INSTALL.finditer(line):
                args = tuple(shlex.split(match["args"].strip()))
                yield InstallLine(f"{page.relative_to(REPO)}:{n}", args, tuple(map(_unplaceholder, args)), n in fenced)


def _unplaceholder(arg: str) -> str:
    for placeholder, real in PLACEHOLDERS.items():
        if arg == placeholder or arg.startswith(placeholder + "["):
            return real + arg[len(placeholder):]
    return arg


def requirements(line: InstallLine) -> frozenset[str]:
    """Everything the line asks for before resolving: each local project, its dependencies and extras'."""
    wanted: set[str] = set()
    for target in line.targets:
        path, _, extras = target.partition("[")
        if not target.startswith((".", "/")):
            wanted.add(_canonical(re.split(r"[<>=!~\[ ;]", target)[0]))
            continue
        project = tomllib.loads((REPO / path / "pyproject.toml").read_text())["project"]
        wanted.add(_canonical(project["name"]))
        todo = [e.strip() for e in extras.rstrip("]").split(",") if e.strip()]
        wanted.update(project.get("dependencies", []))
        seen: set[str] = set()
        while todo:  # extras may name the project's own extras (dev = goatclaw-pipelines[dask] …)
            extra = todo.pop()
            if extra in seen:
                continue
            seen.add(extra)
            for req in project.get("optional-dependencies", {})[extra]:
                parsed = Requirement(req)
                if _canonical(parsed.name) == _canonical(project["name"]):
                    todo += sorted(parsed.extras)
                else:
                    wanted.add(str(parsed))
    return frozenset(wanted)


def _distinct_lines() -> list[InstallLine]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for line in install_lines():
        key = tuple(a for a in line.real if a != "-e")  # -e changes where files go, not what is resolved
        if key not in seen:
            seen.add(key)
            out.append(line)
    return out


INSTALL_LINES = _distinct_lines()


def resolved_lines() -> list[InstallLine]:
    """The lines resolved for real: the README's commands, and every local line that they do not cover.

    A line covers another when it asks for everything the other asks for (the same projects and
    at least the same extras): whatever the smaller line would pull in is in the bigger line's
    resolution too, so resolving both would only take longer.
    """
    readme = [line for line in INSTALL_LINES if line.local and line.command and line.where.startswith("README.md:")]
    return readme + [line for line in INSTALL_LINES if line.local and line not in readme
                     and not any(requirements(line) <= requirements(big) for big in readme)]


class Resolutions:
    """``pip install --dry-run --report`` of each resolved line, started together, into empty venvs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkout = root / "checkout"
        _copy_checkout(self.checkout)
        self.running: dict[str, tuple[subprocess.Popen[str], Path]] = {}
        self.output: dict[str, str] = {}
        for i, line in enumerate(resolved_lines()):
            venv = root / f"venv{i}"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
            report = root / f"report{i}.json"
            process = subprocess.Popen([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                                        "install", "--dry-run", "--quiet", "--report", str(report), *line.real],
                                       cwd=self.checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.running[line.where] = (process, report)

    def installs(self, line: InstallLine) -> list[dict[str, Any]]:
        """What pip would install for ``line`` (waiting for its resolution)."""
        process, report = self.running[line.where]
        if line.where not in self.output:
            self.output[line.where] = process.communicate(timeout=900)[0]
        assert process.returncode == 0, \
            f"{line.where}: pip install {' '.join(line.real)} failed:\n{self.output[line.where][-4000:]}"
        return json.loads(report.read_text())["install"]

    def close(self) -> None:
        """Stop the resolutions no test waited for (deselected ones), closing every pipe."""
        for process, _ in self.running.values():
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolutions]:
    started = Resolutions(tmp_path_factory.mktemp("install"))
    try:
        yield started
    finally:
        started.close()


def test_install_lines_found() -> None:
    """The README's two commands are among the lines (the collector did not go blind)."""
    found = {line.args for line in install_lines()}
    assert ("-e", ".") in found and ("-e", ".[dev]", "./plugins/goatclaw-example") in found
    assert requirements(next(line for line in INSTALL_LINES if line.args == ("-e", ".[dev]",
                                                                             "./plugins/goatclaw-example"))) >= {
        "goatclaw-pipelines", "goatclaw-example", "dask[distributed]>=2024.6", "wordllama>=0.4", "pytest>=8.0"}


@pytest.mark.index
@pytest.mark.timeout(900)  # pip resolves 100-odd packages against the index: a busy machine takes minutes
@pytest.mark.parametrize("line", [pytest.param(line, id=f"{line.where}:{' '.join(line.args)}")
                                  for line in INSTALL_LINES])
def test_install_line(line: InstallLine, resolutions: Resolutions) -> None:
    """``pip install`` of a documented line, in a fresh venv, takes nothing named goatclaw from an index.

    The PyPI name ``goatclaw`` belongs to an unrelated project; goatclaw's distribution is
    ``goatclaw-pipelines``, which (with the example plugin) must come from this checkout. The
    README's two commands are resolved for real (``pip install --dry-run --report``, which needs the
    package index) against a copy of the checkout, into an empty virtual environment; another
    line is resolved too unless one of those asks for all it asks for.
    """
    names = [_canonical(re.split(r"[<>=!~\[ ;]", t)[0]) for t in line.targets if not t.startswith((".", "/"))]
    assert "goatclaw" not in names, f"{line.where}: installs the unrelated 'goatclaw' from the index"
    if not line.local:  # only from the index (build, twine; a published plugin): nothing of this checkout
        return
    resolved = line if line in resolved_lines() else next(
        big for big in resolved_lines() if requirements(line) <= requirements(big))
    installs = resolutions.installs(resolved)
    assert installs, f"{resolved.where}: pip would install nothing"
    for item in installs:
        name = _canonical(item["metadata"]["name"])
        url = item["download_info"]["url"]
        assert name != "goatclaw", f"{resolved.where}: pip would install the unrelated 'goatclaw' from {url}"
        if name.startswith("goatclaw"):
            assert url.startswith(resolutions.checkout.as_uri()), \
                f"{resolved.where}: {name} would come from {url}, not this checkout"
    wanted = {_canonical(Requirement(r).name) for r in requirements(line)}
    assert wanted <= {_canonical(i["metadata"]["name"]) for i in installs}, f"{line.where}: not all resolved"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _copy_checkout(target: Path) -> None:
    """What pip reads of the checkout: the project files, the package and the example plugin."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(REPO / "goatclaw", target / "goatclaw", ignore=ignore)
    shutil.copytree(REPO / "plugins", target / "plugins", ignore=ignore)
