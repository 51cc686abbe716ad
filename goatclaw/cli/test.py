"""``goatclaw test [PATH...]``: run pipeline tests (``*.test.yaml``) and report like a test runner.

Registered on the app by importing this module. Exit codes: 0 every case passed, 1 a
case failed (or none was found), 2 a test file (or its pipeline) is invalid.
"""


import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Any

import typer

from goatclaw.cli import options
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
        "--report", metavar="FORMAT:PATH",
        help="Also write a report: junit:PATH, json:PATH (also a baseline) or markdown:PATH (appended).")] = None,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Compare each dataset's scores, cost and latency with this JSON report.")] = None,
    fail_on_regression: Annotated[bool, typer.Option(
        "--fail-on-regression", help="Exit 1 when a score dropped (or cost, latency rose) past the tolerance.")
    ] = False,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, max=1.0, callback=options.finite,
        help="The most a pass rate or mean score may drop (0.05: five points).")
    ] = 0.0,
    cost_tolerance: Annotated[float | None, typer.Option(
        "--cost-tolerance", min=0.0, callback=options.finite,
        help="The most cost may rise, as a fraction (0.2: 20%); unset: not compared.")
    ] = None,
    llm: Annotated[str | None, typer.Option(
        "--llm", callback=options.llm_mode,
        help="Override every case's LLM mode: live, record (write the cassette, judges' answers too) or replay.")
    ] = None,
    latency_tolerance: Annotated[float | None, typer.Option(
        "--latency-tolerance", min=0.0, callback=options.finite,
        help="The most p95 latency may rise, as a fraction; unset: not compared.")
    ] = None,
) -> None:
    """Run pipeline tests: each case runs its pipeline with vars, stubs or a cassette and checks what it expects."""
    from rich.text import Text

    from goatclaw.errors import GoatclawError, SpecError
    from goatclaw.testing import Tolerances, compare, discover, load_baseline, load_tests, summarise

    targets = _targets(report)
    if fail_on_regression and baseline is None:
        raise typer.BadParameter("--fail-on-regression needs --baseline FILE", param_hint="--fail-on-regression")
    try:
        base = load_baseline(baseline) if baseline is not None else None
    except GoatclawError as exc:
        raise typer.BadParameter(exc.message, param_hint="--baseline") from None
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
            cases = [c for c in load_tests(file) if not case or c.name in case or c.spec_name in case]
        except SpecError as exc:
            invalid += 1
            out.print(Text(f"E {file}: invalid test file", style="bold red"), soft_wrap=True)
            for p in exc.problems:
                out.print(Text(f"    {p}", style="red"), soft_wrap=True)
            continue
        for c in cases:
            result = c.with_llm(llm).run()
            results.append(result)
            _print_case(result, out)
    elapsed = time.perf_counter() - started
    summaries = summarise(results)
    _print_datasets(summaries, out)
    regressions = compare(summaries, base, Tolerances(tolerance, cost_tolerance, latency_tolerance)) \
        if base is not None else []
    _print_regressions(regressions, base is not None, out)
    _summary(results, invalid, len(files), elapsed, out)
    for fmt, path in targets:
        _write_report(fmt, path, results, summaries, regressions, elapsed)
        _err().print(f"report: {path}", highlight=False, soft_wrap=True)
    if invalid:
        raise typer.Exit(2)
    if not results or any(not r.passed for r in results):
        raise typer.Exit(1)
    if fail_on_regression and regressions:
        raise typer.Exit(1)


def _targets(specs: list[str] | None) -> list[tuple[str, Path]]:
    out = []
    for spec in specs or []:
        fmt, sep, path = spec.partition(":")
        if fmt not in ("junit", "json", "markdown") or not sep or not path:
            raise typer.BadParameter(f"expected junit:PATH, json:PATH or markdown:PATH, got '{spec}'",
                                     param_hint="--report")
        out.append((fmt, Path(path)))
    return out


def _write_report(fmt: str, path: Path, results: list[Any], summaries: list[Any], regressions: list[Any],
                  elapsed: float) -> None:
    from goatclaw.errors import GoatclawError
    from goatclaw.testing import render_report

    if fmt == "junit":
        _write_junit(results, path, elapsed)
        return
    text = render_report(summaries, fmt, results=results, regressions=regressions)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if fmt == "markdown" else "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise GoatclawError(f"cannot write the {fmt} report to {path}: {exc.strerror or exc}") from None


def _print_datasets(summaries: list[Any], out: Any) -> None:
    """The summary table of each dataset (a case run over many rows)."""
    from rich.table import Table
    from rich.text import Text

    for s in (s for s in summaries if s.cases > 1):
        lat = s.latency_ms
        out.print(Text.assemble((f"\n{s.name}", "bold"), f": {s.passed}/{s.cases} rows passed ({s.pass_rate:.0%}), "
                                f"${s.cost_usd:.4f}, {s.tokens} tokens, latency p50 {lat.get('p50', 0):.0f}ms "
                                f"p95 {lat.get('p95', 0):.0f}ms"), soft_wrap=True)
        table = Table(show_edge=False, pad_edge=False, box=None)
        table.add_column("assertion")
        table.add_column("pass rate", justify="right")
        table.add_column("mean score", justify="right")
        for label, a in s.assertions.items():
            style = "green" if a["passed"] == a["total"] else "red"
            table.add_row(Text(shown(label, width=80)), Text(f"{a['passed']}/{a['total']} ({a['rate']:.0%})",
                                                             style=style),
                          "" if a["score"] is None else f"{a['score']:.3f}")
        out.print(table)
        for w in s.worst:
            out.print(Text(f"  worst: {w['case']}: {w['failed']} failed: {shown(w['why'], width=200)}", style="red"),
                      soft_wrap=True)


def _print_regressions(regressions: list[Any], compared: bool, out: Any) -> None:
    from rich.text import Text

    if not compared:
        return
    if not regressions:
        out.print(Text("baseline: no regression", style="green"))
        return
    out.print(Text(f"baseline: {len(regressions)} regression{'s' if len(regressions) != 1 else ''}", style="bold red"))
    for r in regressions:
        out.print(Text(f"  {shown(str(r), width=300)}", style="red"), soft_wrap=True)


def _print_case(result: Any, out: Any) -> None:
    from rich.text import Text

    ms = f"{result.duration * 1000:.0f}ms"
    if result.passed:
        out.print(Text.assemble(("✓ ", "green"), result.name, (f"  {ms}", "dim")), soft_wrap=True)
        return
    out.print(Text.assemble(("✗ ", "bold red"), (result.name, "bold"), (f"  {ms}", "dim")), soft_wrap=True)
    for check in result.failures:
        for i, line in enumerate(str(check).splitlines()):
            out.print(Text(f"    {shown(line, width=500)}", style="red" if i == 0 else ""), soft_wrap=True)


def _summary(results: list[Any], invalid: int, files: int, elapsed: float, out: Any) -> None:
    from rich.text import Text

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
