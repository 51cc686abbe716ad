"""``goatclaw test [PATH...]``: run pipeline tests (``*.test.yaml``) and report like a test runner.

Registered on the app by importing this module. Exit codes: 0 every case passed, 1 a
case failed (or none was found), 2 a test file (or its pipeline) is invalid.
"""


import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from goatclaw.cli.app import _err, _out, app, handles_errors
from goatclaw.cli.text import shown

__all__ = ["test"]


@app.command()
@handles_errors
def test(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Test files or folders searched for *.test.yaml (default: the current folder).")] = None,
    case: Annotated[list[str] | None, typer.Option("--case", "-k", help="Run only cases with this name.")] = None,
    report: Annotated[list[str] | None, typer.Option(
        "--report", metavar="junit:PATH", help="Also write a JUnit report of the test cases.")] = None,
) -> None:
    """Run pipeline tests: each case runs its pipeline with vars, stubs or a cassette and checks what it expects."""
    from goatclaw.errors import GoatclawError, SpecError
    from goatclaw.testing import discover, load_tests

    targets = _junit_targets(report)
    out = _out()
    started = time.perf_counter()
    results: list[Any] = []
    invalid = 0
    try:
        files = discover(paths or [])
    except GoatclawError as exc:
        raise typer.BadParameter(exc.message, param_hint="PATHS") from None
    for file in files:
        try:
            cases = [c for c in load_tests(file) if not case or c.name in case]
        except SpecError as exc:
            invalid += 1
            out.print(Text(f"E {file}: invalid test file", style="bold red"), soft_wrap=True)
            for p in exc.problems:
                out.print(Text(f"    {p}", style="red"), soft_wrap=True)
            continue
        for c in cases:
            result = c.run()
            results.append(result)
            _print_case(result, out)
    elapsed = time.perf_counter() - started
    _summary(results, invalid, len(files), elapsed, out)
    for path in targets:
        _write_junit(results, path, elapsed)
        _err().print(f"report: {path}", highlight=False, soft_wrap=True)
    if invalid:
        raise typer.Exit(2)
    if not results or any(not r.passed for r in results):
        raise typer.Exit(1)


def _junit_targets(specs: list[str] | None) -> list[Path]:
    out = []
    for spec in specs or []:
        fmt, sep, path = spec.partition(":")
        if fmt != "junit" or not sep or not path:
            raise typer.BadParameter(f"expected junit:PATH, got '{spec}'", param_hint="--report")
        out.append(Path(path))
    return out


def _print_case(result: Any, out: Any) -> None:
    ms = f"{result.duration * 1000:.0f}ms"
    if result.passed:
        out.print(Text.assemble(("✓ ", "green"), result.name, (f"  {ms}", "dim")), soft_wrap=True)
        return
    out.print(Text.assemble(("✗ ", "bold red"), (result.name, "bold"), (f"  {ms}", "dim")), soft_wrap=True)
    for check in result.failures:
        for i, line in enumerate(str(check).splitlines()):
            out.print(Text(f"    {shown(line, width=500)}", style="red" if i == 0 else ""), soft_wrap=True)


def _summary(results: list[Any], invalid: int, files: int, elapsed: float, out: Any) -> None:
    passed = sum(1 for r in results if r.passed)
    failed = len(results) - passed
    if not results and not invalid:
        out.print(Text("no pipeline tests found (files named *.test.yaml)", style="yellow"))
        return
    parts = [f"{passed} passed"] + ([f"{failed} failed"] if failed else [])
    parts += [f"{invalid} invalid file{'s' if invalid != 1 else ''}"] if invalid else []
    style = "bold red" if failed or invalid else "bold green"
    out.print(Text(f"{', '.join(parts)} in {elapsed:.2f}s ({files} file{'s' if files != 1 else ''})", style=style))


def _write_junit(results: list[Any], path: Path, elapsed: float) -> None:
    """The test cases as JUnit XML: one testsuite per test file."""
    from goatclaw.errors import GoatclawError
    from goatclaw.reports import xml_text

    suites = ET.Element("testsuites", name="goatclaw test", tests=str(len(results)),
                        failures=str(sum(1 for r in results if not r.passed)), errors="0", time=f"{elapsed:.3f}")
    by_file: dict[str, list[Any]] = {}
    for r in results:
        by_file.setdefault(str(r.case.file), []).append(r)
    for file, rs in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=file, tests=str(len(rs)),
                              failures=str(sum(1 for r in rs if not r.passed)), errors="0", skipped="0",
                              time=f"{sum(r.duration for r in rs):.3f}")
        for r in rs:
            tc = ET.SubElement(suite, "testcase", name=xml_text(r.case.name), classname=file, time=f"{r.duration:.3f}")
            if not r.passed:
                failure = ET.SubElement(tc, "failure", message=xml_text(r.failures[0].message), type="assertion")
                failure.text = xml_text("\n".join(str(f) for f in r.failures))
    ET.indent(suites)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n",
                        encoding="utf-8")
    except OSError as exc:
        raise GoatclawError(f"cannot write the junit report to {path}: {exc.strerror or exc}") from None
