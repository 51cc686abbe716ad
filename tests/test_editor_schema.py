"""What an editor shows: a real yaml-language-server (npm, under .ci/node) reading goatclaw's schemas.

The server is started over stdio and spoken to in LSP as VS Code's YAML extension does:
a pipeline is opened with its modeline, and the test asks for completions inside ``with:``
and collects the diagnostics the server publishes. ``.ci/run`` installs the server; here it
is skipped when missing, and in CI a missing server is a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from goatclaw.cli.app import app

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / ".ci" / "node" / "node_modules" / ".bin" / "yaml-language-server"


class LanguageServer:
    """A yaml-language-server process and the little of LSP the tests need (JSON-RPC over stdio)."""

    def __init__(self) -> None:
        self.settings = {"validate": True, "completion": True, "hover": True, "schemas": {},
                         "schemaStore": {"enable": False}}
        self.proc = subprocess.Popen([str(SERVER), "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.diagnostics: dict[str, list[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": os.getpid(), "rootUri": REPO.as_uri(), "capabilities": {
            "workspace": {"configuration": True},
            "textDocument": {"publishDiagnostics": {}, "completion": {"completionItem": {"snippetSupport": False}}}}})
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": {"yaml": self.settings}})

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            headers = {}
            while (line := out.readline().decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
            if not headers:
                return  # the server ended
            self.inbox.put(json.loads(out.read(int(headers["content-length"]))))

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification."""
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any], timeout: float = 30) -> Any:
        """Send a request and answer the server's own requests until its response comes."""
        rid = next(self.ids)
        self._send({"id": rid, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while True:
            message = self.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if message.get("id") == rid and "method" not in message:
                assert "error" not in message, message
                return message.get("result")
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("method") == "workspace/configuration":
            self._send({"id": message["id"], "result": [self.settings for _ in message["params"]["items"]]})
        elif "id" in message and "method" in message:
            self._send({"id": message["id"], "result": None})
        elif message.get("method") == "textDocument/publishDiagnostics":
            self.diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]

    def open(self, path: Path, text: str) -> str:
        """Open a document (the file need not exist: the text is sent); its URI."""
        uri = path.as_uri()
        self.diagnostics.pop(uri, None)
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1,
                                                              "text": text}})
        return uri

    def completions(self, uri: str, line: int, character: int) -> set[str]:
        """The labels the server offers at a position."""
        found = self.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                         "position": {"line": line, "character": character}})
        items = found.get("items", []) if isinstance(found, dict) else found or []
        return {item["label"] for item in items}

    def diagnostics_of(self, uri: str, timeout: float = 30) -> list[dict[str, Any]]:
        """The diagnostics the server publishes for ``uri`` (a hover keeps its loop turning meanwhile)."""
        deadline = time.monotonic() + timeout
        while uri not in self.diagnostics:
            assert time.monotonic() < deadline, "no diagnostics published"
            self.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 1}})
            time.sleep(0.1)
        return self.diagnostics[uri]

    def close(self) -> None:
        """Stop the server."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LanguageServer]:
    if not SERVER.exists() or shutil.which("node") is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail("yaml-language-server is not installed under .ci/node (see .ci/run)")
        pytest.skip("yaml-language-server is not installed (.ci/run installs it under .ci/node)")
    srv = LanguageServer()
    yield srv
    srv.close()


PIPELINE = ("# yaml-language-server: $schema={schema}\nversion: 1\ntasks:\n  digest:\n    uses: {uses}\n"
            "    with:\n      {key}: x\n      \n")
#: The line and column of the empty line under ``with:``, where a user asks for completion.
BLANK = (7, 6)


def test_a_shipped_pipeline_s_modeline_completes_the_keys_of_research(server: LanguageServer) -> None:
    """As a pipeline in pipelines/ is edited: the modeline's relative path, the shipped schema, research's keys."""
    uri = server.open(REPO / "pipelines" / "editing.yaml",
                      PIPELINE.format(schema="../schemas/pipeline.schema.json", uses="research", key="question"))
    offered = server.completions(uri, *BLANK)
    assert {"urls", "search", "memory", "max_pages", "max_passages", "fix_attempts", "model"} <= offered, offered
    assert "question" not in offered  # already there
    assert not {"paginate", "url", "goal", "prompt"} & offered  # http's, code's and llm's keys are not offered here
    http = server.open(REPO / "pipelines" / "editing-http.yaml",
                       PIPELINE.format(schema="../schemas/pipeline.schema.json", uses="http", key="url"))
    assert {"paginate", "auth", "select", "method"} <= server.completions(http, *BLANK)


def test_the_editor_flags_a_misspelt_research_key_and_a_missing_question(server: LanguageServer) -> None:
    uri = server.open(REPO / "pipelines" / "editing-typo.yaml",
                      PIPELINE.format(schema="../schemas/pipeline.schema.json", uses="research", key="questoin"))
    found = {(d["range"]["start"]["line"], d["message"]) for d in server.diagnostics_of(uri)}
    assert (6, "Property questoin is not allowed.") in found, found
    assert (5, 'Missing property "question".') in found, found  # at with:


def test_the_printed_schema_completes_an_installed_plugin_s_keys(server: LanguageServer, tmp_path: Path) -> None:
    """``goatclaw schema > schemas/pipeline.schema.json``, for a project with plugins: their keys too."""
    pytest.importorskip("goatclaw_example", reason="the example plugin is not installed (plugins/goatclaw-example)")
    printed = CliRunner().invoke(app, ["schema"])
    assert printed.exit_code == 0, printed.output
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "pipeline.schema.json").write_text(printed.stdout)
    uri = server.open(tmp_path / "pipelines" / "slug.yaml",
                      PIPELINE.format(schema="../schemas/pipeline.schema.json", uses="slugify", key="text"))
    assert {"max_length", "separator"} <= server.completions(uri, *BLANK)
