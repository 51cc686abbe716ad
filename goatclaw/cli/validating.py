"""``goatclaw validate``'s work, without typer: the command and the start-up shortcut share it.

``goatclaw validate FILE…`` with no option is answered by :func:`shortcut` before typer is
imported (typer, its click and building the command cost about a sixth of validate's start-up):
the same files checked, the same lines printed (cli/lines.py), the same exit code, and the
log settings read from ``GOATCLAW_LOG`` as the app's callback reads them. Anything else
(an option, no file, ``--help``, a log setting that is not valid) goes
through typer as before, so its parsing and its messages stay typer's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goatclaw.cli.lines import write_line

__all__ = ["shortcut", "validate_files"]

_TEST_SUFFIXES = (".test.yaml", ".test.yml")


def validate_files(files: Sequence[Path], fmt: str = "text", fail_on: str = "error") -> int:
    """Check each file (``*.test.yaml``: as a pipeline test); print ``✓ file`` or the problems; the exit code.

    ``fmt``: ``text`` (problems on stderr), ``github`` (Actions annotations on stdout) or
    ``json`` (one document on stdout). ``fail_on``: ``error``, or ``warn`` (warnings fail too).
    """
    import goatclaw
    from goatclaw.cli.problems import print_problems

    failing = ("error", "warn") if fail_on == "warn" else ("error",)
    all_problems = []
    for file in files:
        problems = _test_file_problems(file) if file.name.endswith(_TEST_SUFFIXES) else goatclaw.check(file)[1]
        all_problems += problems
        if fmt == "text" and not [p for p in problems if p.severity in failing]:
            write_line(sys.stderr, ("✓", "green"), (f" {file}", None))
    if fmt == "json":
        from goatclaw.cli.options import problem_data

        print(json.dumps([problem_data(p) for p in all_problems], indent=2))
    else:
        print_problems(all_problems, sys.stdout if fmt == "github" else sys.stderr, fmt=fmt)
    return 2 if any(p.severity in failing for p in all_problems) else 0


def _test_file_problems(file: Path) -> list[Any]:
    """A pipeline test file checked as one: its schema, its pipeline and the tasks it names."""
    from goatclaw.errors import SpecError
    from goatclaw.testing import load_tests

    try:
        load_tests(file)
    except SpecError as exc:
        return list(exc.problems)
    return []


def shortcut(argv: Sequence[str]) -> int | None:
    """``validate FILE…`` (pipeline files, no option) answered without typer: its exit code; else ``None``."""
    if len(argv) < 2 or argv[0] != "validate":
        return None
    files = argv[1:]
    if any(not f or f.startswith("-") for f in files):
        return None
    from goatclaw import logconfig
    from goatclaw.errors import GoatclawError

    try:
        logconfig.configure(None, None, "text")  # what the app's callback does with no log option
    except GoatclawError:  # a GOATCLAW_LOG typer should refuse, as a usage error
        return None
    return validate_files([Path(f) for f in files])
