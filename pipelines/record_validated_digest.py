"""Record pipelines/validated-digest.cassette.json against the local OpenAI-compatible test server.

The server answers too briefly first and well once the request carries the fix loop's
feedback; the judge passes. Run from the repository root:
``python pipelines/record_validated_digest.py``.
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
    """The script: a judge verdict, a good answer after feedback, else a too-short one."""
    text = "\n".join(str(m.get("content")) for m in body.get("messages", []))
    if "strict reviewer" in text:
        return Reply(json.dumps({"verdict": "pass", "score": 0.9, "reason": "every item is about Python packaging"}))
    if "rejected because" in text:
        return Reply(json.dumps({"title": "Python packaging", "confidence": 0.85, "items": [
            "Declare metadata in pyproject.toml", "Build wheels with python -m build", "Pin tools, not libraries"]}))
    return Reply(json.dumps({"title": "Python packaging", "confidence": 0.6, "items": ["Use pyproject.toml"]}))


def main() -> None:
    """Start the server, run the pipeline with ``--llm record``, stop the server."""
    cassette = REPO / "pipelines" / "validated-digest.cassette.json"
    cassette.unlink(missing_ok=True)
    with FakeOpenAI(respond) as srv:
        env = {**os.environ, "OPENAI_BASE_URL": srv.api_base, "OPENAI_API_KEY": "sk-local"}
        subprocess.run([sys.executable, "-m", "goatclaw", "apply", "pipelines/validated-digest.yaml", "--llm", "record",
                        "--store", str(REPO / "out" / "record.db")], cwd=REPO, env=env, check=True)


if __name__ == "__main__":
    main()
