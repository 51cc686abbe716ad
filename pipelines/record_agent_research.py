"""Record pipelines/agent-research.cassette.json against the local OpenAI-compatible test server.

The server plays an agent (:func:`respond`): it looks python, rust and go up in the
catalogue and asks the MCP server ``time`` for the UTC time, all at once, saves the years
and the time with the save tool, then answers in the output schema. Run from the
repository root: ``python pipelines/record_agent_research.py``. tests/test_agent.py runs
the pipeline live against the same script.
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

LANGUAGES = ("python", "rust", "go")


def respond(body: dict[str, Any]) -> Reply:
    """The script: look every language up and ask the time, save the years and the time, answer."""
    results = [m for m in body.get("messages", []) if m.get("role") == "tool"]
    if not results:
        return Reply(None, tool_calls=[*(tool_call("catalogue", {"language": name}, id=f"call_{name}")
                                         for name in LANGUAGES),
                                       tool_call("time_get_current_time", {"timezone": "UTC"}, id="call_time")])
    if len(results) == len(LANGUAGES) + 1:
        found = {m["tool_call_id"]: json.loads(m["content"]) for m in results}
        entries = [found[f"call_{name}"]["entry"] for name in LANGUAGES]
        years = {e["name"]: e["year"] for e in entries if isinstance(e, dict) and "year" in e}
        checked = found["call_time"]
        checked_at = checked.get("datetime") if isinstance(checked, dict) else str(checked)
        return Reply(None, tool_calls=[tool_call("save", {"content": {"years": years, "checked_at": checked_at}},
                                                 id="call_save")])
    saved = json.loads(results[-1]["content"])
    return Reply(json.dumps({"written": saved.get("path"), "languages": len(LANGUAGES)}))


def main() -> None:
    """Start the server and record the pipeline's model calls to it."""
    import goatclaw

    cassette = REPO / "pipelines" / "agent-research.cassette.json"
    cassette.unlink(missing_ok=True)
    os.environ.update(OPENAI_API_KEY="sk-local")
    with FakeOpenAI(respond) as srv:
        os.environ["OPENAI_BASE_URL"] = srv.api_base  # 127.0.0.1, which the pipeline grants for the catalogue
        result = goatclaw.run(REPO / "pipelines" / "agent-research.yaml", llm="record", cassette=cassette,
                              workspace=REPO, store=False)
    print(result.status.value, {t: r.error for t, r in result.tasks.items() if r.error})


if __name__ == "__main__":
    main()
