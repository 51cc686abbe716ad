"""``data`` and ``data.convert``: SQL and cleaning steps over CSV, JSON, NDJSON and Parquet files (DuckDB).

The one module that imports ``duckdb`` (the ``data`` extra), and only when a task runs.

All file access goes through the task's grants. DuckDB reads any path or URL named in
SQL (``read_csv('/etc/passwd')``, ``'https://…'``, ``ATTACH``, ``COPY … TO``), so each
task gets a fresh in-memory database locked down before the user's SQL runs: external
access off, only the granted files (their real paths, symlinks resolved by the grant
check) and the task's own temporary output file on ``allowed_paths``, no extension
installing or loading, the configuration locked. The user's ``query`` must be one
``SELECT`` (or ``WITH … SELECT``) statement: ``COPY`` into a read-only input is refused
even though the file is on the allowed list.

Each named file becomes a view (``files: {sales: data/sales.csv}`` → ``FROM sales``).
Results come back as rows (at most ``max_rows``, with the full ``row_count``) or are
written to a file under ``permissions.files.write`` (a temporary file beside it, then a
rename, so a reader never sees half a file).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hashlib
import math
import os
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goatclaw.plugin import READ_BACK, TaskContext, fail, in_thread, task

if TYPE_CHECKING:  # annotations only: duckdb is an extra, imported when a task runs
    import duckdb

__all__ = ["FORMATS", "convert", "data"]

#: File formats by name, and the suffixes that imply them.
FORMATS: Mapping[str, tuple[str, ...]] = {
    "csv": (".csv", ".tsv", ".txt"),
    "json": (".json",),
    "ndjson": (".ndjson", ".jsonl"),
    "parquet": (".parquet", ".pq"),
}
#: Rows returned by default when no ``output`` file is given; the output is stored and handed on.
DEFAULT_MAX_ROWS = 1000
#: The most rows a task may ask to have returned.
MAX_ROWS_LIMIT = 100_000
_STEP_NAMES = ("select", "rename", "cast", "drop_nulls", "dedupe", "filter", "sort", "limit")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# a SQL type name, possibly with parameters or a list suffix: INTEGER, DECIMAL(10, 2), VARCHAR[]
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]{0,40}(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\])?$")
_RESULT = "__goatclaw_result"


# cacheable=False: the output follows the files' content, which the cache key cannot see
@task(cacheable=False, permissions=("files.read",), sinks=("files", "query", "steps", "output"))
async def data(ctx: TaskContext, *, files: dict[str, Any] | None = None, query: str | None = None,
               steps: list[dict[str, Any]] | None = None, output: str | None = None, format: str | None = None,
               max_rows: int = DEFAULT_MAX_ROWS) -> dict[str, Any]:
    """Run SQL (``query``) and/or cleaning ``steps`` over the named ``files``; rows, or a written ``output`` file.

    ``files`` maps a view name to a workspace path (or to ``{path, format}``); the format
    is told by the suffix (.csv .tsv .json .ndjson .jsonl .parquet) unless given. Without
    ``query``, the steps apply to the only file. ``steps`` is a list of one-key mappings
    applied in order: ``select: [cols]``, ``rename: {old: new}``, ``cast: {col: TYPE}``,
    ``drop_nulls: true | [cols]``, ``dedupe: true | [cols]``, ``filter: SQL condition``,
    ``sort: [cols]`` (``-col`` descending), ``limit: N``. Returns ``{columns, rows,
    row_count, truncated}``, or ``{path, format, columns, row_count, bytes}`` with ``output``.
    """
    sources = _sources(ctx, files)
    if query is None and len(sources) != 1:
        fail("give a query:, or exactly one file for the steps to apply to", error_class="invalid_input")
    sql = _compose(query if query is not None else f"SELECT * FROM {_ident(next(iter(sources)))}", steps)
    return await _run(ctx, sources, sql, output, format, max_rows)


@task(cacheable=False, side_effects=True, permissions=("files.read", "files.write"),
      sinks=("input", "output", "steps"))
async def convert(ctx: TaskContext, *, input: str, output: str, input_format: str | None = None,
                  format: str | None = None, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Convert ``input`` to ``output`` (CSV, JSON, NDJSON, Parquet; told by suffix or ``format``), cleaning on the way.

    ``steps`` are those of the ``data`` task. Returns ``{path, format, columns, row_count, bytes}``.
    """
    sources = _sources(ctx, {"input": {"path": input, "format": input_format} if input_format else input})
    return await _run(ctx, sources, _compose("SELECT * FROM input", steps), output, format, DEFAULT_MAX_ROWS)


# -- the sources ---------------------------------------------------------------------


def _sources(ctx: TaskContext, files: Mapping[str, Any] | None) -> dict[str, tuple[Path, str]]:
    """Each view name with the real path of its granted file and its format."""
    if files is None:
        files = {}
    if not isinstance(files, Mapping):
        fail("files must map view names to paths, e.g. {sales: data/sales.csv}", error_class="invalid_input")
    out: dict[str, tuple[Path, str]] = {}
    for name, entry in files.items():
        if not isinstance(name, str) or not _NAME.match(name):
            fail(f"files: '{name}' is not a view name (letters, digits, _; not starting with a digit)",
                 error_class="invalid_input")
        path, fmt = (entry.get("path"), entry.get("format")) if isinstance(entry, Mapping) else (entry, None)
        if not isinstance(path, str) or not path:
            fail(f"files.{name}: give a workspace path", error_class="invalid_input")
        real = ctx.require_read(path)
        if not real.is_file():
            fail(f"files.{name}: '{path}' is not a file in the workspace", error_class="invalid_input", path=path)
        out[name] = (real, _format_of(path, fmt, f"files.{name}"))
        _note_read(ctx, real)
    return out


def _format_of(path: str, given: str | None, what: str) -> str:
    """The format ``given``, or the one ``path``'s suffix implies."""
    if given is not None:
        if given not in FORMATS:
            fail(f"{what}: format must be one of {', '.join(FORMATS)}, not '{given}'", error_class="invalid_input")
        return given
    suffix = Path(path).suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    fail(f"{what}: cannot tell the format of '{path}' from its suffix; give format: "
         f"({', '.join(FORMATS)})", error_class="invalid_input")


def _note_read(ctx: TaskContext, real: Path) -> None:
    """Tell the engine whose content the output holds (as ``TaskContext.read_back``, hashing in chunks)."""
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    ctx.emit(READ_BACK, path=str(real), sha256=digest.hexdigest())


# -- the SQL -------------------------------------------------------------------------


def _compose(base: str, steps: Sequence[Any] | None) -> str:
    """``base`` wrapped by one sub-select per cleaning step."""
    if not isinstance(base, str) or not base.strip():
        fail("query must be a SELECT statement", error_class="invalid_input")
    sql = base.strip().rstrip(";")
    if steps is None:
        return sql
    if not isinstance(steps, list):
        fail("steps must be a list such as [{select: [a, b]}, {dedupe: true}]", error_class="invalid_input")
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or len(step) != 1:
            fail(f"steps[{i}] must be a mapping with one key: one of {', '.join(_STEP_NAMES)}",
                 error_class="invalid_input")
        (name, arg), = step.items()
        if name not in _STEP_NAMES:
            fail(f"steps[{i}]: unknown step '{name}'; the steps are {', '.join(_STEP_NAMES)}",
                 error_class="invalid_input")
        sql = _STEPS[name](f"({sql}) AS _step{i}", arg, f"steps[{i}].{name}")
    return sql


def _ident(name: Any) -> str:
    """A column or view name quoted for SQL (a double quote inside is doubled)."""
    if not isinstance(name, str) or not name:
        fail(f"a column name must be non-empty text, not {name!r}", error_class="invalid_input")
    return '"' + name.replace('"', '""') + '"'


def _columns(arg: Any, what: str) -> list[str]:
    if isinstance(arg, str):
        arg = [arg]
    if not isinstance(arg, list) or not arg:
        fail(f"{what}: give a list of column names", error_class="invalid_input")
    return [_ident(c) for c in arg]


def _select(src: str, arg: Any, what: str) -> str:
    return f"SELECT {', '.join(_columns(arg, what))} FROM {src}"


def _rename(src: str, arg: Any, what: str) -> str:
    if not isinstance(arg, Mapping) or not arg:
        fail(f"{what}: give a mapping of old column names to new ones", error_class="invalid_input")
    pairs = ", ".join(f"{_ident(old)} AS {_ident(new)}" for old, new in arg.items())
    return f"SELECT * RENAME ({pairs}) FROM {src}"


def _cast(src: str, arg: Any, what: str) -> str:
    if not isinstance(arg, Mapping) or not arg:
        fail(f"{what}: give a mapping of column names to SQL types, e.g. {{price: DOUBLE}}",
             error_class="invalid_input")
    parts = []
    for col, typ in arg.items():
        if not isinstance(typ, str) or not _TYPE.match(typ.strip()):
            fail(f"{what}.{col}: '{typ}' is not a SQL type name such as INTEGER, DOUBLE, DATE, DECIMAL(10,2)",
                 error_class="invalid_input")
        parts.append(f"CAST({_ident(col)} AS {typ.strip()}) AS {_ident(col)}")
    return f"SELECT * REPLACE ({', '.join(parts)}) FROM {src}"


def _drop_nulls(src: str, arg: Any, what: str) -> str:
    if arg is True:
        return f"SELECT * FROM {src} WHERE COLUMNS(*) IS NOT NULL"
    return f"SELECT * FROM {src} WHERE " + " AND ".join(f"{c} IS NOT NULL" for c in _columns(arg, what))


def _dedupe(src: str, arg: Any, what: str) -> str:
    if arg is True:
        return f"SELECT DISTINCT * FROM {src}"
    return f"SELECT DISTINCT ON ({', '.join(_columns(arg, what))}) * FROM {src}"


def _filter(src: str, arg: Any, what: str) -> str:
    if not isinstance(arg, str) or not arg.strip():
        fail(f"{what}: give a SQL condition such as \"amount > 0\"", error_class="invalid_input")
    return f"SELECT * FROM {src} WHERE ({arg})"


def _sort(src: str, arg: Any, what: str) -> str:
    cols = [arg] if isinstance(arg, str) else arg
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) and c.strip("-") for c in cols):
        fail(f"{what}: give a list of column names (-name sorts descending)", error_class="invalid_input")
    keys = [f"{_ident(c[1:])} DESC" if c.startswith("-") else _ident(c) for c in cols]
    return f"SELECT * FROM {src} ORDER BY {', '.join(keys)}"


def _limit(src: str, arg: Any, what: str) -> str:
    if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
        fail(f"{what}: give a number of rows (0 or more)", error_class="invalid_input")
    return f"SELECT * FROM {src} LIMIT {arg}"


_STEPS = {"select": _select, "rename": _rename, "cast": _cast, "drop_nulls": _drop_nulls, "dedupe": _dedupe,
          "filter": _filter, "sort": _sort, "limit": _limit}


# -- running -------------------------------------------------------------------------


async def _run(ctx: TaskContext, sources: Mapping[str, tuple[Path, str]], sql: str, output: str | None,
               format: str | None, max_rows: int) -> dict[str, Any]:
    """Open a locked-down database, run ``sql`` in a thread, and interrupt it if the task is cancelled."""
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or not 0 <= max_rows <= MAX_ROWS_LIMIT:
        fail(f"max_rows must be a number from 0 to {MAX_ROWS_LIMIT:,}, not {max_rows!r}", error_class="invalid_input")
    target = out_format = tmp = None
    if output is not None:
        target = ctx.require_write(output)
        out_format = _format_of(output, format, "output")
        if target.is_dir():
            fail(f"cannot write '{output}': it is a directory", error_class="invalid_input")
        target.parent.mkdir(parents=True, exist_ok=True)
        await ctx.throttle("file")  # rate_limits.side_effects.file_writes_per_minute: wait, never fail
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    con = _locked_down(sources, tmp)
    try:
        work = _write if target is not None else _rows
        args = (con, sql, tmp, target, out_format) if target is not None else (con, sql, max_rows)
        result = await in_thread(work, *args)  # type: ignore[operator]
    except asyncio.CancelledError:
        con.interrupt()  # the query stops; the abandoned thread then ends
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if target is not None:
        base = ctx.workspace.resolve()
        result["path"] = target.relative_to(base).as_posix() if target.is_relative_to(base) else str(target)
        ctx.audit("file.written", path=result["path"], bytes=result["bytes"], format=out_format)
    return result


def _locked_down(sources: Mapping[str, tuple[Path, str]], tmp: Path | None) -> duckdb.DuckDBPyConnection:
    """An in-memory database that can reach the granted files (and ``tmp``) and nothing else."""
    import duckdb

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    allowed = [str(path) for path, _ in sources.values()] + ([str(tmp)] if tmp is not None else [])
    con.execute("SET allowed_paths = $1", [allowed])
    con.execute("SET enable_external_access = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET lock_configuration = true")
    for name, (path, fmt) in sources.items():
        _register(con, name, path, fmt)
    return con


def _register(con: duckdb.DuckDBPyConnection, name: str, path: Path, fmt: str) -> None:
    """A view named ``name`` over the file (read when queried)."""
    import duckdb

    reader = {"csv": "read_csv", "json": "read_json", "ndjson": "read_json", "parquet": "read_parquet"}[fmt]
    extra = ", format = 'newline_delimited'" if fmt == "ndjson" else ", format = 'auto'" if fmt == "json" else ""
    literal = "'" + str(path).replace("'", "''") + "'"
    try:
        con.execute(f"CREATE VIEW {_ident(name)} AS SELECT * FROM {reader}({literal}{extra})")
    except duckdb.Error as exc:
        fail(f"files.{name}: cannot read '{path.name}' as {fmt}: {_first_line(exc)}", error_class="invalid_input")


def _checked_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT statement (``COPY``, ``ATTACH``, ``SET``, a second statement)."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        fail(f"query: {_first_line(exc)}", error_class="invalid_input")
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.type.name for s in statements) or "nothing"
        fail(f"query must be one SELECT statement, not {kinds}", error_class="permission_denied")


def _materialise(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], int]:
    """Run ``sql`` into a temporary table; its columns and row count. DuckDB's errors become task errors."""
    import duckdb

    _checked_select(con, sql)
    try:
        con.execute(f"CREATE TEMP TABLE {_RESULT} AS {sql}")
        columns = [d[0] for d in con.execute(f"SELECT * FROM {_RESULT} LIMIT 0").description]
        (count,) = con.execute(f"SELECT count(*) FROM {_RESULT}").fetchone()  # type: ignore[misc]
    except duckdb.PermissionException as exc:
        fail(f"query: {_first_line(exc)} (only the files under files: can be read)", error_class="permission_denied")
    except duckdb.InterruptException as exc:
        fail(f"query interrupted: {_first_line(exc)}", error_class="timeout")
    except duckdb.Error as exc:
        fail(f"query: {_first_line(exc)}", error_class="invalid_input")
    return columns, int(count)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int) -> dict[str, Any]:
    """The first ``max_rows`` rows as mappings, with the full row count."""
    try:
        columns, count = _materialise(con, sql)
        fetched = con.execute(f"SELECT * FROM {_RESULT} LIMIT {max_rows}").fetchall()
    finally:
        con.close()
    rows = [{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in fetched]
    return {"columns": columns, "rows": rows, "row_count": count, "truncated": count > len(rows)}


def _write(con: duckdb.DuckDBPyConnection, sql: str, tmp: Path, target: Path, fmt: str) -> dict[str, Any]:
    """Write the result to ``tmp``, flush it, rename it over ``target``."""
    import duckdb

    options = {"csv": "FORMAT csv, HEADER true", "json": "FORMAT json, ARRAY true", "ndjson": "FORMAT json",
               "parquet": "FORMAT parquet"}[fmt]
    try:
        columns, count = _materialise(con, sql)
        con.execute(f"COPY {_RESULT} TO '{str(tmp).replace(chr(39), chr(39) * 2)}' ({options})")
    except duckdb.Error as exc:
        fail(f"cannot write the result as {fmt}: {_first_line(exc)}", error_class="internal")
    finally:
        con.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    if target.exists():
        os.chmod(tmp, target.stat().st_mode & 0o7777)
    os.replace(tmp, target)
    return {"path": str(target), "format": fmt, "columns": columns, "row_count": count,
            "bytes": target.stat().st_size}


def _plain(value: Any) -> Any:
    """A DuckDB value as JSON data: dates as ISO text, decimals as numbers, blobs as hex."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _first_line(exc: BaseException) -> str:
    """DuckDB's message without its caret diagram."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
