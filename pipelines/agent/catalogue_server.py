"""A tiny local catalogue service for pipelines/agent-research.yaml (standard library only).

    python pipelines/agent/catalogue_server.py --port-file out/agent-catalogue.port [--lifetime 60]

It listens on 127.0.0.1 on a free port, writes the port to ``--port-file`` once it is
listening, and exits by itself after ``--lifetime`` seconds or when ``/shutdown`` is
requested. ``/languages`` lists the names it knows; ``/languages/NAME`` answers
``{"name", "year", "paradigm"}`` (404 for a name it does not know).
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CATALOGUE = {
    "python": {"year": 1991, "paradigm": "multi-paradigm"},
    "rust": {"year": 2015, "paradigm": "systems"},
    "go": {"year": 2009, "paradigm": "concurrent"},
    "haskell": {"year": 1990, "paradigm": "functional"},
}


class Handler(BaseHTTPRequestHandler):
    """The catalogue's routes."""

    def log_message(self, *args: Any) -> None:
        """Quiet: the pipeline's log is its events."""

    def do_GET(self) -> None:
        """``/languages``, ``/languages/NAME``, ``/shutdown``."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/shutdown":
            self._send(200, {"stopping": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
        elif path == "/languages":
            self._send(200, {"languages": sorted(CATALOGUE)})
        elif path.startswith("/languages/") and path.removeprefix("/languages/") in CATALOGUE:
            name = path.removeprefix("/languages/")
            self._send(200, {"name": name, **CATALOGUE[name]})
        else:
            self._send(404, {"error": f"no such entry: {path}"})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    """Serve until ``/shutdown`` or ``--lifetime`` seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    timer = threading.Timer(args.lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    port_file = Path(args.port_file)
    port_file.parent.mkdir(parents=True, exist_ok=True)
    port_file.write_text(str(server.server_address[1]))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
