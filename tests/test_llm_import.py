"""litellm's import never freezes a run: it happens in a thread, and no timeout counts it.

Each test runs in a fresh interpreter (litellm must not be imported yet), against the local
OpenAI-compatible server of tests/openai_server.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import FakeOpenAI

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _fresh(code: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, (os.environ.get("PYTHONPATH"), str(REPO / "tests"))))})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PIPELINE = """
version: 1
concurrency: 4
permissions: {{shell: true, network: [127.0.0.1]}}
tasks:
  nap:
    uses: shell
    timeout: 1s
    with: {{run: [sleep, "0.2"]}}
  ask:
    uses: llm
    timeout: 1s
    retry: {{attempts: 1}}
    with: {{model: openai/gpt-4o-mini, prompt: hi, api_base: "{base}", api_key: sk-test}}
"""

RUN = """
import json, sys, time, goatclaw
assert 'litellm' not in sys.modules
started = time.monotonic()
r = goatclaw.run('p.yaml', store=False)
print(json.dumps({"ok": r.ok, "errors": {t: v.error for t, v in r.tasks.items()},
                  "nap_s": r.tasks['nap'].duration, "wall_s": time.monotonic() - started}))
"""


def test_a_shell_task_beside_the_first_llm_call_is_not_held_up(tmp_path: Path) -> None:
    with FakeOpenAI() as srv:
        (tmp_path / "p.yaml").write_text(PIPELINE.format(base=srv.api_base))
        got = _fresh(RUN, tmp_path)
    assert got["ok"], got["errors"]  # a 1 s timeout does not count the import (about 2 s here)
    assert got["nap_s"] < 0.9, got  # the loop kept running: sleep 0.2 took about 0.2 s


def test_the_import_starts_as_soon_as_the_plan_holds_an_llm_task(tmp_path: Path) -> None:
    code = """
import asyncio, json, sys, threading, goatclaw
async def main():
    task = asyncio.ensure_future(goatclaw.arun('p.yaml', store=False))
    for _ in range(200):  # the llm task waits for the shell task: the import must already be under way
        await asyncio.sleep(0.01)
        if any(t.name == 'goatclaw-import-litellm' for t in threading.enumerate()) or 'litellm' in sys.modules:
            break
    seen = any(t.name == 'goatclaw-import-litellm' for t in threading.enumerate()) or 'litellm' in sys.modules
    r = await task
    print(json.dumps({"seen": seen, "ok": r.ok, "errors": {t: v.error for t, v in r.tasks.items()}}))
asyncio.run(main())
"""
    with FakeOpenAI() as srv:
        (tmp_path / "p.yaml").write_text(PIPELINE.format(base=srv.api_base).replace("\"0.2\"", "\"1.5\"")
                                         .replace("timeout: 1s\n    with: {run", "timeout: 5s\n    with: {run")
                                         .replace("    retry:", "    needs: [nap]\n    retry:"))
        got = _fresh(code, tmp_path)
    assert got["ok"], got["errors"]
    assert got["seen"]
