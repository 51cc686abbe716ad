"""The "application" that pipelines/deploy-and-wait.yaml deploys: a web service that is slow to start.

    python service.py --port-file PATH --version V [--warmup 1.0] [--lifetime 60]

It listens on 127.0.0.1 at once (writing its port to ``--port-file``, atomically) but answers
``/health`` with ``503 {"status": "starting"}`` for ``--warmup`` seconds, as a service that
loads its caches does, then ``200 {"status": "up", "version": V}``. ``/version`` gives the
version; ``/shutdown`` stops it, and so does ``--lifetime``. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Service(BaseHTTPRequestHandler):
    """``/health``, ``/version``, ``/shutdown``."""

    server: App

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """Answer by path."""
        up = time.monotonic() >= self.server.ready_at
        if self.path == "/health":
            self._json(200 if up else 503, {"status": "up" if up else "starting", "version": self.server.version})
        elif self.path == "/version":
            self._json(200, {"version": self.server.version})
        elif self.path == "/shutdown":
            self._json(200, {"stopping": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
        else:
            self._json(404, {"error": "not found"})

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class App(ThreadingHTTPServer):
    """The server, its version and when it becomes healthy."""

    daemon_threads = True

    def __init__(self, version: str, warmup: float) -> None:
        super().__init__(("127.0.0.1", 0), Service)
        self.version = version
        self.ready_at = time.monotonic() + warmup


def main() -> None:
    """Serve until ``/shutdown`` or ``--lifetime`` seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args()
    app = App(args.version, args.warmup)
    timer = threading.Timer(args.lifetime, app.shutdown)
    timer.daemon = True
    timer.start()
    port_file = Path(args.port_file)
    port_file.parent.mkdir(parents=True, exist_ok=True)
    partial = port_file.with_name(port_file.name + ".tmp")
    partial.write_text(str(app.server_address[1]))
    partial.replace(port_file)
    try:
        app.serve_forever()
    finally:
        app.server_close()


if __name__ == "__main__":
    main()
