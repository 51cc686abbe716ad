"""A small paginated JSON API behind OAuth2 for pipelines/api-harvest.yaml (standard library only).

    python pipelines/api/api_server.py --port-file out/api.port [--lifetime 60] [--client-secret S]

It listens on 127.0.0.1 on a free port and writes the port to ``--port-file`` (atomically:
a temporary file, then a rename) once it is listening; it exits after ``--lifetime`` seconds
or on ``/shutdown``. Routes:

* ``POST /token``: OAuth2 client credentials (client ``harvester``, secret ``--client-secret``,
  by HTTP Basic or form fields); answers ``{"access_token", "token_type", "expires_in"}``.
* ``GET /repos?page=N&per_page=M``: 23 repositories, a page at a time, with a ``Link`` header
  (``rel="next"``) while pages remain; needs ``Authorization: Bearer <token>``. The first
  request for page 3 is answered ``429`` with ``Retry-After: 1``, as a rate-limited API does.
* ``GET /stats``: how many requests each route got, and how many tokens were issued.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

LANGUAGES = ["python", "rust", "go", "python", "typescript", "rust", "python", "go"]
REPOS = [{"id": i, "name": f"repo-{i:02d}", "language": LANGUAGES[i % len(LANGUAGES)], "stars": (i * 37) % 101,
          "archived": i % 7 == 0, "owner": {"login": f"team-{i % 3}"}} for i in range(1, 24)]


class Api(BaseHTTPRequestHandler):
    """The API's routes; state lives on the server object."""

    server: ApiServer

    def log_message(self, *args: Any) -> None:
        """Quiet: the pipeline's log is its events."""

    def do_POST(self) -> None:
        """``/token`` only."""
        self.server.count("POST " + urlsplit(self.path).path)
        if urlsplit(self.path).path != "/token":
            return self._json(404, {"error": "not found"})
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                .items()}
        client = form.get("client_id"), form.get("client_secret")
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            client = user, password
        if form.get("grant_type") != "client_credentials" or client != ("harvester", self.server.client_secret):
            return self._json(401, {"error": "invalid_client", "error_description": "unknown client or secret"})
        token = secrets.token_urlsafe(16)
        with self.server.lock:
            self.server.tokens.add(token)
        self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 600})

    def do_GET(self) -> None:
        """``/repos``, ``/stats``, ``/shutdown``."""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.count(f"GET {parts.path}" + (f"?page={query['page']}" if "page" in query else ""))
        if parts.path == "/shutdown":
            self._json(200, {"stopping": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
        elif parts.path == "/stats":
            self._json(200, {"requests": dict(self.server.hits), "tokens": len(self.server.tokens)})
        elif parts.path == "/repos":
            self._repos(query)
        else:
            self._json(404, {"error": "not found"})

    def _repos(self, query: dict[str, str]) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.server.tokens:
            return self._json(401, {"error": "a bearer token from /token is needed"})
        page, per_page = int(query.get("page", "1")), min(int(query.get("per_page", "5")), 10)
        if page == 3 and self.server.once("rate-limit page 3"):
            return self._json(429, {"error": "slow down"}, {"Retry-After": "1"})
        start = (page - 1) * per_page
        links = {}
        if start + per_page < len(REPOS):
            links["Link"] = f'</repos?page={page + 1}&per_page={per_page}>; rel="next"'
        self._json(200, REPOS[start:start + per_page], links)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ApiServer(ThreadingHTTPServer):
    """The server and what it remembers: tokens issued, requests per route, one-time events."""

    daemon_threads = True

    def __init__(self, client_secret: str) -> None:
        super().__init__(("127.0.0.1", 0), Api)
        self.client_secret = client_secret
        self.tokens: set[str] = set()
        self.hits: Counter[str] = Counter()
        self.done: set[str] = set()
        self.lock = threading.Lock()

    def count(self, route: str) -> None:
        """Count a request to ``route``."""
        with self.lock:
            self.hits[route] += 1

    def once(self, event: str) -> bool:
        """True the first time ``event`` is asked about."""
        with self.lock:
            first = event not in self.done
            self.done.add(event)
            return first


def main() -> None:
    """Serve until ``/shutdown`` or ``--lifetime`` seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--lifetime", type=float, default=60.0)
    parser.add_argument("--client-secret", default=os.environ.get("HARVEST_CLIENT_SECRET", "local-demo-secret"))
    args = parser.parse_args()
    server = ApiServer(args.client_secret)
    timer = threading.Timer(args.lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    port_file = Path(args.port_file)
    port_file.parent.mkdir(parents=True, exist_ok=True)
    partial = port_file.with_name(port_file.name + ".tmp")
    partial.write_text(str(server.server_address[1]))
    partial.replace(port_file)  # a reader never sees an empty port file
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
