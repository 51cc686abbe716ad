"""A tiny, deliberately flaky HTTP service for pipelines/flaky-service.yaml (standard library only).

    python pipelines/flaky/server.py --port-file out/flaky.port [--lifetime 60]

It listens on 127.0.0.1 on a free port, writes the port to ``--port-file`` once it is
listening, and exits by itself after ``--lifetime`` seconds or when ``/shutdown`` is
requested. Each path fails in its own way (counters start again with every server):

* ``/recovering``: 503 twice, then 200
* ``/rate-limited``: 429 with ``Retry-After: 1`` once, then 200
* ``/broken``: always 500
* ``/health``: always 200
* ``/shutdown``: 200, then the server stops
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HITS: Counter[str] = Counter()
LOCK = threading.Lock()


def reply_for(path: str, hit: int) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, extra headers and JSON body for the ``hit``-th request (1-based) to ``path``."""
    if path == "/recovering":
        if hit <= 2:
            return 503, {}, {"error": "warming up", "hit": hit}
        return 200, {}, {"message": "recovered", "hit": hit}
    if path == "/rate-limited":
        if hit <= 1:
            return 429, {"Retry-After": "1"}, {"error": "slow down", "hit": hit}
        return 200, {}, {"message": "thanks for waiting", "hit": hit}
    if path == "/broken":
        return 500, {}, {"error": "this one never works", "hit": hit}
    if path in ("/health", "/shutdown"):
        return 200, {}, {"ok": True}
    return 404, {}, {"error": f"no such path {path}"}


class Handler(BaseHTTPRequestHandler):
    """Answers from :func:`reply_for`; ``/shutdown`` also stops the server."""

    def do_GET(self) -> None:
        """Count the request and answer it."""
        path = self.path.split("?", 1)[0]
        with LOCK:
            HITS[path] += 1
            hit = HITS[path]
        status, headers, body = reply_for(path, hit)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        if path == "/shutdown":
            threading.Thread(target=self.server.shutdown).start()  # shutdown() waits for serve_forever

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stdout (the pipeline sends it to out/flaky.log)."""
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    """Serve until ``/shutdown`` or the lifetime is over; the port goes to the port file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    timer = threading.Timer(args.lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    port_file: Path = args.port_file
    port_file.parent.mkdir(parents=True, exist_ok=True)
    partial = port_file.with_name(port_file.name + ".tmp")
    partial.write_text(str(server.server_address[1]))
    os.replace(partial, port_file)  # readers never see a half-written port
    print(f"flaky service on port {server.server_address[1]} for at most {args.lifetime:g}s", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        timer.cancel()
        server.server_close()
        print("flaky service stopped", flush=True)


if __name__ == "__main__":
    main()
