"""Record pipelines/code-fix.cassette.json against the local OpenAI-compatible test server.

The server plays a programmer (:func:`respond`): it reads calc.py from the prompt and
answers with the file fixed (the mean divides by ``len(values)``). Run from the repository
root: ``python pipelines/record_code_fix.py``. tests/test_code_task.py runs the pipeline live
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


def shown_file(body: dict[str, Any], name: str) -> str:
    """The file ``name`` as the code task showed it (its line numbers taken off)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    block = user.split(f"--- {name}\n", 1)[1].split("\n\n--- ", 1)[0]
    return "\n".join(re.sub(r"^ *\d+ ?", "", line, count=1) for line in block.splitlines()) + "\n"


def respond(body: dict[str, Any]) -> Reply:
    """calc.py with the off-by-one removed."""
    fixed = shown_file(body, "calc.py").replace("(len(values) + 1)", "len(values)")
    return Reply(json.dumps({"summary": "mean divided by one value too many",
                             "files": [{"path": "calc.py", "content": fixed}]}))


def main() -> None:
    """Start the server and record the pipeline's model calls to it."""
    import goatclaw

    cassette = REPO / "pipelines" / "code-fix.cassette.json"
    cassette.unlink(missing_ok=True)
    os.environ.update(OPENAI_API_KEY="sk-local")
    with FakeOpenAI(respond) as srv:
        os.environ["OPENAI_BASE_URL"] = srv.api_base
        result = goatclaw.run(REPO / "pipelines" / "code-fix.yaml", llm="record", cassette=cassette,
                              workspace=REPO, store=False)
    print(result.status.value, {t: r.error for t, r in result.tasks.items() if r.error})
    print(json.dumps(result.tasks["fix"].output, indent=1)[:3000] if result.tasks["fix"].output else "")


if __name__ == "__main__":
    main()
