"""The ``data`` and ``data.convert`` tasks on a real DuckDB, with real files under tmp_path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from local_http import serving

from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import build_grant
from goatclaw.spec.model import Permissions
from goatclaw.tasks.data import convert, data

pytest.importorskip("duckdb")

T = TypeVar("T")

SALES = "region,product,amount\nnorth,apple,3\nsouth,pear,\nnorth,apple,3\neast,plum,7\nnorth,pear,5\n"


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable
    return asyncio.run(main())


def fails(awaitable: Awaitable[Any], error_class: str) -> TaskError:
    with pytest.raises(TaskError) as info:
        run(awaitable)
    assert info.value.error_class == error_class, info.value.message
    return info.value


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "data" / "sales.csv").write_text(SALES)
    (root / "data" / "users.ndjson").write_text('{"id": 1, "name": "ada"}\n{"id": 2, "name": "bob"}\n')
    (root / "data" / "prices.json").write_text('[{"product": "apple", "price": 1.5}, {"product": "pear", "price": 2}]')
    (tmp_path / "secret.csv").write_text("password\nhunter2\n")
    return root


def ctx_for(ws: Path, read: list[str] | None = None, write: list[str] | None = None) -> TaskContext:
    """A context granted to read ``data/`` (or ``read``) and write ``out/`` (or ``write``), nothing else."""
    perms = Permissions(files_read=tuple(read if read is not None else ["data/"]),
                        files_write=tuple(write if write is not None else ["out/"]))
    return TaskContext(run_id="r", task_id="t", workspace=ws, permissions=build_grant([(perms, "test")], ws))


def test_query_over_csv_returns_rows_and_count(ws: Path) -> None:
    out = run(data(ctx_for(ws), files={"sales": "data/sales.csv"},
                   query="SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region"))
    assert out["columns"] == ["region", "total"]
    assert out["rows"] == [{"region": "east", "total": 7}, {"region": "north", "total": 11},
                           {"region": "south", "total": None}]
    assert out["row_count"] == 3 and out["truncated"] is False
    json.dumps(out)  # stored as JSON


def test_rows_are_bounded_but_the_count_is_whole(ws: Path) -> None:
    out = run(data(ctx_for(ws), files={"s": "data/sales.csv"}, query="SELECT * FROM s", max_rows=2))
    assert len(out["rows"]) == 2 and out["row_count"] == 5 and out["truncated"] is True


def test_joins_json_ndjson_and_csv(ws: Path) -> None:
    out = run(data(ctx_for(ws), files={"sales": "data/sales.csv", "prices": "data/prices.json",
                                       "users": "data/users.ndjson"},
                   query="SELECT s.product, p.price, (SELECT count(*) FROM users) AS users FROM sales s "
                         "JOIN prices p USING (product) WHERE s.region = 'north' ORDER BY s.amount"))
    assert out["rows"][0] == {"product": "apple", "price": 1.5, "users": 2}
    assert out["row_count"] == 3


def test_cleaning_steps_in_order(ws: Path) -> None:
    steps = [{"drop_nulls": ["amount"]}, {"dedupe": True}, {"rename": {"amount": "qty"}},
             {"cast": {"qty": "DOUBLE"}}, {"filter": "qty >= 3"}, {"select": ["product", "qty"]},
             {"sort": ["-qty", "product"]}, {"limit": 10}]
    out = run(data(ctx_for(ws), files={"sales": "data/sales.csv"}, steps=steps))
    assert out["rows"] == [{"product": "plum", "qty": 7.0}, {"product": "pear", "qty": 5.0},
                           {"product": "apple", "qty": 3.0}]


def test_dedupe_on_columns_and_drop_nulls_everywhere(ws: Path) -> None:
    out = run(data(ctx_for(ws), files={"s": "data/sales.csv"}, steps=[{"drop_nulls": True}, {"dedupe": ["region"]},
                                                                      {"select": "region"}, {"sort": "region"}]))
    assert [r["region"] for r in out["rows"]] == ["east", "north"]


def test_a_bad_step_is_invalid_input(ws: Path) -> None:
    c = ctx_for(ws)
    err = fails(data(c, files={"s": "data/sales.csv"}, steps=[{"explode": 1}]), "invalid_input")
    assert "unknown step" in err.message
    err = fails(data(c, files={"s": "data/sales.csv"}, steps=[{"cast": {"amount": "INT); DROP TABLE x; --"}}]),
                "invalid_input")
    assert "SQL type" in err.message
    assert "nope" in fails(data(c, files={"s": "data/sales.csv"}, query="SELECT nope FROM s"), "invalid_input").message


def test_results_written_to_a_granted_parquet_file(ws: Path) -> None:
    import duckdb

    out = run(data(ctx_for(ws), files={"s": "data/sales.csv"}, query="SELECT * FROM s WHERE amount IS NOT NULL",
                   output="out/sales.parquet"))
    assert out["path"] == "out/sales.parquet" and out["format"] == "parquet" and out["row_count"] == 4
    assert out["bytes"] == (ws / "out/sales.parquet").stat().st_size
    assert duckdb.sql(f"SELECT count(*) FROM '{ws / 'out/sales.parquet'}'").fetchall() == [(4,)]
    assert [p.name for p in (ws / "out").iterdir()] == ["sales.parquet"]  # no temporary file left


def test_convert_csv_to_ndjson_with_steps(ws: Path) -> None:
    out = run(convert(ctx_for(ws), input="data/sales.csv", output="out/north.jsonl",
                      steps=[{"filter": "region = 'north'"}, {"select": ["product", "amount"]}]))
    assert out["row_count"] == 3 and out["format"] == "ndjson"
    lines = [json.loads(x) for x in (ws / "out/north.jsonl").read_text().splitlines()]
    assert lines[0] == {"product": "apple", "amount": 3}


def test_sql_cannot_read_a_file_that_is_not_granted(ws: Path) -> None:
    c = ctx_for(ws)
    for sql in ["SELECT * FROM read_csv('/etc/passwd')", f"SELECT * FROM read_csv('{ws.parent / 'secret.csv'}')",
                f"SELECT * FROM '{ws / 'data/users.ndjson'}'",  # inside data/, but not named under files:
                "SELECT * FROM glob('/etc/*')", "SELECT content FROM read_text('/etc/hostname')"]:
        err = fails(data(c, files={"s": "data/sales.csv"}, query=sql), "permission_denied")
        assert "disabled" in err.message or "only the files" in err.message


class _Csv(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Csv.hits.append(self.path)
        body = b"a\n1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def csv_server() -> Iterator[str]:
    _Csv.hits = []
    with serving(_Csv) as url:
        yield url


def test_sql_cannot_fetch_a_url(ws: Path, csv_server: str) -> None:
    fails(data(ctx_for(ws), files={"s": "data/sales.csv"}, query=f"SELECT * FROM read_csv('{csv_server}/x.csv')"),
          "permission_denied")
    assert _Csv.hits == []  # nothing went out


@pytest.mark.parametrize("sql", [
    "COPY s TO 'data/sales.csv'", "ATTACH 'x.db'", "SET enable_external_access = true", "INSTALL httpfs",
    "LOAD httpfs", "SELECT 1; SELECT 2", "CREATE TABLE t AS SELECT 1",
])
def test_only_one_select_statement_runs(ws: Path, sql: str) -> None:
    before = (ws / "data/sales.csv").read_text()
    fails(data(ctx_for(ws), files={"s": "data/sales.csv"}, query=sql), "permission_denied")
    assert (ws / "data/sales.csv").read_text() == before


def test_files_and_outputs_go_through_the_grants(ws: Path, tmp_path: Path) -> None:
    c = ctx_for(ws)
    fails(data(c, files={"s": "../secret.csv"}, query="SELECT * FROM s"), "permission_denied")
    (ws / "data" / "link.csv").symlink_to(tmp_path / "secret.csv")
    fails(data(c, files={"s": "data/link.csv"}, query="SELECT * FROM s"), "permission_denied")
    fails(data(c, files={"s": "data/sales.csv"}, query="SELECT * FROM s", output="data/copy.csv"), "permission_denied")
    fails(data(ctx_for(ws, read=[]), files={"s": "data/sales.csv"}, query="SELECT * FROM s"), "permission_denied")


def test_an_unknown_suffix_needs_a_format(ws: Path) -> None:
    (ws / "data" / "rows.dat").write_text("a,b\n1,2\n")
    c = ctx_for(ws)
    assert "format" in fails(data(c, files={"r": "data/rows.dat"}), "invalid_input").message
    out = run(data(c, files={"r": {"path": "data/rows.dat", "format": "csv"}}))
    assert out["rows"] == [{"a": 1, "b": 2}]


def test_through_the_front_door(ws: Path) -> None:
    import goatclaw

    (ws / "p.yaml").write_text("""\
version: 1
name: d
permissions: {files: {read: [data/], write: [out/]}}
tasks:
  totals:
    uses: data
    with:
      files: {sales: data/sales.csv}
      query: SELECT region, count(*) AS n FROM sales GROUP BY region ORDER BY n DESC, region
  parquet:
    uses: data.convert
    with: {input: data/sales.csv, output: out/sales.parquet, steps: [{drop_nulls: true}]}
""")
    result = goatclaw.run(ws / "p.yaml", workspace=ws, store=None)
    assert result.ok, (result.error, {k: t.error for k, t in result.tasks.items()})
    assert result.outputs["totals"]["rows"][0] == {"region": "north", "n": 3}
    assert result.outputs["parquet"]["row_count"] == 4
