"""``code``: a model generates, changes, reviews or writes tests for the code in a workspace folder.

::

    goal + the folder's files ─▶ llm: {files: [{path, content}]} ─▶ written (files.write grant)
        ─▶ the checks the task names (py_compile, ruff, pytest, or a granted command) ─ all pass ─▶ output
                ▲                                                               │ one fails
                └──────────── "these checks failed: <their output>" ◀───────────┘ (max_rounds)

``mode: review`` writes nothing: the model returns findings, each located ``file:line: message``
(a finding naming a file that is not in the folder, or a line past its end, is dropped and
reported); ``mode: tests`` may write test files only, never the code under test. The output::

    {"mode", "passed": true, "rounds": 2, "files": ["src/calc.py"], "diff": "--- a/src/calc.py …",
     "checks": [{"name": "pytest", "argv": [...], "exit_code": 0, "passed": true, "output": "…"}],
     "findings": ["src/calc.py:3: …"], "summary", "model", "usage", "cost_usd", "source"}

The model's output is untrusted: a path it names must stay inside ``folder`` and pass
``permissions.files.write`` (resolved, no ``..`` or symlink escape), and it never becomes a
command: the commands are the task's ``checks:``, each run through the ``shell`` task with
this task's context (``permissions.shell`` must list its program; the audit chain records it).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from goatclaw.plugin import TaskContext, fail, task
from goatclaw.tasks.files import replace_atomically
from goatclaw.tasks.llm import _chain, _count, _number, _warmup
from goatclaw.tasks.shell import shell

__all__ = ["BUILTIN_CHECKS", "code"]

MODES = ("generate", "change", "review", "tests")
#: A named check's command; ``{python}`` is the task's ``python:`` program, ``{files}`` the Python files touched.
BUILTIN_CHECKS: dict[str, list[str]] = {
    "py_compile": ["{python}", "-m", "py_compile", "{files}"],
    "ruff": ["ruff", "check", "--no-cache", "."],
    "pytest": ["{python}", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"],
}
_MAX_SHOWN = 60_000  # characters of the folder's files shown to the model
_MAX_FEEDBACK = 4_000  # characters of a failed check's output fed back
_FILES_SCHEMA = {"type": "object", "required": ["files"], "properties": {
    "summary": {"type": "string"},
    "files": {"type": "array", "items": {"type": "object", "required": ["path", "content"],
                                         "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}}}
_REVIEW_SCHEMA = {"type": "object", "required": ["findings"], "properties": {
    "summary": {"type": "string"},
    "findings": {"type": "array", "items": {"type": "object", "required": ["file", "line", "message"], "properties": {
        "file": {"type": "string"}, "line": {"type": "integer"}, "message": {"type": "string"}}}}}}
_ASK = {
    "generate": "Write the code the goal asks for.",
    "change": "Change the code as the goal asks.",
    "tests": "Write tests (pytest) for the code, as the goal asks; do not change the code under test.",
}


@task(cacheable=False, side_effects=True, permissions=("network", "files.read", "files.write"),
      untrusted_output=True, sinks=("folder", "checks", "python", "include"), warmup=_warmup)
async def code(ctx: TaskContext, *, goal: str, folder: str = ".",
               mode: Literal["generate", "change", "review", "tests"] = "change",
               checks: list[str | dict[str, Any]] | None = None, include: list[str] | None = None,
               max_rounds: int = 3, python: str = "python3", check_timeout: float = 300,
               model: str | dict[str, Any] | list[str | dict[str, Any]] | None = None,
               temperature: float | None = None, max_tokens: int | None = None, api_base: str | None = None,
               api_key: str | None = None, timeout: float | None = 120) -> dict[str, Any]:
    """Work on the code in ``folder`` toward ``goal`` until every check passes (``max_rounds`` model answers at most).

    ``checks`` names ``py_compile``, ``ruff``, ``pytest`` or ``{name, run: [argv]}`` (run in
    ``folder``); ``include`` the globs of files shown to the model (default ``**/*.py``).
    ``mode: review`` returns located findings and writes nothing.
    """
    from goatclaw import llm as room

    if not isinstance(goal, str) or not goal.strip():
        fail("goal is empty", error_class="invalid_input")
    if mode not in MODES:
        fail(f"mode must be one of {', '.join(MODES)}, not {mode!r}", error_class="invalid_input")
    root = ctx.require_read(folder)
    if not root.is_dir():
        fail(f"folder '{folder}' is not a folder", error_class="invalid_input")
    commands = [_command(i, c, python) for i, c in enumerate(checks or [])]
    files = _files(ctx, root, include or ["**/*.py"])
    models, endpoints = _chain(model, room.session())
    request = room.Request(models=models, endpoints=endpoints, messages=tuple(_messages(goal, mode, root, files)),
                           temperature=_number("temperature", temperature),
                           max_tokens=_count("max_tokens", max_tokens), output="json",
                           schema=_REVIEW_SCHEMA if mode == "review" else _FILES_SCHEMA, api_base=api_base or None,
                           api_key=api_key or None, timeout=_number("timeout", timeout), cache=ctx.cache,
                           cache_ttl=ctx.cache_ttl)
    for name in request.models:
        ctx.require_models((name,), *room.endpoint(name, request))
    session = _Session(ctx, root, folder, request, commands, _number("check_timeout", check_timeout) or 300)
    if mode == "review":
        return await session.review(files)
    return await session.work(_count("max_rounds", max_rounds) or 3, mode)


def _command(index: int, entry: Any, python: str) -> tuple[str, list[str]]:
    """``(name, argv template)`` of ``checks[index]``: a built-in name or ``{name, run: [argv]}``."""
    if isinstance(entry, str) and entry in BUILTIN_CHECKS:
        return entry, [python if a == "{python}" else a for a in BUILTIN_CHECKS[entry]]
    if isinstance(entry, dict) and isinstance(entry.get("run"), list) and entry["run"] and all(
            isinstance(a, str) for a in entry["run"]) and not set(entry) - {"name", "run"}:
        return str(entry.get("name") or entry["run"][0]), list(entry["run"])
    fail(f"checks[{index}] must be {', '.join(BUILTIN_CHECKS)} or {{name, run: [argv]}}, not {entry!r}",
         error_class="invalid_input")
    raise AssertionError("unreachable")  # pragma: no cover


def _files(ctx: TaskContext, root: Path, include: list[str]) -> dict[str, str]:
    """The folder's files that ``include`` matches and the grant lets this task read: relative path → text."""
    if not isinstance(include, list) or not all(isinstance(g, str) and g for g in include):
        fail("include must be a list of globs", error_class="invalid_input")
    found: dict[str, str] = {}
    for glob in include:
        for path in sorted(root.glob(glob)):
            real = path.resolve()
            if not path.is_file() or not real.is_relative_to(root) or "__pycache__" in path.parts:
                continue
            rel = real.relative_to(root).as_posix()
            try:
                ctx.require_read(real.relative_to(ctx.workspace.resolve()))
                found[rel] = real.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError, ValueError):
                continue
    return found


def _messages(goal: str, mode: str, root: Path, files: dict[str, str]) -> list[dict[str, str]]:
    shown, used = [], 0
    for rel, text in files.items():
        if used + len(text) > _MAX_SHOWN:
            shown.append(f"--- {rel} (not shown: over the size shown)")
            continue
        used += len(text)
        numbered = "\n".join(f"{i:4d} {line}" for i, line in enumerate(text.splitlines(), 1))
        shown.append(f"--- {rel}\n{numbered}")
    listing = "\n\n".join(shown) or "(the folder has no files yet)"
    if mode == "review":
        system = ("You review code. Answer as JSON only: {\"summary\": \"...\", \"findings\": [{\"file\": "
                  "\"path as listed\", \"line\": n, \"message\": \"what is wrong and why\"}]}. Lines are numbered.")
    else:
        system = (f"You are a careful programmer. {_ASK[mode]} Answer as JSON only: {{\"summary\": \"...\", "
                  "\"files\": [{\"path\": \"relative/path.py\", \"content\": \"the whole new file\"}]}, listing only "
                  "the files you create or change, each with its whole content (no line numbers). Checks run after "
                  "your answer; when one fails you see its output and answer again.")
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Goal: {goal}\n\nFiles of the folder (line numbers for reference):\n\n"
                                        f"{listing}"}]


def _entries(files: Any) -> list[tuple[str, str]]:
    """The ``(path, content)`` pairs of the model's ``files`` (malformed entries are left out)."""
    pairs = []
    for entry in files if isinstance(files, list) else []:
        path, content = (entry.get("path"), entry.get("content")) if isinstance(entry, dict) else (None, None)
        if isinstance(path, str) and isinstance(content, str) and path.strip():
            pairs.append((path, content))
    return pairs


def _is_test_file(rel: str) -> bool:
    """A path ``mode: tests`` may write: a pytest file, a conftest.py, or anything under a ``tests`` folder."""
    parts = PurePosixPath(rel).parts
    name = parts[-1]
    return "tests" in parts[:-1] or name == "conftest.py" or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")))


class _Session:
    """One code task: the conversation, the files as they were, the checks."""

    def __init__(self, ctx: TaskContext, root: Path, folder: str, request: Any,
                 commands: list[tuple[str, list[str]]], check_timeout: float) -> None:
        self.ctx, self.root, self.folder, self.request = ctx, root, folder, request
        self.commands, self.check_timeout = commands, check_timeout
        self.messages = list(request.messages)
        self.before: dict[str, str | None] = {}
        self.cost = 0.0
        self.usage: dict[str, int] = {}

    async def ask(self) -> Any:
        from goatclaw import llm as room

        response = await room.complete(dataclasses.replace(self.request, messages=tuple(self.messages)),
                                       emit=self.ctx.emit, secrets=list(self.ctx.secrets.values()))
        self.cost += response.cost_usd
        for k, v in response.usage.items():
            self.usage[k] = self.usage.get(k, 0) + int(v)
        self.messages.append({"role": "assistant", "content": response.text})
        return response

    def _out(self, response: Any, **extra: Any) -> dict[str, Any]:
        data = response.data if isinstance(response.data, dict) else {}
        return {**extra, "summary": str(data.get("summary", "")), "model": response.model, "usage": self.usage,
                "cost_usd": round(self.cost, 10), "source": response.source}

    async def work(self, max_rounds: int, mode: str) -> dict[str, Any]:
        """Answers, writes and checks until every check passes; fails ``invalid_output`` after ``max_rounds``."""
        results: list[dict[str, Any]] = []
        for rounds in range(1, max_rounds + 1):
            response = await self.ask()
            touched = await self.write(response.data.get("files") if isinstance(response.data, dict) else None,
                                       tests_only=mode == "tests")
            results = [await self.check(name, argv, touched) for name, argv in self.commands]
            failed = [r for r in results if not r["passed"]]
            self.ctx.emit("code.round", round=rounds, files=touched, failed=[r["name"] for r in failed])
            if not failed:
                files = sorted(self.before)
                return self._out(response, mode=mode, passed=True, rounds=rounds, files=files, diff=self.diff(),
                                 checks=results, findings=[])
            self.messages.append({"role": "user", "content": "These checks failed:\n\n" + "\n\n".join(
                f"$ {' '.join(r['argv'])}  (exit {r['exit_code']})\n{r['output'][-_MAX_FEEDBACK:]}" for r in failed)
                + "\n\nFix the code and answer again with the files you change."})
        names = ", ".join(r["name"] for r in results if not r["passed"])
        fail(f"code: checks {names} still fail after {max_rounds} rounds (files changed: "
             f"{', '.join(sorted(self.before)) or 'none'})", error_class="invalid_output",
             files=sorted(self.before), diff=self.diff(), checks=results)
        raise AssertionError("unreachable")  # pragma: no cover

    async def write(self, files: Any, *, tests_only: bool = False) -> list[str]:
        """Write the model's files (each inside the folder and the write grant); the relative paths written.

        Every path is checked before any file is written, so a refused one leaves the folder as it was.
        With ``tests_only`` (``mode: tests``) only test files may be written (:func:`_is_test_file`).
        Each file waits for ``rate_limits.side_effects.file_writes_per_minute`` and is replaced
        atomically, as ``file.write`` does; its audit row says the content is this task's own
        (untrusted) output, so a task that reads the file back carries it (goatclaw.engine.readback).
        """
        planned = [(self._target(path, tests_only), content) for path, content in _entries(files)]
        written = []
        for (rel, real), content in planned:
            if rel not in self.before:
                self.before[rel] = real.read_text(encoding="utf-8") if real.is_file() else None
            data = content.encode("utf-8")
            await self.ctx.throttle("file")  # wait, never fail
            try:
                real.parent.mkdir(parents=True, exist_ok=True)
                replace_atomically(real, data)
            except OSError as exc:
                fail(f"code: cannot write '{rel}': {exc.strerror or exc}", error_class="internal")
            self.ctx.audit("file.written", path=str(real.relative_to(self.ctx.workspace.resolve())), bytes=len(data),
                           sha256=hashlib.sha256(data).hexdigest(), mode="overwrite", by="code", from_output=True)
            written.append(rel)
        return written

    def _target(self, path: str, tests_only: bool) -> tuple[str, Path]:
        """``(path relative to the folder, real path)`` of a file the model names, or a refusal."""
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            fail(f"code: the model named a path outside the folder '{self.folder}': {path!r}",
                 error_class="permission_denied")
        rel = target.relative_to(self.root).as_posix()
        if tests_only and not _is_test_file(rel):
            fail(f"code: in mode tests the model may write test files only (test_*.py, *_test.py, conftest.py "
                 f"or under tests/), not {rel!r}", error_class="permission_denied")
        return rel, self.ctx.require_write(target.relative_to(self.ctx.workspace.resolve()))

    async def check(self, name: str, argv: list[str], touched: list[str]) -> dict[str, Any]:
        """One check, run through the ``shell`` task in the folder (its program must be granted)."""
        py = [f for f in sorted(set(touched) | set(self.before)) if f.endswith(".py") and (self.root / f).is_file()]
        args = [x for a in argv for x in (py if a == "{files}" else [a])]
        if "{files}" in argv and not py:
            return {"name": name, "argv": args, "exit_code": 0, "passed": True, "output": "no Python files changed"}
        cwd = self.root.relative_to(self.ctx.workspace.resolve()).as_posix()
        result = await shell(self.ctx, run=args, cwd=cwd, check=False, timeout=self.check_timeout)
        output = (result["stdout"] + ("\n" if result["stdout"] and result["stderr"] else "") + result["stderr"])
        return {"name": name, "argv": args, "exit_code": result["exit_code"], "passed": result["exit_code"] == 0,
                "output": output[-_MAX_FEEDBACK:]}

    def diff(self) -> str:
        """A unified diff of every file touched, from before the task to now."""
        parts = []
        for rel, old in sorted(self.before.items()):
            new = (self.root / rel).read_text(encoding="utf-8") if (self.root / rel).is_file() else ""
            parts += difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                          "/dev/null" if old is None else f"a/{rel}", f"b/{rel}")
        return "".join(parts)

    async def review(self, files: dict[str, str]) -> dict[str, Any]:
        """Findings located ``file:line: message``; those naming no line of a listed file are dropped (and said)."""
        response = await self.ask()
        data = response.data if isinstance(response.data, dict) else {}
        findings, dropped = [], []
        for f in data.get("findings") or []:
            file, line, message = f.get("file"), f.get("line"), str(f.get("message", "")).strip()
            lines = files.get(file).count("\n") + 1 if isinstance(file, str) and file in files else 0
            if isinstance(line, int) and 1 <= line <= lines and message:
                findings.append({"file": file, "line": line, "message": message})
            else:
                dropped.append(f"{file}:{line}: {message}"[:300])
        located = [f"{f['file']}:{f['line']}: {f['message']}" for f in findings]
        return self._out(response, mode="review", passed=True, rounds=1, files=[], diff="", checks=[],
                         findings=located, located=findings, dropped=dropped)
