"""The wait task: real servers that come up late, real files, real commands, real ports."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from local_http import serving

import goatclaw
from goatclaw.errors import PermissionDenied, TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import build_grant
from goatclaw.spec.model import Permissions
from goatclaw.tasks.wait import wait

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable
    return asyncio.run(main())


def fails(awaitable: Awaitable[Any], error_class: str) -> TaskError:
    with pytest.raises(TaskError) as info:
        run(awaitable)
    assert info.value.error_class == error_class, info.value.message
    return info.value


class Health(BaseHTTPRequestHandler):
    """``/health`` answers 503 ``starting`` until ``ready_at``, then 200 ``{"status": "up"}``."""

    ready_at: ClassVar[float] = 0.0
    probes: ClassVar[int] = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        Health.probes += 1
        up = time.monotonic() >= Health.ready_at
        body = b'{"status": "up", "version": "2"}' if up else b'{"status": "starting"}'
        self.send_response(200 if up else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with serving(Health, _Quiet) as url:
        yield url


def ctx_for(ws: Path, *, network: tuple[str, ...] = ("127.0.0.1",), read: tuple[str, ...] = (".",),
            shell: Any = True) -> TaskContext:
    perms = Permissions(network=network, files_read=read, shell=shell)
    return TaskContext(run_id="r", task_id="t", workspace=ws, permissions=build_grant([(perms, "test")], ws))


def test_http_waits_until_the_service_is_up(service: str, tmp_path: Path) -> None:
    Health.ready_at, Health.probes = time.monotonic() + 0.6, 0
    out = run(wait(ctx_for(tmp_path), http={"url": service + "/health", "json": "status == 'up'"},
                   interval="100ms", timeout=10))
    assert out["ready"] and out["condition"] == "http" and out["attempts"] >= 3 and out["waited"] >= 0.5
    assert out["last"] == {"status": 200, "body": {"status": "up", "version": "2"}}
    assert Health.probes == out["attempts"]


def test_http_times_out_with_what_it_last_saw(service: str, tmp_path: Path) -> None:
    Health.ready_at = time.monotonic() + 60
    started = time.monotonic()
    err = fails(wait(ctx_for(tmp_path), http=service + "/health", interval=0.1, timeout=0.5), "timeout")
    assert time.monotonic() - started < 2
    assert "did not hold within 0.5s" in err.message and "status 503" in err.message
    assert err.details["last"]["body"] == {"status": "starting"}


def test_http_contains_and_a_refused_port(tmp_path: Path, service: str) -> None:
    Health.ready_at = 0.0
    assert run(wait(ctx_for(tmp_path), http={"url": service + "/health", "contains": '"version": "2"'}))["ready"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = fails(wait(ctx_for(tmp_path), http=f"http://127.0.0.1:{port}/", interval=0.05, timeout=0.3), "timeout")
    assert "connection" in err.message


def test_tcp_port_opens_late(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = socket.socket()

    def open_later() -> None:
        time.sleep(0.4)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    threading.Thread(target=open_later, daemon=True).start()
    try:
        out = run(wait(ctx_for(tmp_path), tcp=f"127.0.0.1:{port}", interval=0.1, timeout=5))
    finally:
        listener.close()
    assert out["ready"] and out["attempts"] >= 2 and out["last"] == {"connected": f"127.0.0.1:{port}"}


def test_file_appears_and_contains(tmp_path: Path) -> None:
    flag = tmp_path / "out" / "ready.flag"

    def write_later() -> None:
        time.sleep(0.3)
        flag.parent.mkdir()
        flag.write_text("starting\n")
        time.sleep(0.3)
        flag.write_text("starting\ndone\n")

    threading.Thread(target=write_later, daemon=True).start()
    out = run(wait(ctx_for(tmp_path), file={"path": "out/ready.flag", "contains": "done"}, interval=0.05, timeout=5))
    assert out["ready"] and out["waited"] >= 0.5


def test_command_exit_code(tmp_path: Path) -> None:
    (tmp_path / "count").write_text("0")
    script = "import pathlib,sys; p=pathlib.Path('count'); n=int(p.read_text())+1; p.write_text(str(n)); sys.exit(n<3)"
    out = run(wait(ctx_for(tmp_path), command=[sys.executable, "-c", script], interval=0.05, timeout=10))
    assert out["ready"] and out["attempts"] == 3 and out["last"]["exit_code"] == 0


def test_duration(tmp_path: Path) -> None:
    started = time.monotonic()
    assert run(wait(ctx_for(tmp_path), duration="200ms"))["waited"] == 0.2
    assert time.monotonic() - started >= 0.2


def test_grants_are_checked_before_the_first_probe(tmp_path: Path, service: str) -> None:
    Health.probes = 0
    with pytest.raises(PermissionDenied):
        run(wait(ctx_for(tmp_path, network=("example.org",)), http=service + "/health"))
    with pytest.raises(PermissionDenied):
        run(wait(ctx_for(tmp_path, network=("example.org",)), tcp="127.0.0.1:9"))
    with pytest.raises(PermissionDenied):
        run(wait(ctx_for(tmp_path, read=("out/",)), file="../etc/passwd"))
    with pytest.raises(PermissionDenied):
        run(wait(ctx_for(tmp_path, shell=False), command=["true"]))
    assert Health.probes == 0


@pytest.mark.parametrize("kwargs", [{}, {"tcp": "a:1", "file": "x"}, {"tcp": "nohost"}, {"duration": "soon"},
                                    {"file": "x", "timeout": 0}, {"http": "ftp://x"}, {"command": "true"},
                                    {"http": {"url": "http://127.0.0.1/", "status": "200"}}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    fails(wait(ctx_for(tmp_path), **kwargs), "invalid_input")


def test_wait_in_a_pipeline(project: Path, write_pipeline: Any, service: str) -> None:
    Health.ready_at = time.monotonic() + 0.3
    path = write_pipeline(f"""
        version: 1
        permissions: {{network: ["127.0.0.1"]}}
        tasks:
          up:
            uses: wait
            with: {{http: {{url: "{service}/health", status: 200}}, interval: 100ms, timeout: 20s}}
        """)
    assert goatclaw.check(path)[1] == []
    result = goatclaw.run(path)
    assert result.ok, {k: t.error for k, t in result.tasks.items()}
    assert result.outputs["up"]["last"]["status"] == 200
    bad = write_pipeline("version: 1\ntasks:\n  up:\n    uses: wait\n    with: {htp: x}\n", name="bad.yaml")
    assert any("'wait' takes no argument 'htp'" in str(p) for p in goatclaw.check(bad)[1])
