"""``goatclaw watch FILE|DIR``: run a pipeline again on every change, each run shown like ``apply``.

Registered on the app by importing this module; the loop itself is :func:`goatclaw.watcher.watch`.
Exit codes: 0 stopped with Ctrl-C (or SIGTERM) while idle, 130 stopped while a run was in
flight (that run is recorded as cancelled), 2 the command line is invalid. An invalid
pipeline never ends the watch: its located problems are shown and the next save is awaited.
"""


import signal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import _in_ci, _out, app, handles_errors

__all__ = ["watch"]

_RUN_TOPICS = ("task.*", "run.*", "breaker.*", "hook.*", "threat.*", "ratelimit.*")


class WatchOutput(str, Enum):
    """How ``watch`` shows each run."""

    auto = "auto"
    rich = "rich"
    plain = "plain"


@app.command()
@handles_errors
def watch(
    target: Annotated[Path, typer.Argument(help="A pipeline file, or a folder whose *.yaml pipelines to watch.")],
    var: Annotated[list[str] | None, typer.Option("--var", "-v", callback=options.var_pairs,
                                                  help="Set a variable: key=value (YAML value).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1, max=options.MAX_ID,
                                                    help="Tasks in flight.")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this task (and what it needs).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="The store file (default from goatclaw.yaml).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every task every time; reuse no cached output.")
                        ] = False,
    llm: Annotated[str | None, typer.Option("--llm", metavar="MODE", callback=options.llm_mode,
                                            help="LLM calls: live, record or replay.")] = None,
    debounce: Annotated[str, typer.Option(
        "--debounce", metavar="DURATION", callback=options.duration,
        help="Quiet time that ends a batch of changes (500ms, 1s …).")] = "50ms",
    once_per_change: Annotated[bool, typer.Option(
        "--once-per-change", help="Let a run finish instead of cancelling it on a change; the changes made "
        "meanwhile give one more run after it.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Clear the terminal before each run.")] = False,
    poll: Annotated[bool, typer.Option(
        "--poll", help="Poll for changes instead of OS notifications (network and container mounts).")] = False,
    output: Annotated[WatchOutput, typer.Option("--output", "-o", help="rich or plain.")] = WatchOutput.auto,
) -> None:
    """Run a pipeline, then again whenever it, goatclaw.yaml or its tasks' inputs: files change; Ctrl-C stops."""
    from goatclaw.api import parse_var

    if not target.exists():
        raise typer.BadParameter(f"{target}: no such file or folder", param_hint="TARGET")
    quiet = options.seconds(debounce)
    run_options: dict[str, Any] = {
        "vars": dict(parse_var(v) for v in var or []), "concurrency": concurrency, "only": only or (),
        "store": store if store is not None else True, "cache": not no_cache, "llm": llm,
    }
    _check_file(target, run_options)
    mode = "plain" if _in_ci() or output is WatchOutput.plain else (
        "rich" if output is WatchOutput.rich or _out().is_terminal else "plain")
    import asyncio

    summary = asyncio.run(_session(target, run_options, quiet, once_per_change, poll, clear, mode))
    if summary.cancelled:
        raise typer.Exit(130)


def _check_file(target: Path, run_options: dict[str, Any]) -> None:
    """A watched file that is valid now must declare the ``--var`` names and have the ``--only`` tasks (exit 2).

    An invalid file is not refused here: the watch shows its problems and waits for a save.
    """
    import goatclaw

    if target.is_file():
        pipeline, _ = goatclaw.check(target)
        if pipeline is not None:
            options.check_against(pipeline, run_options["vars"], run_options["only"])


async def _session(target: Path, run_options: dict[str, Any], debounce: float, once_per_change: bool, poll: bool,
                   clear: bool, mode: str) -> Any:
    """The watch loop with its view; SIGINT and SIGTERM stop it (a second Ctrl-C interrupts at once)."""
    import asyncio

    import goatclaw
    from goatclaw.watcher import Watcher

    bus = goatclaw.Bus()
    view = _View(bus, mode, clear=clear)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C raises KeyboardInterrupt as usual

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        watcher = Watcher(target, bus=bus, debounce=debounce, once_per_change=once_per_change,
                          force_polling=True if poll else None, run_options=run_options)
        return await watcher.run(stop)
    finally:
        view.close()
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


class _View:
    """Each run rendered like ``apply`` (a live table on a terminal, plain lines otherwise) between watch lines."""

    def __init__(self, bus: Any, mode: str, *, clear: bool) -> None:
        from goatclaw.cli.render import PlainView
        from goatclaw.cli.terminal import SafeConsole

        self.mode = mode
        self.clear = clear
        self.console = _out() if mode == "rich" else SafeConsole(highlight=False, no_color=True, soft_wrap=True)
        self.live: Any = None  # the LiveView of the run in flight (rich)
        self.inner: Any = None  # its bus: run events are relayed to it
        if mode == "plain":
            PlainView(bus, timestamps=_in_ci(), footer=False)  # print_result writes each run's last line
        else:
            for pattern in _RUN_TOPICS:
                bus.subscribe(pattern, self._relay)
        for topic, handler in (("watch.ready", self._ready), ("watch.changed", self._changed),
                               ("watch.invalid", self._invalid), ("watch.run", self._run),
                               ("watch.finished", self._finished), ("watch.error", self._error),
                               ("watch.stopped", self._stopped)):
            bus.subscribe(topic, handler)

    def close(self) -> None:
        """Leave the live view if a run was still shown."""
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def _say(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style), soft_wrap=True)

    def _relay(self, ev: Any) -> None:
        if self.inner is not None:
            self.inner.publish(ev)

    def _ready(self, ev: Any) -> None:
        d = ev.data
        follows = ", ".join([*d["files"], *d["inputs"]])
        self._say(f"watching {', '.join(d['pipelines']) or 'no pipeline yet'} (follows {follows}; "
                  f"{len(d['folders'])} folder{'s' if len(d['folders']) != 1 else ''}); Ctrl-C stops", "dim")

    def _changed(self, ev: Any) -> None:
        self._say(f"change detected: {', '.join(ev.data['paths'])}", "bold cyan")

    def _invalid(self, ev: Any) -> None:
        self._say(f"✗ {ev.data['file']} is invalid; waiting for the next save", "bold red")
        for problem in ev.data["problems"]:
            self._say(f"  {problem}", "red")

    def _run(self, ev: Any) -> None:
        if self.clear:
            self.console.clear()  # does nothing when the output is not a terminal
        if ev.data["reasons"] == ["(start)"]:
            self._say(f"first run of {ev.data['file']}", "bold cyan")
        for warning in ev.data["warnings"]:
            self._say(f"  {warning}", "yellow")
        if self.mode == "rich":
            import goatclaw
            from goatclaw.cli.render import LiveView

            self.inner = goatclaw.Bus()
            self.live = LiveView(self.inner, self.console).__enter__()

    def _finished(self, ev: Any) -> None:
        from goatclaw.cli.render import print_result

        self.close()
        self.inner = None
        result = ev.data["result"]
        if result is None:
            self._say(f"■ run {ev.data['run_id']} cancelled", "magenta")
            return
        print_result(result, self.console)
        ran, cached = ev.data["ran"], ev.data["cached"]
        self._say(f"  ran: {', '.join(ran) or 'nothing'}; from cache: {', '.join(cached) or 'nothing'}", "dim")

    def _error(self, ev: Any) -> None:
        self.close()
        self._say(f"error: {ev.data['message']}; waiting for the next save", "red")

    def _stopped(self, ev: Any) -> None:
        cancelled = ev.data["cancelled"]
        self._say(f"stopped watching{f' (run {cancelled} cancelled)' if cancelled else ''}", "dim")
