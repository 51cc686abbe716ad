"""``goatclaw apply FILE [--store PATH]`` into a pipe or a log, without typer: the start-up shortcut.

Importing typer, its click and the app's commands, then building the command and parsing,
costs about 20 ms, a tenth of what a small ``apply`` may take. :func:`shortcut` answers the
plain form before any of it is imported: the file alone, or with ``--store PATH``, when the
run would be shown as plain lines (stdout is no terminal, or ``$CI`` is set). It does what
the typer command does with those options (cli/app.py ``apply``: the log settings of
``GOATCLAW_LOG``, the check and its warnings, the run, its lines and summary, the exit
code), and an error of goatclaw is reported by the command's own ``handles_errors``, so
the message and the code are the same. Anything else (another option, a terminal's live
view, ``--help``, a log setting typer should refuse) goes through typer as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RUN_EXIT_CODES", "exit_code", "in_ci", "shortcut"]

#: The exit code of a run that did not succeed, by its status (anything else: 1).
RUN_EXIT_CODES = {"cancelled": 130, "blocked": 3, "waiting": 4}


def exit_code(result: Any) -> int:
    """A run's exit code: 0 succeeded, 4 waiting for an approval, 3 blocked, 130 cancelled, 1 otherwise."""
    return 0 if result.ok else RUN_EXIT_CODES.get(result.status.value, 1)


def in_ci() -> bool:
    """Whether this runs in CI (``$CI`` says so): logs, never a live view, lines with timestamps."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _plain_output() -> bool:
    """Whether ``apply`` with ``--output auto`` shows the run as plain lines (cli/app.py ``_output_mode``)."""
    if in_ci():
        return True
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False  # let typer's path decide (and fail) as it always has


def _parse(argv: Sequence[str]) -> tuple[Path, Path | None] | None:
    """``apply FILE`` or ``apply FILE --store PATH`` (either order): the file and the store; else ``None``."""
    if not argv or argv[0] != "apply":
        return None
    rest = list(argv[1:])
    store: Path | None = None
    if "--store" in rest:
        at = rest.index("--store")
        if at + 1 >= len(rest):
            return None
        store = Path(rest[at + 1])
        if not rest[at + 1] or rest[at + 1].startswith("-"):
            return None
        del rest[at:at + 2]
    if len(rest) != 1 or not rest[0] or rest[0].startswith("-"):
        return None
    return Path(rest[0]), store


def shortcut(argv: Sequence[str]) -> int | None:
    """``apply FILE [--store PATH]`` into a pipe or a log, answered without typer: its exit code; else ``None``."""
    parsed = _parse(argv)
    if parsed is None or not _plain_output():
        return None
    from goatclaw import logconfig
    from goatclaw.errors import GoatclawError

    try:
        logconfig.configure(None, None, "text")  # what the app's callback does with no log option
    except GoatclawError:  # a GOATCLAW_LOG typer should refuse, as a usage error
        return None
    file, store = parsed
    try:
        return _apply(file, store)
    except (Exception, KeyboardInterrupt) as exc:  # said as the typer command says it: its own wrapper
        return _as_the_command_says(exc, file, store)


def _apply(file: Path, store: Path | None) -> int:
    """The typer command's body (cli/app.py ``apply``) for its defaults, shown as plain lines."""
    import goatclaw
    from goatclaw.cli import border
    from goatclaw.cli.approve import terminal_approver
    from goatclaw.cli.plain import PlainView, plain_stream, write_result

    pipeline = _load_checked(file)
    bus = goatclaw.Bus()
    approver = terminal_approver()
    PlainView(bus, timestamps=in_ci(), footer=False)
    result = border.run(goatclaw.arun(pipeline, vars={}, concurrency=None, only=(),
                                      store=store if store is not None else True, bus=bus, force=False, cache=True,
                                      resume=False, llm=None, max_cost=None, executor=None, executor_address=None,
                                      approver=approver, trigger="cli"))
    if plain_stream(sys.stdout):
        write_result(result, sys.stdout)
    else:
        from goatclaw.cli.app import _plain
        from goatclaw.cli.render import print_result

        print_result(result, _plain())
    if not result.ok and result.store_path is not None:  # has memory seen this before?
        from goatclaw.cli.app import _plain
        from goatclaw.cli.memory import print_seen_before

        print_seen_before(result.store_path, result.run_id, _plain())
    return exit_code(result)  # cli/ci.py finish() with no report, no --max-cost and --fail-on error


def _load_checked(file: Path) -> Any:
    """cli/ci.py ``load_checked`` with ``--fail-on error``: the pipeline, its warnings printed; invalid: SpecError."""
    import goatclaw
    from goatclaw.errors import SpecError

    pipeline, problems = goatclaw.check(file, llm=None)
    errors = [p for p in problems if p.severity == "error"]
    if errors or pipeline is None:
        raise SpecError(errors or problems)
    if problems:
        from goatclaw.cli.app import _err
        from goatclaw.cli.problems import print_problems

        print_problems(problems, _err())
    return pipeline


def _as_the_command_says(exc: BaseException, file: Path, store: Path | None) -> int:
    """``exc`` raised again inside the typer command's ``handles_errors``: its message printed, its exit code."""
    import typer

    from goatclaw.cli.app import handles_errors

    def again(**_: Any) -> None:
        raise exc

    try:
        handles_errors(again)(file=file, store=store)
    except typer.Exit as done:
        return int(done.exit_code)
    raise AssertionError("handles_errors returned") from exc  # pragma: no cover - it re-raises or exits
