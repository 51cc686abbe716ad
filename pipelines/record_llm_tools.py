"""Record pipelines/llm-tools.cassette.json against the local OpenAI-compatible test server.

The server plays a model that calls tools: first ``read_languages``, then ``slugify`` for
every language at once, then an answer built from the slugs the tools returned. Run from
the repository root: ``python pipelines/record_llm_tools.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from openai_server import FakeOpenAI, Reply, tool_call  # noqa: E402


def respond(body: dict[str, Any]) -> Reply:
    """The script: read the file, slug every language, answer with the slugs."""
    messages = body.get("messages", [])
    results = [m for m in messages if m.get("role") == "tool"]
    if not results:
        return Reply(None, tool_calls=[tool_call("read_languages", {}, id="call_read")])
    if len(results) == 1:
        languages = json.loads(results[0]["content"])
        return Reply(None, tool_calls=[tool_call("slugify", {"text": f"{name} {about['summary']}"}, id=f"call_{name}")
                                       for name, about in languages.items()])
    names = [m["tool_call_id"].removeprefix("call_") for m in results[1:]]
    pages = [{"language": n, "slug": json.loads(m["content"])} for n, m in zip(names, results[1:], strict=True)]
    return Reply(json.dumps({"pages": pages}))


def main() -> None:
    """Start the server and record the pipeline's calls to it (a copy that may reach it, the same requests)."""
    import goatclaw

    cassette = REPO / "pipelines" / "llm-tools.cassette.json"
    cassette.unlink(missing_ok=True)
    original = REPO / "pipelines" / "llm-tools.yaml"
    copy = original.with_name(".llm-tools.recording.yaml")
    copy.write_text(original.read_text().replace("network: [api.openai.com]", "network: [api.openai.com, 127.0.0.1]"))
    os.environ.update(OPENAI_BASE_URL="", OPENAI_API_KEY="sk-local")
    try:
        with FakeOpenAI(respond) as srv:
            os.environ["OPENAI_BASE_URL"] = srv.api_base
            result = goatclaw.run(copy, llm="record", cassette=cassette, workspace=REPO, store=False)
    finally:
        copy.unlink()
    print(result.status.value, {t: r.error for t, r in result.tasks.items() if r.error})


if __name__ == "__main__":
    main()
