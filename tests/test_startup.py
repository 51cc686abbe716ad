"""Start-up: ``goatclaw --version`` answers without importing the CLI's libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: What ``--version`` has no use for: the CLI framework, the terminal renderer, the event loop, TLS.
NOT_FOR_VERSION = ["typer", "click", "rich", "asyncio", "ssl", "yaml", "jinja2"]


def test_version_imports_no_cli_library() -> None:
    code = ("import json, sys\n"
            "from goatclaw.cli import main\n"
            "code = main(['--version'], exit=False)\n"
            f"heavy = sorted(m for m in {NOT_FOR_VERSION!r} if m in sys.modules)\n"
            "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("goatclaw ")
    assert json.loads(lines[-1]) == {"code": 0, "heavy": []}


def test_version_as_a_user_runs_it() -> None:
    done = subprocess.run([sys.executable, "-m", "goatclaw", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("goatclaw 0.") and done.stderr == ""
