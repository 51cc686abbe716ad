"""A tiny local web site and search API for pipelines/research-digest.yaml (standard library only).

    python pipelines/research/site_server.py --port-file out/research-site.port [--lifetime 60]

It listens on 127.0.0.1 on a free port, writes the port to ``--port-file`` once it is
listening, and exits after ``--lifetime`` seconds or on ``/shutdown``. ``/NAME.html`` serves
the pages of ``site/``; ``/search?q=...&format=json`` answers as a SearXNG instance does
(``{"results": [{"url", "title", "content"}]}``), listing every page whose text shares a word
with the query.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SITE = Path(__file__).resolve().parent / "site"


class Handler(BaseHTTPRequestHandler):
    """The site's routes."""

    def log_message(self, *args: Any) -> None:
        """Quiet: the pipeline's log is its events."""

    def do_GET(self) -> None:
        """``/NAME.html``, ``/search``, ``/shutdown``."""
        parts = urlsplit(self.path)
        if parts.path == "/shutdown":
            self._send(200, b'{"stopping": true}', "application/json")
            threading.Thread(target=self.server.shutdown, daemon=True).start()
        elif parts.path == "/search":
            self._send(200, json.dumps(search(self, parse_qs(parts.query).get("q", [""])[0])).encode(),
                       "application/json")
        elif re.fullmatch(r"/[a-z0-9-]+\.html", parts.path) and (SITE / parts.path[1:]).is_file():
            self._send(200, (SITE / parts.path[1:]).read_bytes(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def search(handler: BaseHTTPRequestHandler, query: str) -> dict[str, Any]:
    """The pages sharing a word of four letters or more with ``query``, in name order."""
    words = {w for w in re.findall(r"[a-z]{4,}", query.lower())}
    base = f"http://127.0.0.1:{handler.server.server_address[1]}"
    results = []
    for page in sorted(SITE.glob("*.html")):
        html = page.read_text(encoding="utf-8")
        if words & set(re.findall(r"[a-z]{4,}", html.lower())):
            title = re.search(r"<title>(.*?)</title>", html)
            results.append({"url": f"{base}/{page.name}", "title": title.group(1) if title else page.stem,
                            "content": ""})
    return {"query": query, "results": results}


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
