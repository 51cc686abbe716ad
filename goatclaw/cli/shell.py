"""The interactive shell: ``goatclaw`` with no arguments on a terminal, or ``goatclaw shell``.

The one module that imports prompt_toolkit. A prompt with history (``.goatclaw/shell_history``)
and completion of commands, pipeline files, task ids (after ``--only``) and run ids; each
line is a command of the shell or, failing that, a goal that is planned and run as
``goatclaw run "GOAL"`` does. Every command runs through the same CLI in process, so it
behaves and exits as on the command line; Ctrl-C cancels the command (a run is recorded
as cancelled) and never the shell; Ctrl-D (or ``quit``) ends it.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from goatclaw.cli.app import _err, _out, app, handles_errors

__all__ = ["COMMANDS", "Shell", "completions", "set_model", "shell", "status"]

#: The shell's own commands and what each does (``help`` prints them).
COMMANDS = {
    "help": "this list",
    "status": "the provider and model in use, the store's health, open breakers, today's spend",
    "provider": "provider NAME: use that provider's everyday model (saved as model: in goatclaw.yaml)",
    "model": "model NAME: use this model (saved as model: in goatclaw.yaml); alone: the model in use",
    "apply": "apply FILE [options]: check and run a pipeline (as goatclaw apply)",
    "runs": "the latest runs (runs show RUN: one of them)",
    "why": "why [RUN]: what memory knows about a run's failure",
    "quit": "leave the shell (Ctrl-D too)",
}
_MODEL_LINE = re.compile(r"^model:.*$", re.MULTILINE)


@app.command("shell")
@handles_errors
def shell() -> None:
    """An interactive prompt: status, provider/model, apply, runs, why, or a goal in plain words to plan and run."""
    Shell().loop()


class Shell:
    """One session: the prompt (history, completion) and the dispatch of each line."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path.cwd()

    def loop(self) -> None:
        """Read lines until ``quit`` or Ctrl-D; Ctrl-C at the prompt clears the line."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        from goatclaw.errors import GoatclawError

        history = self.root / ".goatclaw" / "shell_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(history=FileHistory(str(history)), completer=_completer(self),
                                                    complete_while_typing=False)
        _out().print("goatclaw shell: a goal in plain words plans and runs it; help lists the commands",
                     highlight=False)
        while True:
            try:
                line = session.prompt("goatclaw> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            try:
                if not self.dispatch(line.strip()):
                    return
            except KeyboardInterrupt:  # Ctrl-C during one of the shell's own commands: that command only
                _err().print("cancelled", highlight=False)
            except GoatclawError as exc:  # a refused switch, an unreadable project file: said, and the shell goes on
                _err().print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)

    def dispatch(self, line: str) -> bool:
        """Do one line; ``False`` when the shell should end."""
        if not line:
            return True
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        head, rest = words[0].lower(), words[1:]
        if head in ("quit", "exit"):
            return False
        if head == "help":
            for name, what in COMMANDS.items():
                _out().print(f"  {name:<9} {what}", highlight=False, markup=False, soft_wrap=True)
            _out().print("  anything else is a goal: goatclaw plans a pipeline for it and asks before running it",
                         highlight=False)
        elif head == "status":
            for text in status(self.root):
                _out().print(text, highlight=False, markup=False, soft_wrap=True)
        elif head in ("model", "provider"):
            self._switch(head, rest)
        elif head in ("apply", "why", "runs", "plan", "validate", "doctor", "test"):
            self._cli([head, *rest] if head != "runs" or rest else ["runs", "list"])
        else:
            self._cli(["run", line])
        return True

    def _cli(self, argv: list[str]) -> int:
        """A command of the CLI, in process; Ctrl-C during it cancels it (exit 130), not the shell."""
        from goatclaw.cli import main

        try:
            return main(argv, exit=False)
        except KeyboardInterrupt:
            _err().print("cancelled", highlight=False)
            return 130

    def _switch(self, head: str, rest: list[str]) -> None:
        from goatclaw.errors import GoatclawError
        from goatclaw.providers import DEFAULT_MODELS, PROVIDERS, ollama_models

        if not rest:
            _out().print(status(self.root)[0], highlight=False, markup=False)
            return
        if len(rest) > 1:
            raise GoatclawError(f"{head} takes one name, not {len(rest)} words")
        name = rest[0]
        if head == "provider":
            if name not in PROVIDERS:
                _err().print(f"unknown provider '{name}' (one of: {', '.join(PROVIDERS)})", highlight=False)
                return
            if name == "ollama":
                local = ollama_models()
                if not local:
                    _err().print("no Ollama server with a local model answers", highlight=False)
                    return
                name = f"ollama/{local[0]}"
            else:
                name = DEFAULT_MODELS[name]
        set_model(self.root / "goatclaw.yaml", name)
        _out().print(f"model: {name} (saved in goatclaw.yaml)", highlight=False, markup=False)

    def run_ids(self) -> list[str]:
        """The latest runs' ids (for completion); none without a store."""
        from goatclaw.api import load_project_for, past_runs

        try:
            return [r["id"] for r in past_runs(load_project_for(None).store_path, None, limit=30)] + ["last"]
        except Exception:  # a locked or foreign store: completion never breaks the prompt
            return []

    def pipeline_files(self) -> list[str]:
        """Pipeline files under the project (``pipelines/`` and the top folder), relative paths."""
        found = sorted({*self.root.glob("*.yaml"), *self.root.glob("pipelines/*.yaml")})
        return [str(p.relative_to(self.root)) for p in found
                if p.name != "goatclaw.yaml" and not p.name.endswith((".test.yaml", ".cassette.json"))]


def set_model(project_file: Path, model: str) -> None:
    """Write ``model: NAME`` into goatclaw.yaml (its comments and other lines kept; created if missing)."""
    from goatclaw.errors import GoatclawError

    if not re.fullmatch(r"[A-Za-z0-9_./:@-]+", model):
        raise GoatclawError(f"'{model}' is not a model name")
    text = project_file.read_text(encoding="utf-8") if project_file.exists() else "version: 1\n"
    if re.search(r"^model:\s*$", text, re.MULTILINE):
        raise GoatclawError(f"{project_file}: model: is a mapping or list there; edit it by hand")
    line = f"model: {model}"
    text = _MODEL_LINE.sub(line, text, count=1) if _MODEL_LINE.search(text) else text.rstrip("\n") + f"\n{line}\n"
    tmp = project_file.with_name(project_file.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(project_file)


def status(root: Path) -> list[str]:
    """The lines of ``status``: model (and why), usable providers, the store, open breakers, today's spend."""
    from goatclaw.api import load_project_for
    from goatclaw.providers import doctor

    project = load_project_for(None)
    report = doctor(project.root, Path(project.store_path), model=project.model, fallbacks=project.fallbacks)
    usable = [p["provider"] for p in report["providers"] if p["usable"]]
    store = report["store"]
    lines = [f"model: {report['model']['message']}", f"providers: {', '.join(usable) or 'none usable'}",
             f"store: {store['path']}: {'ok' if store['ok'] else store['message']}"]
    opened, spent = _store_figures(Path(project.store_path)) if store.get("runs") is not None else ([], 0.0)
    lines.append(f"breakers open: {', '.join(opened) if opened else 'none'}")
    lines.append(f"spent today: ${spent:.4f}")
    return lines


def _store_figures(path: Path) -> tuple[list[str], float]:
    """The open breakers' keys and what today's runs spent on LLM calls."""
    from goatclaw.history import llm_costs
    from goatclaw.store import Store

    midnight = time.mktime((*time.localtime()[:3], 0, 0, 0, 0, 0, -1))
    with Store.open(path) as db:
        opened = [b["key"] for b in db.breakers() if b["state"] == "open"]
        spent = sum(llm_costs(db.events(r.id))["cost_usd"] for r in db.runs(limit=500) if r.started_at >= midnight)
    return opened, spent


def _completer(shell: Shell) -> Any:
    """A prompt_toolkit completer from live data: commands, pipeline files, task ids after ``--only``, run ids."""
    from prompt_toolkit.completion import Completer, Completion

    class LiveCompleter(Completer):
        def get_completions(self, document: Any, event: Any) -> Iterator[Completion]:
            text = document.text_before_cursor
            words = text.split()
            word = "" if text.endswith(" ") or not words else words[-1]
            for option in completions(shell, words[:-1] if word else words):
                if option.startswith(word):
                    yield Completion(option, start_position=-len(word))

    return LiveCompleter()


def completions(shell: Shell, before: list[str]) -> Iterable[str]:
    """What may come after the words ``before`` on the shell's line."""
    if not before:
        return COMMANDS
    head = before[0].lower()
    if head in ("apply", "plan", "validate") and before[-1] == "--only" and len(before) >= 3:
        return _task_ids(shell.root / before[1])
    if head in ("apply", "plan", "validate"):
        return shell.pipeline_files()
    if head == "why" or before[-2:] == ["runs", "show"]:
        return shell.run_ids()
    if head == "runs":
        return ["show", "list", "logs"]
    if head == "provider":
        from goatclaw.providers import PROVIDERS

        return PROVIDERS
    return []


def _task_ids(file: Path) -> list[str]:
    """The task ids of a pipeline file (none when it cannot be read)."""
    from goatclaw.errors import SpecError
    from goatclaw.spec.loader import load_file

    try:
        data = load_file(file).data
    except (SpecError, OSError):
        return []
    tasks = data.get("tasks") if isinstance(data, dict) else None
    return sorted(tasks) if isinstance(tasks, dict) else []
