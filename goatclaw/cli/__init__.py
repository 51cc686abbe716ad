"""The ``goatclaw`` command. :func:`main` is the one place that calls ``sys.exit``."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]


def _on_terminal() -> bool:
    """Whether a person is at this process's terminal (stdin and stdout), and not in CI."""
    from goatclaw.cli.applying import in_ci

    try:
        return sys.stdin.isatty() and sys.stdout.isatty() and not in_ci()
    except (AttributeError, ValueError):
        return False


def _record_help() -> Any:
    """``sys.stdout`` replaced by a :class:`~goatclaw.cli.helpcache.Recording` of it (restored by the caller)."""
    from goatclaw.cli.helpcache import Recording

    recording = Recording(sys.stdout)
    sys.stdout = recording  # type: ignore[assignment]
    return recording


def main(argv: list[str] | None = None, *, exit: bool = True) -> int:
    """Run the CLI with ``argv`` (default: the process arguments); return or exit with its code."""
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:  # answered without importing typer, rich, asyncio
        from goatclaw import __version__

        print(f"goatclaw {__version__}")
        if exit:
            sys.exit(0)
        return 0
    help_asked = (sys.argv[1:] if argv is None else argv) == ["--help"]
    if help_asked:  # the text typer printed last time, when neither the code nor the terminal changed
        from goatclaw.cli import helpcache

        text = helpcache.read()
        if text is not None:
            code = helpcache.show(text)
            if exit:
                sys.exit(code)
            return code
    if (sys.argv[1:] if argv is None else argv) == [] and _on_terminal():  # bare `goatclaw` at a terminal: the shell
        argv = ["shell"]
    from goatclaw.cli import applying, validating
    from goatclaw.cli.streams import guarded_output

    for stream in (sys.stdout, sys.stderr):  # a lone surrogate in an output is shown escaped, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    with guarded_output() as output:  # `goatclaw … | head -2`: the reader going away is not the command's failure
        recording = _record_help() if help_asked else None
        try:
            # `validate FILE…` (cli/validating.py) and `apply FILE [--store PATH]` into a pipe (cli/applying.py)
            # without typer; any other command line goes through the app
            args = sys.argv[1:] if argv is None else argv
            quick = validating.shortcut(args)
            if quick is None:
                quick = applying.shortcut(args)
            if quick is None:
                from goatclaw.cli.app import app
                from goatclaw.cli.options import only_command

                # typer builds the command that runs, alone
                app = only_command(app, sys.argv[1:] if argv is None else argv)
                app(args=argv, prog_name="goatclaw", standalone_mode=True)
            code = quick or 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except KeyboardInterrupt as exc:  # a stop signal (cli/border.py) carries its own code
            code = getattr(exc, "exit_code", 130)
        if recording is not None:
            sys.stdout = recording.stream
    code = output.exit_code(code)
    if recording is not None and code == 0 and recording.parts:
        from goatclaw.cli import helpcache

        helpcache.write(recording.text())
    if exit:
        sys.exit(code)
    return code
