"""Record pipelines/summarise-the-languages-catalogue-into-out.yaml and its cassette with the planner.

The local OpenAI-compatible test server (tests/openai_server.py) plays both models: asked
to plan (the planner's system prompt), it answers with a pipeline whose first draft names
an unknown ``needs`` (so the cassette also holds the repair); asked by the pipeline's
``llm`` task, it answers with a one-line summary per language. Planning is recorded with
``goatclaw.planner.aplan_goal(llm="record")`` into the plan's own cassette, then the plan
runs recording its ``llm`` task into the same file (a copy that may reach the local
server). Run from the repository root: ``python pipelines/record_planned_summary.py``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from openai_server import FakeOpenAI, Reply  # noqa: E402

GOAL = "Summarise the languages catalogue into out/languages.md"
PLAN: dict[str, Any] = {
    "version": 1,
    "description": "A one-line summary per language of pipelines/data/languages.json, as Markdown.",
    "permissions": {"network": ["api.openai.com"],
                    "files": {"read": ["pipelines/data/"], "write": ["out/"]}},
    "tasks": {
        "catalogue": {"uses": "file.read", "with": {"path": "pipelines/data/languages.json", "format": "json"}},
        "summarise": {"uses": "llm", "needs": ["catalogue"], "with": {
            "model": "openai/gpt-4o-mini", "temperature": 0, "max_tokens": 300,
            "system": "You are a terse technical writer.",
            "prompt": "One Markdown bullet per language, one line each: ${{ tasks.catalogue.output | tojson }}"}},
        "save": {"uses": "file.write", "needs": ["summarise"],
                 "with": {"path": "out/languages.md", "content": "${{ tasks.summarise.output.text }}\n"}},
    },
}


def respond(body: dict[str, Any]) -> Reply:
    """Plan (a first draft with an unknown needs, then the repair), or summarise."""
    system = str(body["messages"][0]["content"])
    if system.startswith("You write goatclaw pipeline files"):
        if sum(1 for m in body["messages"] if m["role"] == "assistant") == 0:
            broken = copy.deepcopy(PLAN)
            broken["tasks"]["save"]["needs"] = ["summary"]
            return Reply(json.dumps(broken))
        return Reply(json.dumps(PLAN))
    return Reply("- **python**: readable, batteries included\n- **rust**: fast and memory-safe\n"
                 "- **go**: simple, with cheap concurrency")


def main() -> None:
    """Plan with the server recording, save the plan, then run a copy that may reach the server, recording."""
    import goatclaw
    from goatclaw.planner import plan_goal

    os.chdir(REPO)
    folder = REPO / "pipelines"
    os.environ.update(OPENAI_API_KEY="sk-local")
    with FakeOpenAI(respond) as srv:
        os.environ["OPENAI_BASE_URL"] = srv.api_base
        planned = plan_goal(GOAL, model="openai/gpt-4o-mini", llm="record", folder=folder)
        planned.path.with_suffix(".cassette.json").unlink(missing_ok=True)
        planned = plan_goal(GOAL, model="openai/gpt-4o-mini", llm="record", folder=folder)
        assert planned.ok, [str(p) for d in planned.drafts for p in d.errors]
        path = planned.save()
        recording = path.with_name(f".{path.stem}.recording.yaml")
        recording.write_text(path.read_text().replace("  - api.openai.com\n", "  - api.openai.com\n  - 127.0.0.1\n"))
        try:
            result = goatclaw.run(recording, llm="record", cassette=path.with_suffix(".cassette.json"),
                                  workspace=REPO, store=False)
        finally:
            recording.unlink()
    print(path.relative_to(REPO), len(planned.drafts), "drafts;", result.status.value,
          {t: r.error for t, r in result.tasks.items() if r.error})


if __name__ == "__main__":
    main()
