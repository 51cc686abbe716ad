"""Commands over semantic memory: ``memory search|list|forget|stats|consolidate|patterns|reembed|graph``, ``why``.

Registered on the app by importing this module (``goatclaw.cli.app`` does). Each command
parses, calls :mod:`goatclaw.memory`, and prints through the console it is given; the
memory package (sqlite-vec, the embedder) is imported only when a command runs.
"""


import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import JsonOption, StoreOption, _open_store, _out, app, handles_errors
from goatclaw.cli.text import shown

__all__ = ["memory_app"]

memory_app = typer.Typer(help="Semantic memory: past runs, failures and their fixes, searched by meaning.",
                         no_args_is_help=True)
app.add_typer(memory_app, name="memory")

KindOption = Annotated[str | None, typer.Option("--kind", callback=options.memory_kind,
                                                help="Only this kind: run, output, failure, fix, note.")]


def _settings() -> Any:
    from goatclaw.api import load_project_for
    from goatclaw.memory.learn import MemorySettings

    return MemorySettings.from_data(load_project_for(None).data.get("memory"))


@contextmanager
def _memory(store: Path | None) -> Iterator[Any]:
    from goatclaw.memory.store import MemoryStore

    with _open_store(store) as db:
        yield MemoryStore(db, _settings().embedder)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _print_memories(rows: list[Any], *, scores: bool = False) -> None:
    from rich.text import Text

    console = _out()
    if not rows:
        console.print("no memories")
        return
    for m in rows:
        head = f"[bold]{m.id:>5}[/bold] {m.kind:<7}"
        if scores:
            head += f" {m.score:5.3f}"
        seen = f" ×{m.count}" if m.count > 1 else ""
        where = " ".join(f"{k}={m.metadata[k]}" for k in ("pipeline", "task") if m.metadata.get(k))
        console.print(Text.assemble(Text.from_markup(head), f" {_when(m.last_seen)}{seen}  ", (shown(where), "dim")))
        console.print(f"       {shown(m.text, lines=3)}", markup=False)


@memory_app.command("search")
@handles_errors
def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: Annotated[int, typer.Option("-k", min=1, max=options.MAX_ID, help="How many results.")] = 10,
    kind: KindOption = None,
    min_score: Annotated[float | None, typer.Option("--min-score", min=0.0, max=1.0, callback=options.finite,
                                                    help="The lowest similarity (0..1).")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The memories most similar in meaning to QUERY, best first."""
    with _memory(store) as mem:
        hits = mem.search(query, k=k, kind=kind, min_score=min_score)
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, default=str))
    else:
        _print_memories(hits, scores=True)


@memory_app.command("list")
@handles_errors
def memory_list(
    kind: KindOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=options.MAX_ID, help="How many.")] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The most recently seen memories."""
    with _memory(store) as mem:
        rows = mem.list(kind=kind, limit=limit)
    if as_json:
        print(json.dumps([m.to_dict() for m in rows], indent=2, default=str))
    else:
        _print_memories(rows)


@memory_app.command("forget")
@handles_errors
def memory_forget(
    memory_id: Annotated[int | None, typer.Argument(min=1, max=options.MAX_ID, help="The memory's id.")] = None,
    kind: KindOption = None,
    store: StoreOption = None,
) -> None:
    """Forget one memory (by id) or every memory of a kind."""
    with _memory(store) as mem:
        n = mem.forget(memory_id, kind=kind)
    _out().print(f"forgot {n} memor{'y' if n == 1 else 'ies'}")


@memory_app.command("stats")
@handles_errors
def memory_stats(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """How many memories of each kind, the embedder and its dimension."""
    with _memory(store) as mem:
        data = mem.stats()
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    console = _out()
    console.print(f"store     {data['store']}", markup=False)
    console.print(f"embedder  {data['embedder'] or '(none yet)'}" + (f" ({data['dim']} dims)" if data["dim"] else ""),
                  markup=False)
    console.print(f"memories  {data['memories']} (seen {data['seen'] or 0} times)  "
                  f"first {_when(data['first'])}, last {_when(data['last'])}", markup=False)
    for kind, row in data["kinds"].items():
        console.print(f"  {kind:<8}{row['memories']:>7}  seen {row['seen']}", markup=False)


@memory_app.command("consolidate")
@handles_errors
def memory_consolidate(
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, callback=options.finite,
                                             help="Similarity at which two memories are one.")] = 0.95,
    max_memories: Annotated[int | None, typer.Option("--max", min=1, max=options.MAX_ID, help="Keep at most this many "
                                                     "(default: memory.max_memories).")] = None,
    store: StoreOption = None,
) -> None:
    """Merge near-duplicate memories (with a count) and drop the least valuable over the maximum."""
    with _memory(store) as mem:
        result = mem.consolidate(threshold=threshold, max_memories=max_memories or _settings().max_memories)
    _out().print(f"merged {result['merged']}, dropped {result['dropped']}, kept {result['kept']}")


@memory_app.command("patterns")
@handles_errors
def memory_patterns(
    kind: Annotated[str, typer.Option("--kind", "-k", callback=options.memory_kind,
                                      help="failure, fix, run, output or note.")] = "failure",
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, callback=options.finite,
                                             help="Similarity at which two memories are the same pattern.")] = 0.75,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=options.MAX_ID, help="How many patterns.")] = 20,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recurring failures (or fixes, notes …) grouped by meaning, with counts and first/last seen."""
    with _memory(store) as mem:
        found = mem.patterns(kind=kind, threshold=threshold, limit=limit)
    if as_json:
        print(json.dumps([p.to_dict() for p in found], indent=2, default=str))
        return
    console = _out()
    if not found:
        console.print(f"no {kind} memories yet", markup=False)
        return
    for p in found:
        fixed = f", fixed {p.fixed}x" if p.fixed else ""
        console.print(f"×{p.count:<4} {shown(p.example)}", markup=False)
        console.print(f"      {p.memories} memories{fixed}; first {_when(p.first_seen)}, last {_when(p.last_seen)}"
                      + (f"; tasks {', '.join(p.tasks[:5])}" if p.tasks else "")
                      + (f"; {', '.join(p.error_classes)}" if p.error_classes else ""), markup=False)


@memory_app.command("reembed")
@handles_errors
def memory_reembed(store: StoreOption = None) -> None:
    """Re-embed every memory with the configured embedder (after changing memory.embedder)."""
    with _memory(store) as mem:
        n = mem.reembed(_settings().embedder)
    _out().print(f"re-embedded {n} memories with {_settings().embedder}")


@app.command("why")
@handles_errors
def why(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.")] = "last",
    task: Annotated[str | None, typer.Argument(help="One task (default: every failed task).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=options.MAX_ID, help="How many similar past failures.")] = 3,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Explain a run's failures with the most similar past failures and what fixed them."""
    from goatclaw.memory.learn import explain

    settings = _settings()
    with _open_store(store) as db:
        path = db.path
    run_id, found = explain(path, run, task, k=k, min_score=settings.similarity_threshold,
                            embedder=settings.embedder)
    if as_json:
        print(json.dumps({"run": run_id, "tasks": [e.to_dict() for e in found]}, indent=2, default=str))
        return
    _print_explanations(run_id, found)


def _print_explanations(run_id: str, found: list[Any]) -> None:
    from rich.text import Text

    console = _out()
    if not found:
        console.print(f"run {run_id} has no failed task")
    for e in found:
        message = str(e.error or "")
        if e.error_class and message.startswith(f"{e.error_class}: "):  # the class is in the parentheses already
            message = message[len(e.error_class) + 2:]
        console.print(Text.assemble((f"✗ {shown(e.task)}", "bold red"), f" ({e.error_class}): {shown(message)}"),
                      highlight=False)
        if not e.similar:
            console.print("  nothing like it was seen before")
        for s in e.similar:
            seen = f"seen {s['count']}×, last {_when(s['last_seen'])}"
            console.print(f"  {s['score']:.2f} like: {shown(s['text'])}  ({seen})", markup=False)
            for f in s["fixes"]:
                console.print(f"       fixed by: {shown(f['metadata'].get('how') or f['text'])} "
                              f"(run {f['metadata'].get('run')})", markup=False)
            if not s["fixes"]:
                console.print("       no fix recorded", markup=False)


def print_seen_before(store_path: str | Path, run_id: str, console: Any, *, k: int = 2) -> None:
    """Under a failed run: the most similar past failures and what fixed them.

    Quietly nothing when memory is off, the memory extra is not installed, or no failure
    was remembered before (checked in SQL, before any embedder is loaded).
    """
    from goatclaw.errors import GoatclawError
    from goatclaw.store import Store

    try:
        settings = _settings()
        if not settings.enabled:
            return
        with Store.open(store_path) as db:
            known = db.db.execute("SELECT COUNT(*) FROM memories WHERE kind = 'failure'").fetchone()[0]
        if not known:
            return
        from goatclaw.memory.learn import explain

        _, found = explain(store_path, run_id, k=k, min_score=settings.similarity_threshold,
                           embedder=settings.embedder)
    except (GoatclawError, ImportError):
        return
    for e in found:
        for s in e.similar:
            fixes = "; ".join(shown(f["metadata"].get("how") or f["text"]) for f in s["fixes"]) or "no fix recorded"
            console.print(f"  seen before ({s['score']:.2f}, {s['count']}×, last {_when(s['last_seen'])}) "
                          f"{e.task}: {shown(s['text'])}", markup=False, highlight=False)
            console.print(f"      what fixed it: {fixes}", markup=False, highlight=False)
    if any(e.similar for e in found):
        console.print(f"  (goatclaw why {run_id} explains more)", markup=False, highlight=False)


@memory_app.command("graph")
@handles_errors
def memory_graph(
    fmt: Annotated[str, typer.Option("--format", "-f", callback=options.one_of("mermaid", "graphml", "json"),
                                     help="mermaid, graphml or json.")] = "mermaid",
    store: StoreOption = None,
) -> None:
    """The knowledge graph: pipelines, tasks, plugins, error classes and fixes, with how they relate."""
    from goatclaw.cli.terminal import printable
    from goatclaw.graph import knowledge_graph, render_knowledge
    from goatclaw.memory.knowledge import graph_data

    with _open_store(store) as db:
        entities, relations = graph_data(db.db)
    print(printable(render_knowledge(knowledge_graph(entities, relations), fmt)), end="")
