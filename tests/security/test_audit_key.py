"""The audit key stays secret: out of goatclaw's environment once read, masked in every output (#16.6).

These run ``goatclaw apply`` as a real process, so that a ``shell`` task's ``$PPID`` is
goatclaw itself and ``/proc/$PPID/environ`` is goatclaw's initial environment block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import goatclaw

KEY = "k3y-7d1f0a9c5e2b8461-audit"
REPO = Path(goatclaw.__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


def _apply(project: Path, pipeline: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOATCLAW_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "goatclaw", "apply", pipeline, *args], cwd=project,
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def _stored_bytes(project: Path) -> bytes:
    """The project's store files (the database, its WAL), as bytes."""
    return b"".join(p.read_bytes() for p in (project / ".goatclaw").glob("goatclaw.db*"))


def _project(tmp_path: Path, tasks: dict[str, object]) -> Path:
    (tmp_path / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n")
    pipeline = {"version": 1, "name": "peek", "permissions": {"shell": ["bash"], "files": {"read": ["."]}},
                "tasks": tasks}
    (tmp_path / "p.yaml").write_text(json.dumps(pipeline))
    return tmp_path


def test_a_shell_task_cannot_read_the_key_from_goatclaws_environment(tmp_path: Path) -> None:
    # rev: a reversed key is no form the redactor masks, so only a key that is not there stays out
    script = ("tr '\\0' '\\n' < /proc/$PPID/environ | grep -a '^GOATCLAW_AUDIT_KEY' | rev; "
              "env | grep -a '^GOATCLAW_AUDIT' | rev; echo ppid=$(tr '\\0' ' ' < /proc/$PPID/cmdline)")
    project = _project(tmp_path, {"peek": {"uses": "shell", "with": {"script": script}}})
    out = _apply(project, "p.yaml", "--output", "json", GOATCLAW_AUDIT_KEY=KEY)
    assert out.returncode == 0, out.stderr
    stdout = json.loads(out.stdout)["tasks"]["peek"]["output"]["stdout"]
    assert "-m goatclaw apply" in stdout  # $PPID really is the goatclaw process
    assert KEY[::-1] not in stdout and KEY not in out.stdout + out.stderr
    assert "=YEK_TIDUA_WALCTAOG" in stdout  # the variable was there at the start: its value is gone
    rows = goatclaw.audit_log(project / ".goatclaw" / "goatclaw.db")
    assert rows and all(r.hash.startswith("hmac:") for r in rows)  # the run still sealed with the key
    assert goatclaw.verify_audit(project / ".goatclaw" / "goatclaw.db", key=KEY).ok


def test_the_key_is_masked_in_json_and_plain_output_the_store_and_errors(tmp_path: Path) -> None:
    # the key reaches a task another way (here a file the user left in the workspace)
    project = _project(tmp_path, {
        "read": {"uses": "file.read", "with": {"path": "notes.txt"}},
        "boom": {"uses": "shell", "with": {"script": "cat notes.txt >&2; exit 3"}},
    })
    (project / "notes.txt").write_text(f"the audit key is {KEY}\n")
    for mode in ("json", "plain"):
        out = _apply(project, "p.yaml", "--output", mode, GOATCLAW_AUDIT_KEY=KEY)
        assert out.returncode == 1, out.stderr
        assert KEY not in out.stdout and KEY not in out.stderr, mode
        assert "***" in out.stdout + out.stderr, mode
    result = json.loads(_apply(project, "p.yaml", "--output", "json", GOATCLAW_AUDIT_KEY=KEY).stdout)
    assert result["tasks"]["read"]["output"] == "the audit key is ***\n"
    assert "the audit key is ***" in result["tasks"]["boom"]["error"]
    assert KEY.encode() not in _stored_bytes(project)


def test_the_key_can_come_from_a_file_and_neither_variable_reaches_a_task(tmp_path: Path) -> None:
    script = ("tr '\\0' '\\n' < /proc/$PPID/environ | grep -a '^GOATCLAW_AUDIT' | rev; env | grep -ac GOATCLAW_AUDIT"
              " || true")
    project = _project(tmp_path, {"peek": {"uses": "shell", "with": {"script": script}}})
    key_file = tmp_path.parent / f"{tmp_path.name}.key"
    key_file.write_text(KEY + "\n")
    out = _apply(project, "p.yaml", "--output", "json", GOATCLAW_AUDIT_KEY_FILE=str(key_file))
    assert out.returncode == 0, out.stderr
    stdout = json.loads(out.stdout)["tasks"]["peek"]["output"]["stdout"]
    assert str(key_file)[::-1] not in stdout and stdout.splitlines()[-1] == "0"
    store = project / ".goatclaw" / "goatclaw.db"
    rows = goatclaw.audit_log(store)
    assert rows and all(r.hash.startswith("hmac:") for r in rows)
    assert goatclaw.verify_audit(store, key=KEY).ok
    assert not goatclaw.verify_audit(store, key=KEY + "x").ok


def test_a_missing_key_file_is_a_clear_error_not_a_plain_chain(tmp_path: Path) -> None:
    project = _project(tmp_path, {"say": {"uses": "echo", "with": {"value": 1}}})
    out = _apply(project, "p.yaml", GOATCLAW_AUDIT_KEY_FILE=str(tmp_path / "nope.key"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "GOATCLAW_AUDIT_KEY_FILE: cannot read the audit key from" in out.stdout + out.stderr
    assert not (project / ".goatclaw" / "goatclaw.db").exists() or not goatclaw.audit_log(
        project / ".goatclaw" / "goatclaw.db")


def test_the_key_is_taken_once_and_held_by_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from goatclaw.security.auditkey import audit_key, forget_audit_key

    monkeypatch.setenv("GOATCLAW_AUDIT_KEY", KEY)
    assert audit_key() == KEY.encode()
    assert "GOATCLAW_AUDIT_KEY" not in os.environ  # children started from here on never get it
    assert audit_key() == KEY.encode()  # still held
    forget_audit_key()
    assert audit_key() is None
