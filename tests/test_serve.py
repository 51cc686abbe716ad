"""``goatclaw serve`` through real HTTP: uvicorn on 127.0.0.1, httpx against it, real SQLite stores.

Each test builds the app over scratch project folders (tests/live_server.py) whose pipelines
run offline, and talks to it as a client would: tokens and their scopes, TOTP logins and
sessions, rate limits, threat blocks, address lists, project scoping, the audit chain, the
event stream, the bounded queue, cancel and resume, the OpenAPI document and the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from live_server import live, make_project, run_to_end, sse, store_of, token, wait_for

import goatclaw
from goatclaw.server import accounts
from goatclaw.server.app import build_app
from goatclaw.server.settings import ServerSettings

pytestmark = pytest.mark.timeout(120)

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return make_project(tmp_path / "demo")


# -- runs -----------------------------------------------------------------------------------------


def test_trigger_runs_the_pipeline_and_shows_it(demo: Path) -> None:
    key = token(demo, "run")
    with live(build_app([demo])) as server, server.client(key) as http:
        answer = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/hello.yaml",
                                                             "vars": {"who": "ann"}})
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["run_id"]
        assert answer.headers["location"] == f"/api/projects/demo/runs/{run_id}"
        data = run_to_end(http, "demo", run_id)
        assert data["status"] == "succeeded" and data["untrusted"] is True
        assert {t["id"]: t["output"] for t in data["tasks"]} == {"greet": "hello ann", "shout": "HELLO ANN"}
        listed = http.get("/api/projects/demo/runs").json()["runs"]
        assert [r["id"] for r in listed] == [run_id] and listed[0]["path"] == "pipelines/hello.yaml"
        one = http.get(f"/api/projects/demo/runs/{run_id}/tasks/greet").json()
        assert one["output"] == "hello ann" and one["status"] == "succeeded"
    # the run is in the project's store, as `goatclaw runs show` sees it
    with _store(demo) as db:
        assert db.run(run_id).status == "succeeded"


def _store(folder: Path):
    from goatclaw.store import Store

    return Store.open(store_of(folder))


def test_dry_run_only_and_bad_requests(demo: Path) -> None:
    key = token(demo, "run")
    with live(build_app([demo])) as server, server.client(key) as http:
        plan = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/hello.yaml", "dry_run": True})
        assert plan.status_code == 200 and plan.json()["levels"] == [["greet"], ["shout"]]
        only = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/hello.yaml", "only": ["greet"]})
        data = run_to_end(http, "demo", only.json()["run_id"])
        assert [t["id"] for t in data["tasks"]] == ["greet"]
        cases = [
            ({"pipeline": "pipelines/hello.yaml", "vars": {"nope": 1}}, 422, "'nope' not declared"),
            ({"pipeline": "pipelines/hello.yaml", "only": ["ghost"]}, 422, "no task 'ghost'"),
            ({"pipeline": "../../etc/passwd"}, 404, "no file"),
            ({"pipeline": "pipelines/missing.yaml"}, 404, "no file"),
            ({}, 422, "give 'pipeline'"),
            ({"pipeline": "pipelines/hello.yaml", "var": {"who": "x"}}, 422, "unknown field 'var'"),
            ({"pipeline": "pipelines/hello.yaml", "vars": [1]}, 422, "'vars' must be dict"),
        ]
        for body, status, words in cases:
            answer = http.post("/api/projects/demo/runs", json=body)
            assert answer.status_code == status and words in answer.json()["error"], (body, answer.text)
        broken = http.post("/api/projects/demo/runs", content=b"{not json",
                           headers={"content-type": "application/json"})
        assert broken.status_code == 400 and "not JSON" in broken.json()["error"]
        nan = http.post("/api/projects/demo/runs", headers={"content-type": "application/json"},
                        content=b'{"pipeline": "pipelines/hello.yaml", "vars": {"who": NaN}}')
        assert nan.status_code == 400 and "NaN is not a JSON number" in nan.json()["error"]
        huge = http.post("/api/projects/demo/runs", content=b"x" * (2 * 1024 * 1024),
                         headers={"content-type": "application/json"})
        assert huge.status_code == 413  # server.max_body: 1 MiB
        assert http.get("/api/projects/nowhere/runs").status_code == 404


def test_an_invalid_pipeline_is_refused_with_its_located_problems(demo: Path) -> None:
    (demo / "pipelines" / "bad.yaml").write_text("version: 1\nname: bad\ntasks:\n  a:\n    uses: echo\n"
                                                 "    needs: ghost\n")
    key = token(demo, "run")
    with live(build_app([demo])) as server, server.client(key) as http:
        answer = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/bad.yaml"})
        assert answer.status_code == 422
        assert "pipelines/bad.yaml:6:" in answer.json()["error"] and "ghost" in answer.json()["error"]
        listed = {p["path"]: p for p in http.get("/api/projects/demo/pipelines").json()["pipelines"]}
        assert listed["pipelines/bad.yaml"]["valid"] is False
        assert listed["pipelines/bad.yaml"]["problems"][0].startswith("pipelines/bad.yaml:6:")  # no server path
        assert listed["pipelines/hello.yaml"]["vars_schema"]["properties"]["who"] == {"type": "string",
                                                                                        "default": "world"}
        detail = http.get("/api/projects/demo/pipelines/pipelines/hello.yaml").json()
        assert detail["levels"] == [["greet"], ["shout"]] and detail["tasks"]["shout"]["needs"] == ["greet"]


def test_events_stream_live_then_end_and_resume_from_last_event_id(demo: Path) -> None:
    key = token(demo, "run")
    with live(build_app([demo])) as server, server.client(key) as http:
        run_id = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/slow.yaml",
                                                             "vars": {"seconds": 1}}).json()["run_id"]
        started = time.monotonic()
        with http.stream("GET", f"/api/projects/demo/runs/{run_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            seen = []
            for line in stream.iter_lines():
                seen.append(line)
                if line.startswith("event: run.started"):
                    first_at = time.monotonic() - started  # live: before the 1 s task is over
                if line.startswith("data:") and seen[-2:-1] == ["event: end"]:
                    break
            text = "\n".join(seen) + "\n\n"
        events = sse(text)
        assert first_at < 1.0
        ids = [int(e["id"]) for e in events if "id" in e]
        assert ids == list(range(1, len(ids) + 1))  # every event, in order, none twice
        topics = [e["event"] for e in events]
        assert topics[0] == "run.started" and "run.succeeded" in topics and topics[-1] == "end"
        assert json.loads(events[-1]["data"])["status"] == "succeeded"
        with _store(demo) as db:
            assert len(db.events(run_id)) == len(ids)  # nothing lost against the store
        # a finished run's stored events, after the one a client saw last
        again = sse(http.get(f"/api/projects/demo/runs/{run_id}/events", headers={"Last-Event-ID": "2"}).text)
        assert [int(e["id"]) for e in again if "id" in e] == ids[2:]
        assert again[-1]["event"] == "end"


def test_cancel_then_resume_keeps_what_finished(demo: Path) -> None:
    key = token(demo, "run")
    with live(build_app([demo])) as server, server.client(key) as http:
        run_id = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/slow.yaml"}).json()["run_id"]
        wait_for(lambda: any(t["id"] == "first" and t["status"] == "succeeded"
                             for t in http.get(f"/api/projects/demo/runs/{run_id}").json()["tasks"]))
        time.sleep(0.3)  # `wait` is sleeping now
        answer = http.post(f"/api/projects/demo/runs/{run_id}/cancel")
        assert answer.status_code == 202 and answer.json()["was"] == "running"
        data = run_to_end(http, "demo", run_id)
        assert data["status"] == "cancelled"
        first = next(t for t in data["tasks"] if t["id"] == "first")
        assert http.post(f"/api/projects/demo/runs/{run_id}/cancel").status_code == 409  # not running any more
        (demo / "go.flag").write_text("")
        resumed = http.post(f"/api/projects/demo/runs/{run_id}/resume")
        assert resumed.status_code == 202 and resumed.json()["run_id"] == run_id
        data = run_to_end(http, "demo", run_id)
        assert data["status"] == "succeeded"
        tasks = {t["id"]: t for t in data["tasks"]}
        assert tasks["first"]["started_at"] == first["started_at"]  # it did not run again
        assert tasks["wait"]["output"]["stdout"].strip() == "flagged"
        assert http.post(f"/api/projects/demo/runs/{run_id}/resume").status_code == 409  # succeeded


def test_a_full_queue_is_429_with_a_clear_body(demo: Path) -> None:
    key = token(demo, "run")
    settings = ServerSettings(max_running=1, max_queued=1)
    with live(build_app([demo], settings=settings)) as server, server.client(key) as http:
        body = {"pipeline": "pipelines/slow.yaml"}
        first = http.post("/api/projects/demo/runs", json=body).json()["run_id"]
        wait_for(lambda: server.state.queue.running == 1)
        second = http.post("/api/projects/demo/runs", json=body)
        assert second.status_code == 202
        third = http.post("/api/projects/demo/runs", json=body)
        assert third.status_code == 429 and "queue is full" in third.json()["error"]
        assert third.headers["retry-after"] == "1"
        queued = http.get("/api/projects/demo/runs").json()["queued"]
        assert [q["run_id"] for q in queued] == [second.json()["run_id"]]
        assert http.post(f"/api/projects/demo/runs/{second.json()['run_id']}/cancel").json()["was"] == "queued"
        assert http.get(f"/api/projects/demo/runs/{second.json()['run_id']}").json()["status"] == "cancelled"
        http.post(f"/api/projects/demo/runs/{first}/cancel")
        assert run_to_end(http, "demo", first)["status"] == "cancelled"


# -- who may do what ------------------------------------------------------------------------------


def test_token_scopes(demo: Path) -> None:
    read, run, approve = token(demo, "read"), token(demo, "run"), token(demo, "approve")
    body = {"pipeline": "pipelines/hello.yaml"}
    with live(build_app([demo])) as server:
        with server.client(read) as http:
            assert http.get("/api/projects/demo/runs").status_code == 200
            refused = http.post("/api/projects/demo/runs", json=body)
            assert refused.status_code == 403 and "lacks the 'run' scope" in refused.json()["error"]
        with server.client(approve) as http:
            assert http.post("/api/projects/demo/runs", json=body).status_code == 403
            assert http.get("/auth/me").json()["scopes"] == ["approve"]
        with server.client(run) as http:
            assert http.post("/api/projects/demo/runs", json=body).status_code == 202
        with server.client() as http:
            nobody = http.get("/api/projects/demo/runs")
            assert nobody.status_code == 401 and nobody.headers["www-authenticate"].startswith("Bearer")
            assert http.get("/health").status_code == 200  # open, for load balancers
        with server.client("gct_000000000000_wrong") as http:
            assert http.get("/api/projects").status_code == 401
        accounts.revoke_token(store_of(demo), read)
        with server.client(read) as http:
            assert http.get("/api/projects/demo/runs").status_code == 401  # revoked: at once


def test_tokens_are_stored_hashed_and_can_expire(demo: Path) -> None:
    text, row = accounts.create_token(store_of(demo), "short", ["read"], expires_in=60)
    with _store(demo) as db:
        stored = db.token(row["id"])
        dump = "\n".join(str(r) for r in db.db.execute("SELECT * FROM api_tokens"))
    secret = text.split("_", 2)[2]
    assert secret not in dump and stored["hash"] != secret and len(stored["hash"]) == 64
    now = [time.time()]
    with live(build_app([demo], clock=lambda: now[0])) as server, server.client(text) as http:
        assert http.get("/api/projects").status_code == 200
        now[0] += 61
        assert http.get("/api/projects").status_code == 401


def test_projects_scope_tokens(tmp_path: Path) -> None:
    a, b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    only_a = token(a, "run", projects=["a"])
    everywhere = token(a, "read", name="all")
    with live(build_app([a, b])) as server:
        with server.client(only_a) as http:
            assert [p["name"] for p in http.get("/api/projects").json()["projects"]] == ["a"]
            assert http.post("/api/projects/a/runs", json={"pipeline": "pipelines/hello.yaml"}).status_code == 202
            refused = http.post("/api/projects/b/runs", json={"pipeline": "pipelines/hello.yaml"})
            assert refused.status_code == 403 and "may not use the project 'b'" in refused.json()["error"]
            assert http.get("/api/projects/b/runs").status_code == 403
        with server.client(everywhere) as http:
            assert [p["name"] for p in http.get("/api/projects").json()["projects"]] == ["a", "b"]
            wait_for(lambda: http.get("/api/projects/a/runs").json()["runs"])
            assert http.get("/api/projects/b/runs").json()["runs"] == []  # each project its own store
    assert _has_runs(a) and (not store_of(b).exists() or not _has_runs(b))


def _has_runs(folder: Path) -> bool:
    with _store(folder) as db:
        return bool(db.runs())


def test_totp_login_session_logout_and_replay(demo: Path) -> None:
    accounts.add_user(store_of(demo), "ann", "correct horse", ["run"], totp_secret=SECRET)
    totp = pyotp.TOTP(SECRET)
    settings = ServerSettings(threat_threshold=100)  # this test fails on purpose more than a client may
    with live(build_app([demo], settings=settings)) as server, server.client() as http:
        wrong = http.post("/auth/login", json={"username": "ann", "password": "wrong pass", "code": totp.now()})
        assert wrong.status_code == 401 and "goatclaw_session" not in wrong.cookies
        assert http.post("/auth/login", json={"username": "ann", "password": "correct horse",
                                              "code": "000000" if totp.now() != "000000" else "111111"}
                         ).status_code == 401
        code = totp.now()
        ok = http.post("/auth/login", json={"username": "ann", "password": "correct horse", "code": code})
        assert ok.status_code == 200, ok.text
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        csrf = ok.json()["csrf_token"]
        assert http.get("/auth/me").json()["name"] == "ann"
        # a change with the cookie needs the CSRF token (or to come from the server's own pages)
        body = {"pipeline": "pipelines/hello.yaml"}
        assert http.post("/api/projects/demo/runs", json=body).status_code == 403
        assert http.post("/api/projects/demo/runs", json=body, headers={"X-CSRF-Token": csrf}).status_code == 202
        assert http.post("/api/projects/demo/runs", json=body,
                         headers={"Origin": server.url}).status_code == 202
        assert http.post("/api/projects/demo/runs", json=body,
                         headers={"Origin": "https://evil.example"}).status_code == 403
        # the same code cannot log in twice
        with server.client() as other:
            again = other.post("/auth/login", json={"username": "ann", "password": "correct horse", "code": code})
            assert again.status_code == 401
        assert http.post("/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        http.cookies.set("goatclaw_session", cookie.split(";")[0].split("=", 1)[1])
        assert http.get("/auth/me").status_code == 401  # revoked in the store, not only forgotten by the client
    with _store(demo) as db:
        assert "correct horse" not in str(db.user("ann"))


def _login(http: httpx.Client, secret: str, at: float) -> httpx.Response:
    return http.post("/auth/login", json={"username": "ann", "password": "correct horse",
                                          "code": pyotp.TOTP(secret).at(at)})


def test_the_totp_secret_is_stored_sealed_under_a_key_beside_the_store(demo: Path) -> None:
    from goatclaw.server import sealing

    store = store_of(demo)
    accounts.add_user(store, "ann", "correct horse", ["read"], totp_secret=SECRET)
    key = Path(f"{store}.key")
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    with _store(demo) as db:
        stored = db.user("ann")["totp_secret"]
        raw = db.db.execute("SELECT * FROM users").fetchall()
    assert stored.startswith("sealed:v1:") and SECRET not in stored and SECRET not in str(raw)
    assert sealing.unseal(store, "ann", stored) == SECRET
    with pytest.raises(sealing.SealError, match="another key, or a secret sealed for another user"):
        sealing.unseal(store, "bob", stored)  # the user's name is bound into the ciphertext
    now = [time.time()]
    with live(build_app([demo], clock=lambda: now[0])) as server, server.client() as http:
        assert _login(http, SECRET, now[0]).status_code == 200
    # a task may not read the key, as it may not read the store, even granted .goatclaw by name
    pipeline = demo / "pipelines" / "peek.yaml"
    pipeline.write_text("version: 1\npermissions: {files: {read: [., .goatclaw]}}\ntasks:\n"
                        f"  peek: {{uses: file.read, with: {{path: {key.relative_to(demo)}}}}}\n")
    result = goatclaw.run(pipeline, store=store)
    assert not result.ok and result.tasks["peek"].error_class == "permission_denied"
    assert "is one of the store's files (.goatclaw/goatclaw.db.key)" in result.tasks["peek"].error


def test_a_login_with_the_key_gone_is_refused_and_logged(demo: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = store_of(demo)
    accounts.add_user(store, "ann", "correct horse", ["read"], totp_secret=SECRET)
    Path(f"{store}.key").rename(demo / "elsewhere.key")
    now = [time.time()]
    with live(build_app([demo], clock=lambda: now[0])) as server, server.client() as http:
        assert _login(http, SECRET, now[0]).status_code == 401
    assert any("login of ann refused" in r.getMessage() and "is missing" in r.getMessage() for r in caplog.records)


def test_a_secret_stored_before_sealing_logs_in_and_is_sealed_then(demo: Path) -> None:
    store = store_of(demo)
    accounts.add_user(store, "ann", "correct horse", ["read"], totp_secret=SECRET)
    with _store(demo) as db:  # what a store written by an earlier goatclaw holds
        db.db.execute("UPDATE users SET totp_secret = ? WHERE name = 'ann'", (SECRET,))
    now = [time.time()]
    with live(build_app([demo], clock=lambda: now[0])) as server, server.client() as http:
        assert _login(http, SECRET, now[0]).status_code == 200
        with _store(demo) as db:
            stored = db.user("ann")["totp_secret"]
        assert stored.startswith("sealed:v1:") and SECRET not in stored
        now[0] += 30
        assert _login(http, SECRET, now[0]).status_code == 200  # and the sealed row logs in as well


def test_a_form_login_goes_to_next_on_this_server_only(demo: Path) -> None:
    accounts.add_user(store_of(demo), "ann", "correct horse", ["read"], totp_secret=SECRET)
    now = [time.time()]
    with live(build_app([demo], clock=lambda: now[0])) as server, server.client() as http:
        form = {"username": "ann", "password": "correct horse", "code": pyotp.TOTP(SECRET).at(now[0]),
                "next": "/ui/runs"}
        answer = http.post("/auth/login", data=form)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/runs"
        assert http.get("/auth/me").json()["name"] == "ann"
        now[0] += 30
        form.update(code=pyotp.TOTP(SECRET).at(now[0]), next="//evil.example/x")
        elsewhere = http.post("/auth/login", data=form)
        assert elsewhere.status_code == 200 and "location" not in elsewhere.headers  # not an open redirect


def test_an_expired_session_and_a_disabled_user(demo: Path) -> None:
    accounts.add_user(store_of(demo), "bob", "long enough", ["read"], totp_secret=SECRET)
    now = [time.time()]
    settings = ServerSettings(session_ttl=60)
    with live(build_app([demo], settings=settings, clock=lambda: now[0])) as server, server.client() as http:
        code = pyotp.TOTP(SECRET).at(now[0])
        assert http.post("/auth/login", json={"username": "bob", "password": "long enough", "code": code}
                         ).status_code == 200
        assert http.get("/auth/me").status_code == 200
        now[0] += 61
        expired = http.get("/auth/me")
        assert expired.status_code == 401
        now[0] += 30  # a fresh step: a new code
        assert http.post("/auth/login", json={"username": "bob", "password": "long enough",
                                              "code": pyotp.TOTP(SECRET).at(now[0])}).status_code == 200
        assert http.get("/auth/me").status_code == 200
        assert accounts.disable_user(store_of(demo), "bob") >= 1  # the live session (by the real clock) ended
        assert http.get("/auth/me").status_code == 401


def test_rate_limit_per_ip_and_per_token(demo: Path) -> None:
    key = token(demo, "read")
    settings = ServerSettings(per_ip_per_minute=5, per_token_per_minute=3, threat_threshold=100)
    with live(build_app([demo], settings=settings)) as server:
        with server.client(key) as http:
            codes = [http.get("/api/projects").status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]  # the token's 3 a minute
            limited = http.get("/api/projects")
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        with server.client() as http:
            assert http.get("/api/projects").status_code == 429  # the address's 5 are used up too
            assert http.get("/health").status_code == 200  # health is never limited


def test_a_client_is_blocked_by_its_threat_score(demo: Path) -> None:
    good = token(demo, "read")
    settings = ServerSettings(threat_threshold=6, block_for=60)
    with live(build_app([demo], settings=settings)) as server:
        with server.client("gct_abcdefabcdef_guess") as http:
            codes = [http.get("/api/projects").status_code for _ in range(3)]  # 2 points each
        assert codes == [401, 401, 401]
        with server.client(good) as http:
            blocked = http.get("/api/projects")  # even with a good token: the client is blocked
            assert blocked.status_code == 403 and blocked.json()["reason"] == "blocked"
            assert 50 <= int(blocked.headers["retry-after"]) <= 60
        assert server.state.threats.blocked_now() == 1
        assert httpx.get(server.url + "/health").status_code == 403  # refused everywhere while blocked
    # a fresh server (or the block's end) serves the client again
    with live(build_app([demo], settings=settings)) as server, server.client(good) as http:
        assert http.get("/api/projects").status_code == 200


def test_malformed_and_denied_requests_add_up(demo: Path) -> None:
    key = token(demo, "read")
    settings = ServerSettings(threat_threshold=3)
    with live(build_app([demo], settings=settings)) as server, server.client(key) as http:
        assert http.post("/api/projects/demo/runs", json={}).status_code == 403  # denied: 1
        assert http.post("/api/projects/demo/runs", json={}).status_code == 403  # 2
        assert http.get("/api/projects").status_code == 200
        assert http.post("/api/projects/demo/runs", json={}).status_code == 403  # 3: blocked now
        assert http.get("/api/projects").status_code == 403


@pytest.mark.parametrize(("ip", "refused"), [
    ({"deny": ["127.0.0.0/8"]}, True),
    ({"allow": ["10.0.0.0/8"]}, True),
    ({"allow": ["127.0.0.1/32"], "deny": ["10.0.0.0/8"]}, False),
])
def test_ip_allow_and_deny_lists(tmp_path: Path, ip: dict, refused: bool) -> None:
    folder = make_project(tmp_path / "demo", server="ip: " + json.dumps(ip))
    key = token(folder, "read")
    with live(build_app([folder])) as server, server.client(key) as http:
        answer = http.get("/api/projects")
        assert (answer.status_code == 403) is refused
        if refused:
            assert answer.json()["reason"] == "address"


def test_forwarded_for_counts_only_from_trusted_proxies(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "demo", server="ip: {deny: [203.0.113.0/24], trusted_proxies: [127.0.0.1]}")
    key = token(folder, "read")
    with live(build_app([folder])) as server, server.client(key) as http:
        assert http.get("/api/projects", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 403
        assert http.get("/api/projects", headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200
    folder2 = make_project(tmp_path / "other", server="ip: {deny: [203.0.113.0/24]}")
    key2 = token(folder2, "read")
    with live(build_app([folder2])) as server, server.client(key2) as http:  # no trusted proxy: the header is ignored
        assert http.get("/api/projects", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200


def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "demo", server="ip: {trusted_proxies: [127.0.0.1/32]}")
    accounts.add_user(store_of(folder), "ann", "correct horse", ["read"], totp_secret=SECRET)
    with live(build_app([folder])) as server, server.client() as http:
        login = {"username": "ann", "password": "correct horse", "code": pyotp.TOTP(SECRET).now()}
        answer = http.post("/auth/login", json=login, headers={"X-Forwarded-Proto": "https"})
        assert answer.status_code == 200 and "Secure" in answer.headers["set-cookie"]


def test_every_change_is_audited_with_its_principal(demo: Path) -> None:
    key = token(demo, "run", name="ci")
    accounts.add_user(store_of(demo), "ann", "correct horse", ["read"], totp_secret=SECRET)
    with live(build_app([demo])) as server, server.client(key) as http:
        run_id = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/hello.yaml",
                                                             "vars": {"who": "x"}}).json()["run_id"]
        run_to_end(http, "demo", run_id)
        http.post(f"/api/projects/demo/runs/{run_id}/cancel")  # 409: not running
        with server.client() as anon:
            anon.post("/auth/login", json={"username": "ann", "password": "nope nope", "code": "123456"})
    rows = goatclaw.audit_log(store_of(demo))
    by_action = {r.action: r for r in rows}
    triggered = by_action["run.triggered"]
    assert triggered.run_id == run_id and triggered.data["principal"] == "token:ci"
    assert triggered.data["vars"] == ["who"] and triggered.data["path"] == "pipelines/hello.yaml"
    refused = by_action["http.request"]
    assert refused.data["status"] == 409 and refused.data["principal"] == "token:ci"
    assert by_action["auth.login_failed"].data["user"] == "ann"
    assert goatclaw.verify_audit(store_of(demo)).ok


# -- the document and the metrics ------------------------------------------------------------------


def test_openapi_document_is_valid_and_lists_every_route(demo: Path) -> None:
    from openapi_spec_validator import validate

    app = build_app([demo])
    with live(app) as server, server.client() as http:
        doc = http.get("/openapi.json").json()
    validate(doc)
    routed = {r.path.replace(":path}", "}") for r in app.routes}
    assert routed == set(doc["paths"])
    trigger = doc["paths"]["/api/projects/{project}/runs"]["post"]
    assert trigger["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Trigger"}
    assert {"202", "429", "403"} <= set(trigger["responses"])


def test_metrics_are_prometheus_text(demo: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    key = token(demo, "run")
    with live(build_app([demo])) as server, server.client(key) as http:
        run_to_end(http, "demo", http.post("/api/projects/demo/runs",
                                           json={"pipeline": "pipelines/hello.yaml"}).json()["run_id"])
        text = http.get("/metrics").text
        with server.client() as anonymous:
            assert anonymous.get("/metrics").status_code == 401
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["goatclaw_runs"].samples[0].labels == {"status": "succeeded"}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["goatclaw_http_requests"].samples}
    assert requests[("/api/projects/{project}/runs", "202")] == 1
    assert families["goatclaw_http_request_duration_seconds"].type == "histogram"


# -- the commands ---------------------------------------------------------------------------------


def test_tokens_and_users_commands(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    monkeypatch.chdir(demo)
    runner = CliRunner()
    made = runner.invoke(app, ["tokens", "create", "ci", "--scope", "run", "--project", "demo"])
    assert made.exit_code == 0, made.output
    text = made.stdout.strip().splitlines()[-1]
    assert text.startswith("gct_")
    listed = runner.invoke(app, ["tokens", "list", "--json"])
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["scopes"], row["projects"]) == ("ci", ["run"], ["demo"])
    assert text not in listed.stdout and text.split("_", 2)[2] not in listed.stdout
    with live(build_app([demo])) as server, server.client(text) as http:
        assert http.get("/api/projects/demo/runs").status_code == 200
        assert runner.invoke(app, ["tokens", "revoke", "ci"]).exit_code == 0
        assert http.get("/api/projects/demo/runs").status_code == 401
    assert runner.invoke(app, ["tokens", "revoke", "ci"]).exit_code == 1  # nothing live to revoke
    added = runner.invoke(app, ["users", "add", "ann", "--scope", "read", "--password-stdin"],
                          input="a long passphrase\n")
    assert added.exit_code == 0, added.output
    assert "otpauth://totp/goatclaw:ann?secret=" in added.stdout
    again = runner.invoke(app, ["users", "add", "ann", "--scope", "read", "--password-stdin"], input="another one\n")
    assert again.exit_code == 2 and "there is a user 'ann' already" in again.output
    short = runner.invoke(app, ["users", "add", "bob", "--scope", "read", "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    users = json.loads(runner.invoke(app, ["users", "list", "--json"]).stdout)
    assert [u["name"] for u in users] == ["ann"] and "password" not in users[0] and "totp_secret" not in users[0]
    assert runner.invoke(app, ["users", "disable", "ann"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["users", "list", "--json"]).stdout)[0]["disabled_at"] is not None
    assert runner.invoke(app, ["users", "disable", "nobody"]).exit_code == 2


def test_a_service_starts_runs_through_the_queue(demo: Path) -> None:
    """What a scheduler does: a service of the app triggers a run without HTTP, checked and audited the same way."""
    import contextlib

    from goatclaw.server.runs import Refused
    from goatclaw.server.triggers import trigger

    started: list[str] = []

    @contextlib.asynccontextmanager
    async def scheduler(server: Any) -> AsyncIterator[None]:
        job = await trigger(server, server.project("demo"), "pipelines/hello.yaml", vars={"who": "cron"},
                            who="schedule:hourly", action="schedule.fired", detail={"cron": "0 * * * *"})
        started.append(job.run_id)
        with pytest.raises(Refused) as refused:
            await trigger(server, server.project("demo"), "pipelines/hello.yaml", vars={"nope": 1}, who="x")
        assert refused.value.status == 422
        yield

    key = token(demo, "read")
    with live(build_app([demo], services=[scheduler])) as server, server.client(key) as http:
        done = run_to_end(http, "demo", started[0])
        assert {t["id"]: t["output"] for t in done["tasks"]}["greet"] == "hello cron"
    [row] = goatclaw.audit_log(store_of(demo), action="schedule.fired")
    assert row.run_id == started[0] and row.data["principal"] == "schedule:hourly" and row.data["cron"] == "0 * * * *"
