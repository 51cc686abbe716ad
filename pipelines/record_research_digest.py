"""Record pipelines/research-digest.cassette.json against the local OpenAI-compatible test server.

The server plays a researcher (:func:`respond`): its first answer misquotes a passage, so the
research task's citation check rejects it; its second cites the first sentence of the two
best passages word for word. Run from the repository root:
``python pipelines/record_research_digest.py``. tests/test_research.py runs the pipeline live
against the same script.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from openai_server import FakeOpenAI, Reply  # noqa: E402


def passages(body: dict[str, Any]) -> dict[int, str]:
    """The numbered passages of the research task's question: number → text."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    listed = user.split("Passages:\n\n", 1)[1]
    found = re.split(r"(?m)^\[(\d+)\] [^\n]*\n", listed)
    return {int(n): text.strip() for n, text in zip(found[1::2], found[2::2], strict=True)}


def respond(body: dict[str, Any]) -> Reply:
    """First a misquote (rejected), then the first sentence of passages 1 and 2, copied exactly."""
    texts = passages(body)
    first = [re.split(r"(?<=[.;])\s", texts[n], maxsplit=1)[0] for n in sorted(texts)[:2]]
    answered = any(m["role"] == "assistant" for m in body["messages"])
    quote2 = first[1] if answered else "WAL works on every network filesystem without any limits"
    answer = {"answer": "WAL keeps changes in a separate log instead of a rollback journal [1]. "
                        "It has limits too [2].",
              "citations": [{"n": 1, "quote": first[0]}, {"n": 2, "quote": quote2}]}
    return Reply(json.dumps(answer))


def main() -> None:
    """Start the server and record the pipeline's model calls to it."""
    import goatclaw

    cassette = REPO / "pipelines" / "research-digest.cassette.json"
    cassette.unlink(missing_ok=True)
    os.environ.update(OPENAI_API_KEY="sk-local")
    with FakeOpenAI(respond) as srv:
        os.environ["OPENAI_BASE_URL"] = srv.api_base  # 127.0.0.1, which the pipeline grants for the site
        result = goatclaw.run(REPO / "pipelines" / "research-digest.yaml", llm="record", cassette=cassette,
                              workspace=REPO, store=False)
    print(result.status.value, {t: r.error for t, r in result.tasks.items() if r.error})


if __name__ == "__main__":
    main()
