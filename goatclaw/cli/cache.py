"""``goatclaw cache list|clear``: what the store keeps for reuse, task outputs and LLM answers.

Registered on the app by importing this module (``goatclaw.cli.app`` does). The rows come
from :meth:`goatclaw.store.Store.cache_entries` and go with :meth:`~goatclaw.store.Store.clear_caches`.
"""


import json
from datetime import datetime
from enum import Enum
from typing import Annotated

import typer

from goatclaw.cli import options
from goatclaw.cli.app import JsonOption, StoreOption, _err, _open_store, _out, app, handles_errors

__all__ = ["cache_app"]

cache_app = typer.Typer(help="The store's caches: task outputs and LLM answers (docs/llm.md, docs/runs.md).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


class Kind(str, Enum):
    """Which cache a command looks at."""

    all = "all"
    task = "task"
    llm = "llm"


KindOption = Annotated[Kind, typer.Option("--kind", help="task outputs, LLM answers, or both.")]


def _age(text: str) -> float:
    """``--older-than`` in seconds (checked where it was parsed: a bad value is a usage error, exit 2)."""
    return options.seconds(text)


@cache_app.command("list")
@handles_errors
def cache_list(
    kind: KindOption = Kind.all,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=options.MAX_ID,
                                       help="How many entries, newest first.")] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """List cached task outputs and LLM answers, newest first (kind, key, plugin or model, size, age)."""
    with _open_store(store) as db:
        rows = db.cache_entries(None if kind is Kind.all else kind.value, limit=limit)
    if as_json:
        _out().print_json(json.dumps(rows))
        return
    console = _out()
    if not rows:
        console.print("the cache is empty")
        return
    for row in rows:
        when = datetime.fromtimestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M")
        console.print(f"{row['kind']:<4} {row['key'][:16]}  {when}  {row['bytes']:>8,} B  {row['name']}",
                      markup=False, highlight=False)


@cache_app.command("clear")
@handles_errors
def cache_clear(
    kind: KindOption = Kind.all,
    older_than: Annotated[str | None, typer.Option("--older-than", callback=options.duration,
                                                   help="Only entries older than this (7d, 12h).")]
    = None,
    store: StoreOption = None,
) -> None:
    """Forget cached task outputs and/or LLM answers (all of them, or those older than --older-than)."""
    seconds = _age(older_than) if older_than is not None else None
    with _open_store(store) as db:
        counts = db.clear_caches(None if kind is Kind.all else kind.value, older_than=seconds)
    parts = [f"{counts[k]} {'task output' if k == 'task' else 'LLM answer'}{'s' if counts[k] != 1 else ''}"
             for k in ("task", "llm") if k in counts]
    _err().print(f"cleared {' and '.join(parts)}", markup=False, highlight=False)
