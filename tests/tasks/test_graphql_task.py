"""The graphql task against a real GraphQL schema (graphql-core) served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from local_http import serving

import goatclaw
from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import build_grant
from goatclaw.spec.model import Permissions
from goatclaw.tasks.graphql import graphql

gql = pytest.importorskip("graphql")
T = TypeVar("T")

SDL = """
type Book { id: Int!, title: String!, year: Int }
type PageInfo { endCursor: String, hasNextPage: Boolean! }
type BookPage { nodes: [Book!]!, pageInfo: PageInfo! }
type Query {
  book(id: Int!): Book
  books(first: Int = 2, after: String): BookPage!
  secret: String
  broken: String
}
type Mutation { rename(id: Int!, title: String!): Book }
"""
BOOKS = [{"id": i, "title": t, "year": y} for i, (t, y) in enumerate(
    [("Dune", 1965), ("Solaris", 1961), ("Ubik", 1969), ("Kindred", 1979), ("Neuromancer", 1984)], start=1)]


def _books(_: Any, __: Any, first: int = 2, after: str | None = None) -> dict[str, Any]:
    at = int(after) if after else 0
    end = at + first
    return {"nodes": BOOKS[at:end], "pageInfo": {"endCursor": str(end), "hasNextPage": end < len(BOOKS)}}


def _secret(_: Any, info: Any) -> str:
    raise gql.GraphQLError("not signed in", extensions={"code": "UNAUTHENTICATED"})


def _broken(_: Any, info: Any) -> str:
    raise RuntimeError("the database is down")


SCHEMA = gql.build_schema(SDL)
SCHEMA.query_type.fields["books"].resolve = _books
SCHEMA.query_type.fields["book"].resolve = lambda _, __, id: next((b for b in BOOKS if b["id"] == id), None)
SCHEMA.query_type.fields["secret"].resolve = _secret
SCHEMA.query_type.fields["broken"].resolve = _broken
SCHEMA.mutation_type.fields["rename"].resolve = lambda _, __, id, title: {**BOOKS[id - 1], "title": title}


class GraphQLHandler(BaseHTTPRequestHandler):
    """POST /graphql executes the request on :data:`SCHEMA`, as a GraphQL-over-HTTP server does."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        GraphQLHandler.requests.append({**payload, "authorization": self.headers.get("Authorization")})
        try:
            document = gql.parse(payload["query"])
        except gql.GraphQLError as exc:
            return self._reply(400, {"errors": [{**exc.formatted, "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]})
        invalid = gql.validate(SCHEMA, document)
        if invalid:
            return self._reply(400, {"errors": [{**e.formatted, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}
                                                for e in invalid]})
        result = gql.execute_sync(SCHEMA, document, variable_values=payload.get("variables"),
                                  operation_name=payload.get("operationName"))
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        self._reply(200, out)

    def _reply(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/graphql-response+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with serving(GraphQLHandler, _Quiet) as url:
        yield url + "/graphql"


@pytest.fixture(autouse=True)
def _clear() -> None:
    GraphQLHandler.requests.clear()


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable
    return asyncio.run(main())


def fails(awaitable: Awaitable[Any], error_class: str) -> TaskError:
    with pytest.raises(TaskError) as info:
        run(awaitable)
    assert info.value.error_class == error_class, info.value.message
    return info.value


def ctx_for(tmp_path: Path) -> TaskContext:
    return TaskContext(run_id="r", task_id="t", workspace=tmp_path,
                       permissions=build_grant([(Permissions(network=("127.0.0.1",)), "test")], tmp_path))


def test_query_with_variables_operation_and_select(endpoint: str, tmp_path: Path) -> None:
    query = "query One($id: Int!) { book(id: $id) { title year } } query Other { books { nodes { id } } }"
    out = run(graphql(ctx_for(tmp_path), url=endpoint, query=query, variables={"id": 3}, operation_name="One"))
    assert out == {"data": {"book": {"title": "Ubik", "year": 1969}}}
    assert GraphQLHandler.requests[0]["operationName"] == "One"
    picked = run(graphql(ctx_for(tmp_path), url=endpoint, query="{ books(first: 5) { nodes { title } } }",
                         select="books.nodes[].title"))
    assert picked == {"data": ["Dune", "Solaris", "Ubik", "Kindred", "Neuromancer"]}


def test_a_mutation(endpoint: str, tmp_path: Path) -> None:
    out = run(graphql(ctx_for(tmp_path), url=endpoint, query="mutation { rename(id: 1, title: \"Dune I\") { title } }"))
    assert out["data"]["rename"]["title"] == "Dune I"


def test_cursor_pagination_until_has_next_is_false(endpoint: str, tmp_path: Path) -> None:
    query = ("query($after: String) { books(first: 2, after: $after) "
             "{ nodes { id } pageInfo { endCursor hasNextPage } } }")
    out = run(graphql(ctx_for(tmp_path), url=endpoint, query=query,
                      paginate={"cursor": "books.pageInfo.endCursor", "has_next": "books.pageInfo.hasNextPage",
                                "variable": "after", "items": "books.nodes"}, select="id"))
    assert out["items"] == [1, 2, 3, 4, 5] and out["pages"] == 3 and out["stopped"] == "end"
    assert [r["variables"].get("after") for r in GraphQLHandler.requests] == [None, "2", "4"]
    bounded = run(graphql(ctx_for(tmp_path), url=endpoint, query=query,
                          paginate={"cursor": "books.pageInfo.endCursor", "has_next": "books.pageInfo.hasNextPage",
                                    "variable": "after", "items": "books.nodes", "max_pages": 2}))
    assert len(bounded["items"]) == 4 and bounded["truncated"] is True and bounded["stopped"] == "max_pages"


@pytest.mark.parametrize(("query", "error_class", "words"), [
    ("{ secret }", "auth", "secret: not signed in [UNAUTHENTICATED]"),
    ("{ nosuchfield }", "invalid_input", "Cannot query field 'nosuchfield'"),
    ("{ books(first: ", "invalid_input", "Syntax Error"),
    ("{ broken }", "upstream", "broken: the database is down"),
])
def test_errors_become_task_failures_with_their_class(endpoint: str, tmp_path: Path, query: str,
                                                      error_class: str, words: str) -> None:
    err = fails(graphql(ctx_for(tmp_path), url=endpoint, query=query), error_class)
    assert words in err.message and "GraphQL error" in err.message
    assert err.details["errors"]


def test_partial_data_is_kept_only_when_asked(endpoint: str, tmp_path: Path) -> None:
    query = "{ book(id: 2) { title } broken }"
    fails(graphql(ctx_for(tmp_path), url=endpoint, query=query), "upstream")
    out = run(graphql(ctx_for(tmp_path), url=endpoint, query=query, partial=True))
    assert out["data"]["book"] == {"title": "Solaris"} and out["errors"][0]["path"] == ["broken"]


def test_bad_arguments_fail_before_sending(endpoint: str, tmp_path: Path) -> None:
    fails(graphql(ctx_for(tmp_path), url=endpoint, query=" "), "invalid_input")
    fails(graphql(ctx_for(tmp_path), url=endpoint, query="{ books { nodes { id } } }",
                  paginate={"cursor": "x"}), "invalid_input")
    assert GraphQLHandler.requests == []


def test_graphql_in_a_pipeline_with_a_bearer_secret(endpoint: str, write_pipeline: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GQL_TOKEN", "gql-secret-value")
    path = write_pipeline(f"""
        version: 1
        secrets: [GQL_TOKEN]
        permissions: {{network: ["127.0.0.1"]}}
        tasks:
          titles:
            uses: graphql
            with:
              url: {endpoint}
              query: "{{ books(first: 3) {{ nodes {{ title }} }} }}"
              auth: {{bearer: "${{{{ secrets.GQL_TOKEN }}}}"}}
              select: books.nodes[].title
        """)
    problems = goatclaw.check(path)[1]
    assert problems == []
    result = goatclaw.run(path)
    assert result.ok, {k: t.error for k, t in result.tasks.items()}
    assert result.outputs["titles"] == {"data": ["Dune", "Solaris", "Ubik"]}
    assert GraphQLHandler.requests[0]["authorization"] == "Bearer gql-secret-value"
