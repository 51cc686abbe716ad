"""Record pipelines/capitals.cassette.json against the local OpenAI-compatible test server.

The model answers each country of data/capitals.csv with its capital and a fact; the judge
(the llm_rubric of capitals-eval.test.yaml) accepts each fact. Run from the repository
root: ``python pipelines/record_capitals_eval.py``. It records through ``goatclaw test
--llm record``, so the judge's answers are recorded beside the pipeline's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from openai_server import FakeOpenAI, Reply  # noqa: E402

FACTS = {
    "France": ("Paris", "Paris has been the capital of France since the tenth century and stands on the Seine."),
    "Japan": ("Tokyo", "Tokyo, formerly Edo, became the capital of Japan in 1868 and is its largest city."),
    "Kenya": ("Nairobi", "Nairobi, the capital of Kenya, has a national park within its city limits."),
    "Australia": ("Canberra", "Canberra was purpose-built as the capital of Australia and opened in 1927."),
}


def respond(body: dict[str, Any]) -> Reply:
    """The script: a judge's question gets a pass; a country's question its capital and a fact."""
    messages = body.get("messages", [])
    if "strict reviewer" in str(messages[0].get("content")):
        return Reply(json.dumps({"verdict": "pass", "score": 0.9, "reason": "A true sentence about the capital."}),
                     prompt_tokens=120, completion_tokens=22)
    question = str(messages[-1].get("content"))
    country = next(c for c in FACTS if c in question)
    capital, fact = FACTS[country]
    return Reply(json.dumps({"capital": capital, "fact": fact}), prompt_tokens=58, completion_tokens=31)


def main() -> None:
    """Start the server, run copies of the pipeline (granted the local host) and its eval with --llm record.

    The copy differs only in its network grant, which is not part of a request's key, so
    its cassette answers the shipped pipeline.
    """
    pipelines = REPO / "pipelines"
    copy, tests = pipelines / "capitals.recording.yaml", pipelines / "capitals.recording.test.yaml"
    copy.write_text((pipelines / "capitals.yaml").read_text().replace("network: [api.openai.com]",
                                                                      "network: [api.openai.com, 127.0.0.1]"))
    tests.write_text((pipelines / "capitals-eval.test.yaml").read_text().replace("pipeline: capitals.yaml",
                                                                                 "pipeline: capitals.recording.yaml"))
    tape = copy.with_suffix(".cassette.json")
    tape.unlink(missing_ok=True)
    try:
        with FakeOpenAI(respond) as srv:
            env = {**os.environ, "OPENAI_BASE_URL": srv.api_base, "OPENAI_API_KEY": "sk-local"}
            subprocess.run([sys.executable, "-m", "goatclaw", "test", str(tests), "--llm", "record"], cwd=REPO,
                           env=env, check=False)
        tape.replace(pipelines / "capitals.cassette.json")
    finally:
        copy.unlink(missing_ok=True)
        tests.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
