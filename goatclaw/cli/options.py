"""The command line every command shares: option values checked where they are parsed, one-line usage errors.

A refused command line is exit code 2 and one line on stderr, whatever refused it: click's
own parsing (an unknown option, a number out of range), a check here (``--var topics``
without ``=``, a negative ``--older-than``), or a check against the loaded pipeline
(``--var`` names it does not declare, ``--only`` tasks it does not have). :class:`Commands`
is the app's group class that turns each into that line.

Checks run as option callbacks, so they refuse the command line before anything is read
or written (a store, a pipeline file).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer 0.28 carries its own copy of click; earlier releases use click itself
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _click_errors  # type: ignore[no-redef]

__all__ = ["MAX_ID", "Commands", "check_against", "complete_pipeline_files", "complete_run_ids", "duration",
           "executor_name", "finite", "json_problems", "llm_mode", "only_command",
           "memory_kind", "one_of", "positive", "problem_data", "seconds", "usage_line", "var_pairs"]

#: The largest id or count a command takes: SQLite's largest integer.
MAX_ID = 2**63 - 1

_NO_ARGS_IS_HELP = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2: shows the help, as asked


def usage_line(exc: Any) -> str:
    """A refused command line as one line: ``error: goatclaw apply: --var: expected key=value … (see …)``."""
    from goatclaw.cli.terminal import printable

    message = " ".join(str(exc.format_message()).split()).replace(str(MAX_ID), "2^63-1")  # SQLite's largest
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return printable(f"error: {where}{message}{hint}")


@contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except _click_errors.ClickException as exc:
        if _NO_ARGS_IS_HELP and isinstance(exc, _NO_ARGS_IS_HELP):
            raise
        typer.echo(usage_line(exc), err=True)
        raise typer.Exit(exc.exit_code) from None


class Commands(TyperGroup):
    """The app's group: any refused command line, at any depth, is one line on stderr and its exit code (2)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        """Parse the top level's options; a refusal is one line."""
        with _one_line_usage():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        """Run the command (its parsing too); a refusal from parsing or from the command is one line."""
        with _one_line_usage():
            return super().invoke(ctx)


def only_command(app: typer.Typer, argv: list[str]) -> typer.Typer:
    """``app`` with only the top-level command ``argv`` starts with, when it names one; else ``app`` itself.

    Typer turns every command of the tree into a click command before it parses anything
    (signatures, annotations, options): a tenth of ``goatclaw validate``'s time. The copy
    keeps the app's own options and callback, so what is parsed, printed and refused for
    that command is the same; ``--help``, an option first, a name that is not a command
    and shell completion (which asks for the whole tree) all get the whole app.
    """
    import os

    name = argv[0] if argv else ""
    if not name or name.startswith("-") or any(k.startswith("_GOATCLAW_COMPLETE") for k in os.environ):
        return app
    commands = [c for c in app.registered_commands if _command_name(c) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if len(commands) + len(groups) != 1:
        return app
    import copy

    pruned = copy.copy(app)
    pruned.registered_commands, pruned.registered_groups = commands, groups
    return pruned


def _command_name(info: Any) -> str:
    """A registered command's name as typer derives it (``runs_list`` is ``runs-list`` unless named)."""
    if info.name:
        return str(info.name)
    return str(info.callback.__name__).lower().replace("_", "-") if info.callback is not None else ""


def var_pairs(value: list[str] | None) -> list[str] | None:
    """``--var``: every value is ``key=value`` with a non-empty key (checked before anything runs)."""
    for text in value or []:
        key, sep, _ = text.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got '{text}'")
    return value


def seconds(text: str) -> float:
    """A duration of the command line in seconds: ``30d``, ``2w``, ``12h``, ``90m``, ``500ms``, ``10``; never < 0."""
    from goatclaw.spec.model import parse_duration

    units = {"d": 86400.0, "w": 604800.0}
    value: float | None
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else parse_duration(text)
    except (ValueError, TypeError):
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"expected a duration like 30d, 12h, 90m or 500ms (not negative), got '{text}'")
    return value


def duration(value: str | None) -> str | None:
    """A duration option (``--older-than``, ``--since``, ``--debounce``): refused unless :func:`seconds` reads it."""
    if value is not None:
        seconds(value)
    return value


def finite(value: float | None) -> float | None:
    """A number option: ``nan`` (which passes every range check) and infinities are refused."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"expected a finite number, got '{value:g}'")
    return value


def positive(value: float | None) -> float | None:
    """A number option that must be above zero (``--speed``): 0, negatives, ``nan`` and infinities are refused."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"expected a number above 0, got '{value:g}'")
    return value


def one_of(*allowed: str) -> Callable[[str | None], str | None]:
    """A callback for a text option that takes one of ``allowed`` (a word, where an Enum would be too much)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(allowed)}")
        return value

    return check


#: ``--llm``: how LLM calls are answered.
llm_mode = one_of("live", "record", "replay")
#: ``--executor``: where task bodies run.
executor_name = one_of("local", "dask")
#: ``memory … --kind``: the kinds of memory.
memory_kind = one_of("run", "output", "failure", "fix", "note", "trajectory")


def check_against(pipeline: Any, variables: dict[str, Any], only: Sequence[str]) -> None:
    """``--var`` names the pipeline does not declare and ``--only`` tasks it does not have: a usage error (2)."""
    undeclared = [k for k in variables if k not in pipeline.vars]
    if undeclared:
        declared = ", ".join(pipeline.vars) or "none"
        raise typer.BadParameter(f"{_names(undeclared)} not declared in {_file(pipeline)} (its vars: {declared})",
                                 param_hint="'--var'")
    unknown = [t for t in only if t not in pipeline.tasks]
    if unknown:
        raise typer.BadParameter(f"no task {_names(unknown)} in {_file(pipeline)} (its tasks: "
                                 f"{', '.join(pipeline.tasks)})", param_hint="'--only'")


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _file(pipeline: Any) -> str:
    return str(pipeline.file or pipeline.name)


def problem_data(problem: Any) -> dict[str, Any]:
    """One problem as JSON: ``file``, ``line``, ``col`` (null without a place), ``path``, ``message``, ``severity``."""
    loc = problem.location
    return {"file": loc.file if loc else None, "line": loc.line if loc else None, "col": loc.col if loc else None,
            "path": problem.path, "message": problem.message, "severity": problem.severity}


@contextmanager
def json_problems(enabled: bool) -> Iterator[None]:
    """With ``--output json``: an invalid file or command line also prints a JSON document on stdout.

    The document is ``{"ok": false, "status": "invalid", "problems": [...]}``, so ``| jq``
    always has something to read; the located problems still go to stderr and the exit
    code is still 2.
    """
    import json

    from goatclaw.errors import Problem, SpecError

    try:
        yield
    except SpecError as exc:
        if enabled:
            print(json.dumps({"ok": False, "status": "invalid", "problems": [problem_data(p) for p in exc.problems]},
                             indent=2))
        raise
    except _click_errors.BadParameter as exc:
        if enabled:
            hint = str(exc.param_hint or "").strip("'") if not isinstance(exc.param_hint, (list, tuple)) else ""
            problem = Problem(None, hint, str(exc.message))
            print(json.dumps({"ok": False, "status": "invalid", "problems": [problem_data(problem)]}, indent=2))
        raise


def complete_pipeline_files(incomplete: str) -> list[str]:
    """Shell completion (bash, zsh, fish): the pipeline files here and under ``pipelines/`` that start so."""
    from pathlib import Path

    found = sorted({*Path.cwd().glob("*.yaml"), *Path.cwd().glob("pipelines/*.yaml")})
    names = [str(p.relative_to(Path.cwd())) for p in found if p.name != "goatclaw.yaml"]
    return [n for n in names if n.startswith(incomplete)]


def complete_run_ids(incomplete: str) -> list[str]:
    """Shell completion: the latest runs' ids (and ``last``) in the project's store that start so."""
    try:
        from goatclaw.api import load_project_for, past_runs

        ids = [r["id"] for r in past_runs(load_project_for(None).store_path, None, limit=50)] + ["last"]
    except Exception:  # a missing, locked or foreign store: nothing to offer, never an error in the shell
        ids = ["last"]
    return [i for i in ids if i.startswith(incomplete)]
