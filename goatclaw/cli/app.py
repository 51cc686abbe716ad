"""The commands: a thin shell that parses, calls the Python API, renders and returns a code.

Exit codes: 0 success, 1 a task failed (or another runtime error), 2 the pipeline or
project file is invalid (or the command line is), 3 the run was blocked by its threat
score, 4 the run is waiting for an approval (``goatclaw approve``; nothing is left running),
130 cancelled (143 by SIGTERM, 129 by SIGHUP).
"""


import functools
import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from goatclaw import __version__
from goatclaw.cli import options
from goatclaw.cli.applying import in_ci
from goatclaw.cli.lines import escape
from goatclaw.cli.options import MAX_ID

if TYPE_CHECKING:  # rich is imported by the consoles, when a command prints with one (validate does not)
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="goatclaw",
    help="Declarative YAML pipelines for LLM and agent workflows.",
    no_args_is_help=True,
    add_completion=True,  # typer's completion for bash, zsh and fish: --install-completion, --show-completion
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=options.Commands,  # a refused command line, at any depth: one line and exit 2
)
runs_app = typer.Typer(help="Inspect stored runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


class Output(str, Enum):
    """How ``apply`` shows a run."""

    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


class PlanFormat(str, Enum):
    """How ``plan`` prints the graph."""

    text = "text"
    mermaid = "mermaid"
    dot = "dot"
    json = "json"


class ProblemFormat(str, Enum):
    """How ``validate`` prints problems."""

    text = "text"
    github = "github"
    json = "json"


class FailOn(str, Enum):
    """What fails ``validate`` and ``apply``: errors only, or warnings too."""

    error = "error"
    warn = "warn"


def _out() -> "Console":
    from goatclaw.cli.terminal import SafeConsole

    return SafeConsole(highlight=False, soft_wrap=False)


def _err() -> "Console":
    from goatclaw.cli.terminal import SafeConsole

    return SafeConsole(stderr=True, highlight=False)


def _plain() -> "Console":
    """The console of plain output (pipes, logs, CI): no colour, lines as long as they are."""
    from goatclaw.cli.terminal import SafeConsole

    return SafeConsole(highlight=False, no_color=True, soft_wrap=True)


def handles_errors(fn: F) -> F:
    """Turn goatclaw's errors into a message and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from goatclaw.cli.problems import print_problems
        from goatclaw.errors import GoatclawError, SpecError

        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            print_problems(exc.problems, _err())
            raise typer.Exit(exc.exit_code) from None
        except GoatclawError as exc:
            _err().print(f"[red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or a stop signal at the run border (cli/border.py)
            _err().print("[magenta]cancelled[/]", markup=True)
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None
        except ImportError as exc:  # an optional part (a pip extra) that is not installed: say which, once
            from goatclaw.extras import missing_message

            message = missing_message(exc)
            if message is None:
                raise
            _err().print(f"[red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as exc:  # the machine's refusal (a store missing a table, read-only, a full disk), located
            from goatclaw.cli.border import store_failure

            message = store_failure(exc, _store_hint(kwargs))
            if message is None:
                raise
            _err().print(f"[red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _store_hint(params: dict[str, Any]) -> Path | None:
    """The store a command was using, found as :func:`_open_store` and the API find it (for error messages)."""
    if params.get("store") is not None:
        return Path(params["store"])
    try:
        from goatclaw.api import load_project_for

        file = params.get("file")
        return Path(os.environ.get("GOATCLAW_STORE") or load_project_for(file).store_path)
    except Exception:  # the message is about the first error, not about finding the project again
        return None


def _version(value: bool) -> None:
    if value:
        print(f"goatclaw {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", metavar="LEVEL", help="goatclaw's own logs from this level: debug, info, warning, error "
        "(default: $GOATCLAW_LOG; none shown but Python's warnings).")] = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", metavar="PATH",
                                                  help="Write goatclaw's own logs here (default: stderr).")] = None,
    log_format: Annotated[str, typer.Option("--log-format", metavar="FORMAT",
                                            help="text, or json: one JSON object a line, with run and task.")] = "text",
) -> None:
    """Declarative YAML pipelines for LLM and agent workflows."""
    from goatclaw import logconfig
    from goatclaw.errors import GoatclawError

    try:
        logconfig.configure(log_level, log_file, log_format)
    except GoatclawError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
@handles_errors
def apply(
    file: Annotated[Path, typer.Argument(help="The pipeline file.", autocompletion=options.complete_pipeline_files)],
    var: Annotated[list[str] | None, typer.Option(
        "--var", "-v", callback=options.var_pairs, help="Set a variable the pipeline declares: key=value (YAML value).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1, max=MAX_ID,
                                                    help="Tasks in flight.")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this task (and what it needs).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and plan, run nothing.")] = False,
    output: Annotated[Output, typer.Option("--output", "-o", help="rich, plain or json.")] = Output.auto,
    store: Annotated[Path | None, typer.Option("--store", help="The store file (default from goatclaw.yaml).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the last unfinished run of this pipeline; finished tasks do not run again.")
    ] = False,
    resume_run: Annotated[str | None, typer.Option(
        "--run", metavar="RUN", help="With --resume: the run to continue (an id, a unique prefix, or 'last').")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the pipeline file changed.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every task; reuse no cached output.")] = False,
    logs: Annotated[bool, typer.Option("--logs", help="Show each task's log lines (its plugin's logging, a shell "
                                       "task's stderr) as they come; `goatclaw runs logs RUN` shows them later.")
                    ] = False,
    llm: Annotated[str | None, typer.Option(
        "--llm", metavar="MODE", callback=options.llm_mode,
        help="LLM calls: live, record (write the pipeline's cassette) or replay (answer "
        "only from it).")] = None,
    report: Annotated[list[str] | None, typer.Option(
        "--report", metavar="FORMAT:PATH", help="Write a report of the run: junit:PATH, json:PATH or markdown:PATH "
        "(appends; fits $GITHUB_STEP_SUMMARY). Repeatable.")] = None,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="error, or warn: warnings fail too.")] = FailOn.error,
    max_cost: Annotated[float | None, typer.Option(
        "--max-cost", metavar="USD", min=0, callback=options.finite,
        help="Fail the run if its LLM calls would cost more than this.")] = None,
    executor: Annotated[str | None, typer.Option(
        "--executor", metavar="NAME", callback=options.executor_name,
        help="Where task bodies run: local, or dask (default: executor: in "
        "goatclaw.yaml, else local).")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", metavar="URL", help="With --executor dask: the Dask scheduler (tcp://host:8786); without it a "
        "local cluster runs for the run.")] = None,
) -> None:
    """Check and run a pipeline, recording the run in the store."""
    import goatclaw
    from goatclaw.api import parse_var
    from goatclaw.cli import border, ci
    from goatclaw.cli.approve import terminal_approver

    targets = ci.report_targets(report)
    mode = _output_mode(output)
    with options.json_problems(mode == "json"):  # `--output json | jq` gets a document even for an invalid file
        pipeline = ci.load_checked(file, fail_on, llm)
        variables = dict(parse_var(v) for v in var or [])
        options.check_against(pipeline, variables, only or ())
    if dry_run:
        plan = goatclaw.plan(pipeline)
        if mode == "json":
            from goatclaw.graph import plan_data

            print(json.dumps(plan_data(plan), indent=2))
        else:
            from goatclaw.cli.render import print_plan

            print_plan(plan, _out())
        return
    bus = goatclaw.Bus()
    approver = terminal_approver()  # approve: in a task: asked on a terminal, else refused
    run = functools.partial(goatclaw.arun, pipeline, vars=variables, concurrency=concurrency, only=only or (),
                            store=store if store is not None else True, bus=bus, force=force, cache=not no_cache,
                            resume=resume_run or resume, llm=llm, max_cost=max_cost,
                            executor=executor, executor_address=address, approver=approver, trigger="cli")
    if mode == "rich":
        from goatclaw.cli.render import LiveView, print_result

        console = _out()
        with LiveView(bus, console, logs=logs) as view:
            if approver is not None:
                approver.live = view.live  # stopped while asking
            result = border.run(run())
        print_result(result, console)
    elif mode == "plain":  # into a pipe or a log: without rich (cli/plain.py), unless a terminal takes its styles
        from goatclaw.cli.plain import PlainView, plain_stream, write_result

        PlainView(bus, timestamps=_in_ci(), footer=False, logs=logs)  # the result's lines end it
        result = border.run(run())
        if plain_stream(sys.stdout):
            write_result(result, sys.stdout)
        else:
            from goatclaw.cli.render import print_result

            print_result(result, _plain())
    else:
        result = border.run(run())
        from goatclaw.api import redactor_for
        from goatclaw.jsontext import dumps_pretty

        print(redactor_for(pipeline).mask(dumps_pretty(result.to_dict())))
    if mode != "json" and not result.ok and result.store_path is not None:  # has memory seen this before?
        from goatclaw.cli.memory import print_seen_before

        print_seen_before(result.store_path, result.run_id,
                          _out() if mode == "rich" else _plain())
    code = ci.finish(result, targets, fail_on=fail_on, max_cost=max_cost, warnings_shown=mode != "json")
    if code:
        raise typer.Exit(code)


def _in_ci() -> bool:
    return in_ci()  # (the typer-free `apply` asks the same)


def _output_mode(output: Output) -> str:
    if _in_ci() and output is not Output.json:  # CI logs: never a live view, whatever was asked
        return "plain"
    if output is not Output.auto:
        return output.value
    if not sys.stdout.isatty():
        return "plain"
    return "rich"


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Pipeline files to check.")],
    fmt: Annotated[ProblemFormat, typer.Option("--format", "-f", help="text, github or json.")] = ProblemFormat.text,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="error, or warn: warnings fail too.")] = FailOn.error,
) -> None:
    """Check pipeline files (and *.test.yaml pipeline tests) without running anything; problems at file:line:col."""
    from goatclaw.cli.validating import validate_files  # also what `validate FILE…` runs without typer (cli/__init__)

    code = validate_files(files, fmt.value, fail_on.value)
    if code:
        raise typer.Exit(code)


@app.command()
@handles_errors
def plan(
    file: Annotated[Path, typer.Argument(help="The pipeline file.")],
    fmt: Annotated[PlanFormat, typer.Option("--format", "-f", help="text, mermaid, dot or json.")] = PlanFormat.text,
    cost: Annotated[bool, typer.Option("--cost", help="Estimate each llm task's cost (loads litellm's price map).")
                    ] = False,
    permissions: Annotated[bool, typer.Option(
        "--permissions", help="Show what each task will be allowed to do (text or json) instead of the graph.")
    ] = False,
) -> None:
    """Show the graph: which tasks run together, level by level."""
    import goatclaw
    from goatclaw.cli.render import print_permissions, print_plan
    from goatclaw.graph import render_plan

    pipeline = goatclaw.load(file)
    if permissions:
        from goatclaw.api import permissions_of

        rows = permissions_of(pipeline)
        if fmt is PlanFormat.json:
            print(json.dumps(rows, indent=2))
        else:
            print_permissions(rows, _out())
        return
    compiled = goatclaw.plan(pipeline)
    if fmt is PlanFormat.text:
        print_plan(compiled, _out())
    else:
        sys.stdout.write(render_plan(compiled, fmt.value))
    if cost:
        _print_costs(pipeline, file, fmt is PlanFormat.json)


def _print_costs(pipeline: Any, file: Path, as_json: bool) -> None:
    """The ``plan --cost`` estimate: one line per llm task and a total (to stderr beside json)."""
    from goatclaw.api import load_project_for
    from goatclaw.llm import estimate_costs
    from goatclaw.money import usd

    rows = estimate_costs(pipeline, load_project_for(file).model)
    out = _err() if as_json else _out()
    if not rows:
        out.print("cost: no llm tasks")
        return
    out.print("[bold]cost estimate[/] (prompt ≈ chars/4 + max_tokens, litellm's price map)", markup=True)
    total = 0.0
    unknown = 0
    for r in rows:
        if r["usd"] is None:
            unknown += 1
            price = "?"
        else:
            total += r["usd"]
            price = usd(r["usd"]) + (" per item" if r["per_item"] else "")
        out.print(f"  {r['task']:<20} {r['model'] or '-':<28} {r['prompt_tokens']:>6} + {r['max_tokens']:<6} "
                  f"tokens  {price}", highlight=False, soft_wrap=True)
    rest = f" (+ {unknown} not priced)" if unknown else ""
    out.print(f"  total ≈ {usd(total)}{rest}", highlight=False)


@app.command()
@handles_errors
def schema(
    name: Annotated[str, typer.Argument(help="pipeline, goatclaw (the project file) or test (*.test.yaml).")
                    ] = "pipeline",
    builtins: Annotated[bool, typer.Option("--builtins", help="pipeline: the with: keys of the built-in tasks "
                                           "only, not the installed plugins' (what the shipped file holds).")
                        ] = False,
) -> None:
    """Print a JSON Schema (for editors and other tools); the pipeline's completes each task's with: keys."""
    from goatclaw.spec.schema import SCHEMAS, schema_text

    if name not in SCHEMAS:
        raise typer.BadParameter(f"unknown schema '{name}' (use one of: {', '.join(SCHEMAS)})", param_hint="NAME")
    if name == "pipeline":  # with each task's with: keys: the built-ins', and the project's plugins' too
        from goatclaw.api import load_project_for, pipeline_schema, registry_for
        from goatclaw.registry import Registry

        registry = Registry(entry_points=False) if builtins else registry_for(load_project_for(None))
        sys.stdout.write(json.dumps(pipeline_schema(registry), indent=2, ensure_ascii=False) + "\n")
        return
    sys.stdout.write(schema_text(name))


#: The ``--store`` and ``--json`` options every store command takes.
StoreOption = Annotated[Path | None, typer.Option("--store", help="The store file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _store_file(store: Path | None) -> Path:
    """The store's path, found (and refused when missing) as :func:`_open_store` does."""
    with _open_store(store) as db:
        return Path(db.path)


def _open_store(store: Path | None) -> Any:
    from goatclaw.api import load_project_for
    from goatclaw.errors import StoreError
    from goatclaw.store import Store

    path = store or Path(os.environ.get("GOATCLAW_STORE") or load_project_for(None).store_path)
    if not path.exists():
        raise StoreError(f"no store at {path} (run a pipeline first, or pass --store)")
    return Store.open(path)


@runs_app.command("list")
@handles_errors
def runs_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=MAX_ID, help="How many runs.")] = 20,
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p", help="Only this pipeline.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="The store file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the latest runs."""
    from goatclaw.cli.render import print_runs

    with _open_store(store) as db:
        rows = db.runs(limit=limit, pipeline=pipeline)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    else:
        print_runs(rows, _out())


@runs_app.command("show")
@handles_errors
def runs_show(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.",
                                       autocompletion=options.complete_run_ids)] = "last",
    store: Annotated[Path | None, typer.Option("--store", help="The store file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one run: each task's status, output or error, and failed attempts."""
    from goatclaw.cli.render import print_cascades, print_critical_path, print_failed_logs, print_resources, print_run
    from goatclaw.errors import GoatclawError
    from goatclaw.history import llm_costs, resources
    from goatclaw.money import usd

    with _open_store(store) as db:
        row = db.run(run)
        if row is None:
            raise GoatclawError(f"no run '{run}' in {db.path}")
        tasks = db.tasks(row.id)
        attempts = db.attempts(row.id)
        failed = {t.task_id for t in tasks if t.status == "failed"}
        logs = [line for line in db.logs(row.id) if line["task"] in failed] if failed else []
        all_events = db.events(row.id)
        requests = db.approvals(row.id, waiting=False)
        events = [e for e in all_events
                  if e["topic"].startswith("breaker.") or e["topic"] in ("task.fallback", "task.fix", "task.escalate")
                  or (e["topic"] == "task.rule" and e["data"].get("severity") == "warn")]  # warn rules: shown
    llm = llm_costs(all_events)
    if as_json:
        from goatclaw.jsontext import dumps_pretty

        print(dumps_pretty({"run": row.__dict__, "tasks": [t.__dict__ for t in tasks], "attempts": attempts,
                            "incidents": events, "llm": llm, "resources": resources(all_events),
                            "failed_logs": logs, "approvals": requests}))
    else:
        print_run(row, tasks, attempts, _out(), events)
        from goatclaw.cli.decide import print_run_approvals

        print_run_approvals(row.id, requests, _out())
        print_failed_logs(tasks, logs, _out())
        print_critical_path(row.summary.get("critical_path") or [], row.duration, _out())
        print_resources(resources(all_events), _out())
        if llm["calls"]:
            downgrades = f", {llm['downgrades']} downgraded" if llm["downgrades"] else ""
            _out().print(f"  llm: {llm['calls']} calls, {llm['prompt_tokens']} + {llm['completion_tokens']} "
                         f"tokens, {usd(llm['cost_usd'])}{downgrades}", highlight=False)
            print_cascades(llm, _out())
        if any(t.status == "failed" for t in tasks):
            from goatclaw.cli.memory import print_seen_before

            print_seen_before(db.path, row.id, _out())


breakers_app = typer.Typer(help="Circuit breakers: list them, reset them.", no_args_is_help=True)
app.add_typer(breakers_app, name="breakers")


@breakers_app.command("list")
@handles_errors
def breakers_list(
    store: Annotated[Path | None, typer.Option("--store", help="The store file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every circuit breaker with its state and recent failures."""
    from goatclaw.cli.render import print_breakers

    with _open_store(store) as db:
        rows = db.breakers()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_breakers(rows, _out())


@breakers_app.command("reset")
@handles_errors
def breakers_reset(
    key: Annotated[str | None, typer.Argument(help="The breaker's key (omit with --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Reset every breaker.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help="The store file.")] = None,
) -> None:
    """Close a breaker (forget its failures), or all of them with --all."""
    from goatclaw.errors import GoatclawError

    if (key is None) == (not all_):
        raise GoatclawError("name one breaker key, or pass --all")
    with _open_store(store) as db:
        count = db.reset_breakers(None if all_ else key)
    if key is not None and count == 0:
        raise GoatclawError(f"no breaker '{key}'")
    _err().print(f"reset {count} breaker{'s' if count != 1 else ''}")


plugins_app = typer.Typer(help="Installed plugins: tasks, validators and hooks.")
app.add_typer(plugins_app, name="plugins")


class PluginKind(str, Enum):
    """Which plugins ``plugins`` lists."""

    task = "task"
    validator = "validator"
    hook = "hook"


def _registry() -> Any:
    """The registry the current project's pipelines use (its plugin allow/deny lists applied)."""
    import goatclaw
    from goatclaw.api import load_project_for

    project = load_project_for(None)
    return goatclaw.Registry(allow=project.plugins_allow, deny=project.plugins_deny)


@plugins_app.callback(invoke_without_command=True)
@handles_errors
def plugins_list(
    ctx: typer.Context,
    kind: Annotated[PluginKind | None, typer.Option("--kind", "-k", help="Only tasks, validators or hooks.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every task, validator and hook with its package, version, doc and arguments."""
    if ctx.invoked_subcommand is not None:
        return
    from goatclaw.cli.render import print_plugins

    infos = _registry().plugins(kind.value if kind else None)
    if as_json:
        print(json.dumps([i.to_dict() for i in infos], indent=2, default=str))
    else:
        print_plugins(infos, _out())


@plugins_app.command("show")
@handles_errors
def plugins_show(
    name: Annotated[str, typer.Argument(help="The plugin's name (as in uses:, use: or hooks:).")],
    kind: Annotated[PluginKind | None, typer.Option("--kind", "-k", help="When a name is in several groups.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one plugin: where it comes from, its arguments with types and defaults, what it declares, its doc."""
    from goatclaw.cli.render import print_plugin

    info = _registry().info(name, kind.value if kind else None)
    if as_json:
        print(json.dumps(info.to_dict(), indent=2, default=str))
    else:
        print_plugin(info, _out())


@app.command()
@handles_errors
def doctor(
    store: Annotated[Path | None, typer.Option("--store", help="The store to check.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which LLM providers are usable here (API keys, a local Ollama server) and the store's health."""
    from goatclaw.api import load_project_for
    from goatclaw.providers import doctor as diagnose

    project = load_project_for(None)
    path = store or Path(os.environ.get("GOATCLAW_STORE") or project.store_path)
    report = diagnose(project.root, path, model=project.model, fallbacks=project.fallbacks)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        if not report["store"]["ok"]:  # the same exit code as the text form
            raise typer.Exit(1)
        return
    out = _out()
    out.print("[bold]model[/]", markup=True)
    out.print(f"  {report['model']['message']}", markup=False, highlight=False, soft_wrap=True)
    out.print("[bold]providers[/]", markup=True)
    for p in report["providers"]:
        mark = "[green]✓[/]" if p["usable"] else "[dim]✗[/]"
        how = escape(p["how"]) if p["usable"] else f"[dim]needs {escape(str(p['needs']))}[/]"
        out.print(f"  {mark} {p['provider']:<12} {how}", markup=True, soft_wrap=True)
    st = report["store"]
    mark = "[green]✓[/]" if st["ok"] else "[red]✗[/]"
    extra = "".join(f", {k} {st[k]}" for k in ("schema_version", "runs", "size_bytes") if st.get(k) is not None)
    out.print(f"[bold]store[/]\n  {mark} {escape(str(st['path']))}: {escape(str(st['message']))}{escape(extra)}",
              markup=True, soft_wrap=True)
    if not st["ok"]:
        raise typer.Exit(1)


# the commands over stored runs live in their own module; importing it registers them
# (and those over semantic memory: memory …, why)
from goatclaw.cli import audit as _audit  # noqa: E402, F401  (audit show|verify)
from goatclaw.cli import cache as _cache  # noqa: E402, F401  (cache list|clear)
from goatclaw.cli import ci as _ci  # noqa: E402, F401  (runs report)
from goatclaw.cli import decide as _decide  # noqa: E402, F401  (approve, reject, approvals)
from goatclaw.cli import evals as _evals  # noqa: E402, F401  (runs fork|diff)
from goatclaw.cli import goal as _goal  # noqa: E402, F401  (run "GOAL": goatclaw/planner.py)
from goatclaw.cli import history as _history  # noqa: E402, F401
from goatclaw.cli import init as _init  # noqa: E402, F401  (init)
from goatclaw.cli import mcp as _mcp  # noqa: E402, F401  (mcp tools)
from goatclaw.cli import mcp_serve as _mcp_serve  # noqa: E402, F401  (mcp serve; the group: cli/mcp_group.py)
from goatclaw.cli import memory as _memory  # noqa: E402, F401
from goatclaw.cli import schedules as _schedules  # noqa: E402, F401  (schedules list)
from goatclaw.cli import serve as _serve  # noqa: E402, F401  (serve, users, tokens: goatclaw/server/)
from goatclaw.cli import shell as _shell  # noqa: E402, F401  (shell: the interactive prompt)
from goatclaw.cli import test as _test  # noqa: E402, F401  (test)
from goatclaw.cli import ui as _ui  # noqa: E402, F401  (ui: the web dashboard, goatclaw/server/ui/)
from goatclaw.cli import watch as _watch  # noqa: E402, F401  (watch)
