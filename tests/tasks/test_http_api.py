"""The http task's API helpers (pagination, auth, select, Retry-After) against a real local server."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from local_http import serving

import goatclaw
from goatclaw.errors import PermissionDenied, TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import build_grant
from goatclaw.spec.model import Permissions
from goatclaw.tasks import httpauth
from goatclaw.tasks.http import http

T = TypeVar("T")
ITEMS = [{"id": i, "name": f"item-{i}", "secret_field": "x"} for i in range(1, 8)]  # 7 items
PER_PAGE = 3


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable
    return asyncio.run(main())


def fails(awaitable: Awaitable[Any], error_class: str) -> TaskError:
    with pytest.raises(TaskError) as info:
        run(awaitable)
    assert info.value.error_class == error_class, info.value.message
    return info.value


class Api(BaseHTTPRequestHandler):
    """Paginated JSON in five styles, an OAuth2 token endpoint and protected routes."""

    hits: ClassVar[list[str]] = []
    tokens_issued: ClassVar[int] = 0
    refuse_first_token: ClassVar[bool] = False
    flaky_left: ClassVar[int] = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            Api.hits.append(self.path)
        route = getattr(self, "get_" + parts.path.strip("/").replace("-", "_"), None)
        if route is None:
            return self._json(404, {"error": "no such route"})
        route(q)

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/token":
            return self._json(404, {})
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
        basic = "Basic " + base64.b64encode(b"goat:s3cret-client").decode()
        by_body = form.get("client_id") == "goat" and form.get("client_secret") == "s3cret-client"
        if form.get("grant_type") != "client_credentials" or not (self.headers.get("Authorization") == basic
                                                                   or by_body):
            return self._json(401, {"error": "invalid_client", "error_description": "unknown client"})
        with self.lock:
            Api.tokens_issued += 1
            n = Api.tokens_issued
        self._json(200, {"access_token": f"tok-{n}", "token_type": "Bearer", "expires_in": 3600,
                         "scope": form.get("scope")})

    # -- pagination styles --

    def get_pages(self, q: dict[str, str]) -> None:  # ?page=1.. ; an empty page after the last
        page = int(q.get("page", "1"))
        self._json(200, {"data": ITEMS[(page - 1) * PER_PAGE: page * PER_PAGE], "page": page})

    def get_linked(self, q: dict[str, str]) -> None:  # a bare list and a Link header, relative
        page = int(q.get("page", "1"))
        headers = {"Link": f'</linked?page={page + 1}>; rel="next", </linked?page=1>; rel="first"'} \
            if page * PER_PAGE < len(ITEMS) else {}
        self._json(200, ITEMS[(page - 1) * PER_PAGE: page * PER_PAGE], headers)

    def get_cursored(self, q: dict[str, str]) -> None:  # cursor = the index to start at, as text
        at = int(q.get("after", "0"))
        end = at + PER_PAGE
        self._json(200, {"results": ITEMS[at:end], "meta": {"next": str(end) if end < len(ITEMS) else None}})

    def get_nexted(self, q: dict[str, str]) -> None:  # the next page's URL in the body
        at = int(q.get("at", "0"))
        end = at + PER_PAGE
        self._json(200, {"items": ITEMS[at:end], "links": {"next": f"/nexted?at={end}" if end < len(ITEMS) else ""}})

    def get_offsets(self, q: dict[str, str]) -> None:
        at = int(q.get("offset", "0"))
        self._json(200, {"rows": ITEMS[at: at + PER_PAGE]})

    def get_loop(self, q: dict[str, str]) -> None:
        self._json(200, {"items": [1], "next": "/loop"})

    def get_flaky(self, q: dict[str, str]) -> None:  # asks to wait once, then answers
        with self.lock:
            Api.flaky_left -= 1
            left = Api.flaky_left
        if left >= 0:
            return self._json(429, {"error": "slow down"}, {"Retry-After": "1"})
        self.get_pages(q)

    def get_not_a_list(self, q: dict[str, str]) -> None:
        self._json(200, {"data": {"id": 1}})

    # -- auth --

    def get_bearer(self, q: dict[str, str]) -> None:
        auth = self.headers.get("Authorization", "")
        if Api.refuse_first_token and auth == "Bearer tok-1":
            return self._json(401, {"error": "token revoked"})
        ok = auth.startswith("Bearer ") and auth != "Bearer "
        self._json(200 if ok else 401, {"auth": auth})

    def get_basic(self, q: dict[str, str]) -> None:
        ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"ci:pa55word").decode()
        self._json(200 if ok else 401, {"ok": ok})

    def get_keyed(self, q: dict[str, str]) -> None:
        ok = self.headers.get("X-API-Key") == "k3y-value" or q.get("api_key") == "k3y-value"
        self._json(200 if ok else 403, {"ok": ok})

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with serving(Api, _Quiet) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    Api.hits.clear()
    Api.tokens_issued = 0
    Api.refuse_first_token = False
    Api.flaky_left = 0
    httpauth._TOKENS.clear()
    yield


def ctx_for(tmp_path: Path, network: tuple[str, ...] = ("127.0.0.1",), events: list | None = None) -> TaskContext:
    grant = build_grant([(Permissions(network=network), "test")], tmp_path)

    def emit(topic: str, data: dict[str, Any]) -> None:
        if events is not None:
            events.append((topic, data))

    return TaskContext(run_id="r", task_id="t", workspace=tmp_path, permissions=grant, _emit=emit)


# -- pagination ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "paginate"), [
    ("/pages", {"page": "page", "items": "data"}),
    ("/linked", {"link": True}),
    ("/cursored", {"cursor": "meta.next", "param": "after", "items": "results"}),
    ("/nexted", {"next_url": "links.next", "items": "items"}),
    ("/offsets", {"offset": "offset", "items": "rows"}),
])
def test_every_style_harvests_all_items_in_order(api: str, tmp_path: Path, path: str,
                                                 paginate: dict[str, Any]) -> None:
    out = run(http(ctx_for(tmp_path), url=api + path, paginate=paginate))
    assert [i["id"] for i in out["items"]] == [1, 2, 3, 4, 5, 6, 7]
    assert out["stopped"] == "end" and out["truncated"] is False and out["status"] == 200
    expected_pages = 4 if path in ("/pages", "/offsets") else 3  # page and offset end on an empty page
    assert out["pages"] == expected_pages == len(Api.hits)


def test_max_pages_and_max_items_bound_the_harvest(api: str, tmp_path: Path) -> None:
    out = run(http(ctx_for(tmp_path), url=api + "/pages", paginate={"page": "page", "items": "data", "max_pages": 2}))
    assert [i["id"] for i in out["items"]] == [1, 2, 3, 4, 5, 6]
    assert (out["pages"], out["stopped"], out["truncated"], len(Api.hits)) == (2, "max_pages", True, 2)
    Api.hits.clear()
    out = run(http(ctx_for(tmp_path), url=api + "/linked", paginate={"link": True, "max_items": 4}))
    assert [i["id"] for i in out["items"]] == [1, 2, 3, 4]
    assert (out["pages"], out["stopped"], out["truncated"], len(Api.hits)) == (2, "max_items", True, 2)


def test_a_server_that_loops_is_stopped(api: str, tmp_path: Path) -> None:
    out = run(http(ctx_for(tmp_path), url=api + "/loop", paginate={"next_url": "next", "items": "items"}))
    assert (out["items"], out["pages"], out["stopped"]) == ([1], 1, "repeat")


def test_select_picks_fields_of_each_item_and_of_a_single_body(api: str, tmp_path: Path) -> None:
    out = run(http(ctx_for(tmp_path), url=api + "/pages", paginate={"page": "page", "items": "data"},
                   select="{id: id, name: name}"))
    assert out["items"][0] == {"id": 1, "name": "item-1"} and len(out["items"]) == 7
    single = run(http(ctx_for(tmp_path), url=api + "/pages?page=2", select="data[].name"))
    assert single["body"] == ["item-4", "item-5", "item-6"] and single["status"] == 200


def test_select_may_be_jsonpath(api: str, tmp_path: Path) -> None:
    """A select: starting with $ is RFC 9535 JSONPath: a singular query gives its value, any other a list."""
    single = run(http(ctx_for(tmp_path), url=api + "/pages?page=2", select="$.data[*].name"))
    assert single["body"] == ["item-4", "item-5", "item-6"]
    filtered = run(http(ctx_for(tmp_path), url=api + "/pages?page=2", select="$.data[?@.id > 4].id"))
    assert filtered["body"] == [5, 6]
    assert run(http(ctx_for(tmp_path), url=api + "/pages?page=2", select="$.data[0].name"))["body"] == "item-4"
    assert run(http(ctx_for(tmp_path), url=api + "/pages?page=2", select="$.nothing.here"))["body"] is None
    out = run(http(ctx_for(tmp_path), url=api + "/pages", paginate={"page": "page", "items": "data"},
                   select="$.name"))
    assert out["items"] == [f"item-{i}" for i in range(1, 8)]  # per item, singular: the value itself


@pytest.mark.parametrize(("query", "why"), [
    ("$.data[?match(@.name, '(a+)+$')]", "match() is not available"),
    ("$.data[?search(@.name, 'a')]", "search() is not available"),
    ("$.data[?@.name =~ /a+/]", "unexpected token"),  # the library's regex extension: strict mode refuses it
    ("$.data[", "unexpected end of query"),
])
def test_jsonpath_refuses_regular_expressions_and_bad_queries_before_sending(api: str, tmp_path: Path, query: str,
                                                                            why: str) -> None:
    Api.hits.clear()
    message = fails(http(ctx_for(tmp_path), url=api + "/pages", select=query), "invalid_input").message
    assert why in message and "select" in message and Api.hits == []


def test_bad_options_fail_before_anything_is_sent(api: str, tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    assert "JMESPath" in fails(http(ctx, url=api + "/pages", select="data[".strip()), "invalid_input").message
    assert "exactly one of" in fails(http(ctx, url=api + "/pages", paginate={"page": "p", "link": True}),
                                     "invalid_input").message
    fails(http(ctx, url=api + "/pages", paginate={"page": "page", "max_pages": 0}), "invalid_input")
    fails(http(ctx, url=api + "/pages", paginate={"link": True, "param": "x"}), "invalid_input")
    fails(http(ctx, url=api + "/pages", auth={"bearer": ""}), "invalid_input")
    fails(http(ctx, url=api + "/pages", auth={"api_key": "k"}), "invalid_input")
    fails(http(ctx, url=api + "/pages", max_wait=-1), "invalid_input")
    assert Api.hits == []


def test_items_that_are_not_a_list_fail_clearly(api: str, tmp_path: Path) -> None:
    err = fails(http(ctx_for(tmp_path), url=api + "/not-a-list", paginate={"page": "page", "items": "data"}),
                "invalid_output")
    assert "not a list" in err.message


def test_a_page_asking_to_wait_is_waited_for_and_fetched_again(api: str, tmp_path: Path) -> None:
    Api.flaky_left = 1
    events: list = []
    out = run(http(ctx_for(tmp_path, events=events), url=api + "/flaky", paginate={"page": "page", "items": "data"}))
    assert [i["id"] for i in out["items"]] == [1, 2, 3, 4, 5, 6, 7]
    assert [d["wait"] for t, d in events if t == "http.retry_after"] == [1.0]
    Api.flaky_left = 1  # a single request waits only when told to (the retry policy handles the rest)
    assert fails(http(ctx_for(tmp_path), url=api + "/flaky"), "rate_limit").retry_after == 1
    Api.flaky_left = 1
    assert run(http(ctx_for(tmp_path), url=api + "/flaky", max_wait=2))["status"] == 200
    Api.flaky_left = 1  # a wait longer than max_wait is not waited in place: the task fails with retry_after
    assert fails(http(ctx_for(tmp_path), url=api + "/flaky", paginate={"page": "page"}, max_wait=0.5),
                 "rate_limit").retry_after == 1


class Crowded(BaseHTTPRequestHandler):
    """Answers its first request 429 with ``Retry-After: 1`` and any other within that second 429 too."""

    seen: ClassVar[list[tuple[float, int]]] = []  # (monotonic time, status) of each request
    until: ClassVar[float] = 0.0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        now = time.monotonic()
        with Api.lock:
            if not Crowded.seen:
                Crowded.until = now + 1.0
            status = 429 if now < Crowded.until else 200
            Crowded.seen.append((now, status))
        body = b"{}"
        self.send_response(status)
        self.send_header("Retry-After", "1") if status == 429 else None
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_host_s_retry_after_holds_the_other_requests_to_it(tmp_path: Path) -> None:
    """One task is told to wait: another task's request to that host waits too instead of being refused."""
    Crowded.seen = []
    events: list = []

    async def both(base: str) -> list[dict[str, Any]]:
        first = asyncio.ensure_future(http(ctx_for(tmp_path), url=base + "/a", max_wait=2))
        await asyncio.sleep(0.2)  # the first has its 429 by now
        second = http(ctx_for(tmp_path, events=events), url=base + "/b", max_wait=2)
        return list(await asyncio.gather(first, second))

    with serving(Crowded) as base:
        outs = run(both(base))
    assert [o["status"] for o in outs] == [200, 200]
    assert [status for _, status in Crowded.seen] == [429, 200, 200]  # the second was never refused
    held = [d for t, d in events if t == "http.host_paused"]
    assert len(held) == 1 and 0.5 < held[0]["wait"] <= 1.0
    Crowded.seen = []  # a task that may not wait that long is not held: it sends, and the host says no
    with serving(Crowded) as base:
        assert fails(http(ctx_for(tmp_path), url=base + "/a"), "rate_limit").retry_after == 1
        assert fails(http(ctx_for(tmp_path), url=base + "/b"), "rate_limit").retry_after == 1
    assert [status for _, status in Crowded.seen] == [429, 429]


def test_every_page_is_checked_against_the_grant(api: str, tmp_path: Path) -> None:
    """A next link to a host the task may not reach is refused before it is fetched."""
    ctx = ctx_for(tmp_path, network=("localhost",))
    with pytest.raises(PermissionDenied):
        run(http(ctx, url=api + "/pages", paginate={"page": "page"}))
    assert Api.hits == []


# -- auth ------------------------------------------------------------------------------


def test_bearer_basic_and_api_keys(api: str, tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    assert run(http(ctx, url=api + "/bearer", auth={"bearer": "abc"}))["body"] == {"auth": "Bearer abc"}
    assert run(http(ctx, url=api + "/basic", auth={"basic": {"username": "ci", "password": "pa55word"}}))["body"]["ok"]
    fails(http(ctx, url=api + "/basic", auth={"basic": {"username": "ci", "password": "wrong"}}), "auth")
    assert run(http(ctx, url=api + "/keyed", auth={"api_key": "k3y-value", "header": "X-API-Key"}))["body"]["ok"]
    assert run(http(ctx, url=api + "/keyed", auth={"api_key": "k3y-value", "query": "api_key"}))["body"]["ok"]
    fails(http(ctx, url=api + "/keyed"), "auth")


def test_oauth2_client_credentials_fetches_once_and_caches(api: str, tmp_path: Path) -> None:
    auth = {"oauth2": {"token_url": api + "/token", "client_id": "goat", "client_secret": "s3cret-client",
                       "scope": "read"}}
    events: list = []
    ctx = ctx_for(tmp_path, events=events)
    assert run(http(ctx, url=api + "/bearer", auth=auth))["body"] == {"auth": "Bearer tok-1"}
    assert run(http(ctx, url=api + "/bearer", auth=auth))["body"] == {"auth": "Bearer tok-1"}
    assert Api.tokens_issued == 1
    audits = [d for t, d in events if t == "audit.oauth2.token"]
    assert [a["cached"] for a in audits] == [False, True]
    assert all("s3cret" not in json.dumps(d) for _, d in events if d.get("url", "").endswith("/token"))
    body_auth = {"oauth2": {**auth["oauth2"], "client_auth": "body", "scope": "write"}}
    assert run(http(ctx, url=api + "/bearer", auth=body_auth))["body"] == {"auth": "Bearer tok-2"}


def test_oauth2_a_revoked_token_is_replaced_once(api: str, tmp_path: Path) -> None:
    Api.refuse_first_token = True
    auth = {"oauth2": {"token_url": api + "/token", "client_id": "goat", "client_secret": "s3cret-client"}}
    assert run(http(ctx_for(tmp_path), url=api + "/bearer", auth=auth))["body"] == {"auth": "Bearer tok-2"}
    assert Api.tokens_issued == 2


def test_oauth2_refused_credentials_fail_auth_with_the_reason(api: str, tmp_path: Path) -> None:
    auth = {"oauth2": {"token_url": api + "/token", "client_id": "goat", "client_secret": "wrong"}}
    err = fails(http(ctx_for(tmp_path), url=api + "/bearer", auth=auth), "auth")
    assert "invalid_client: unknown client" in err.message and "/bearer" not in " ".join(Api.hits)


def test_a_pipeline_harvest_with_a_secret_token(api: str, project: Path, write_pipeline: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the front door: the secret goes in a header, only to a listed host, masked in the output."""
    monkeypatch.setenv("API_TOKEN", "tok-from-the-environment")
    path = write_pipeline(f"""
        version: 1
        secrets: [API_TOKEN]
        permissions: {{network: ["127.0.0.1"]}}
        tasks:
          harvest:
            uses: http
            with:
              url: {api}/pages
              auth: {{bearer: "${{{{ secrets.API_TOKEN }}}}"}}
              paginate: {{page: page, items: data, max_pages: 10}}
              select: name
          whoami:
            uses: http
            with:
              url: {api}/bearer
              auth: {{bearer: "${{{{ secrets.API_TOKEN }}}}"}}
        """)
    result = goatclaw.run(path)
    assert result.ok, {k: t.error for k, t in result.tasks.items()}
    assert result.outputs["harvest"]["items"] == [f"item-{i}" for i in range(1, 8)]
    assert result.outputs["whoami"]["body"] == {"auth": "Bearer tok-from-the-environment"}  # it was sent
    stored = b"".join(p.read_bytes() for p in (project / ".goatclaw").glob("goatclaw.db*"))
    assert b"Bearer" in stored and b"tok-from-the-environment" not in stored  # and masked in the store

    denied = write_pipeline(path.read_text().replace('network: ["127.0.0.1"]', "network: true"), name="q.yaml")
    result = goatclaw.run(denied)
    assert not result.ok and result.tasks["harvest"].error_class == "permission_denied"
    assert "secret API_TOKEN" in result.tasks["harvest"].error
