"""Record pipelines/llm-cascade.cassette.json against the local OpenAI-compatible test server.

The cheap model (gpt-4o-mini) answers the scheduler change well and the retries change
too vaguely; the middle model (gpt-4.1-mini), given the failed rules, answers well. Run
from the repository root: ``python pipelines/record_llm_cascade.py``.
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


def respond(body: dict[str, Any]) -> Reply:
    """The script: the cheap model is vague about retries; every other answer is good."""
    text = "\n".join(str(m.get("content")) for m in body.get("messages", []))
    if "retries" in text and body.get("model") == "gpt-4o-mini":
        return Reply(json.dumps({"line": "Retries.", "confidence": 0.4}), prompt_tokens=48, completion_tokens=12)
    if "retries" in text:
        return Reply(json.dumps({"line": "Retries now wait with jitter, so failing tasks no longer retry in step.",
                                 "confidence": 0.9}), prompt_tokens=96, completion_tokens=24)
    return Reply(json.dumps({"line": "The scheduler starts ready tasks 3x faster on large graphs.",
                             "confidence": 0.85}), prompt_tokens=48, completion_tokens=20)


def main() -> None:
    """Start the server, run a copy of the pipeline granted the local host with ``--llm record``, stop the server.

    The copy differs only in its network grant, which is not part of a request's key, so
    its cassette answers the shipped pipeline.
    """
    pipelines = REPO / "pipelines"
    copy = pipelines / "llm-cascade.recording.yaml"
    text = (pipelines / "llm-cascade.yaml").read_text()
    copy.write_text(text.replace("network: [api.openai.com]", "network: [api.openai.com, 127.0.0.1]"))
    try:
        with FakeOpenAI(respond) as srv:
            env = {**os.environ, "OPENAI_BASE_URL": srv.api_base, "OPENAI_API_KEY": "sk-local"}
            subprocess.run([sys.executable, "-m", "goatclaw", "apply", str(copy), "--llm", "record",
                            "--store", str(REPO / "out" / "record.db")], cwd=REPO, env=env, check=True)
        copy.with_suffix(".cassette.json").replace(pipelines / "llm-cascade.cassette.json")
    finally:
        copy.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
