"""The interactive shell, driven in a real terminal (tmux): status, a goal planned and run, Ctrl-C, quit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_server import FakeOpenAI, Reply, scripted

from goatclaw.cli.shell import Shell, completions, set_model

REPO = Path(__file__).resolve().parent.parent
PLAN = {"version": 1, "permissions": {"files": {"write": ["out/"]}}, "tasks": {
    "greet": {"uses": "echo", "with": {"value": "hello"}},
    "save": {"uses": "file.write", "needs": ["greet"],
             "with": {"path": "out/hello.txt", "content": "${{ tasks.greet.output }}"}}}}
SLOW = """version: 1
permissions: {shell: [sleep]}
tasks:
  nap: {uses: shell, with: {run: [sleep, "60"]}}
"""


class Tmux:
    """One tmux server of its own (``-L``) running one window; keys in, the screen out."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.socket = f"goatclaw-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex_quote(v)}" for k, v in env.items())
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "50", "-c", str(cwd),
                   f"env {exports} {command}; echo shell ended $?; sleep 30")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-200")

    def wait_for(self, text: str, timeout: float = 60, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(text) > after:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on the screen after {timeout}s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def shlex_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "goatclaw.yaml").write_text("# my project\nversion: 1\nmodel: openai/gpt-4o-mini\n")
    (tmp_path / "slow.yaml").write_text(SLOW)
    return tmp_path


@pytest.fixture
def terminal(project: Path) -> Iterator[tuple[Tmux, FakeOpenAI]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    with FakeOpenAI(scripted(Reply(json.dumps(PLAN)))) as srv:
        env = {"PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": srv.api_base,
               "HOME": str(project), "PATH": os.environ["PATH"], "TERM": "xterm-256color", "CI": ""}
        tmux = Tmux(f"{sys.executable} -m goatclaw", project, env)  # no arguments, on a terminal: the shell
        try:
            yield tmux, srv
        finally:
            tmux.close()


def test_the_shell_shows_status_plans_and_runs_a_goal_cancels_a_run_on_ctrl_c_and_quits(
        terminal: tuple[Tmux, FakeOpenAI], project: Path) -> None:
    tmux, srv = terminal
    tmux.wait_for("goatclaw>")
    tmux.send("status", "Enter")
    screen = tmux.wait_for("spent today:")
    assert "model: llm tasks without model: use openai/gpt-4o-mini" in screen
    assert "breakers open: none" in screen

    tmux.send("write a greeting to out/hello.txt", "Enter")
    tmux.wait_for("run / edit / save / cancel")
    tmux.send("run", "Enter")
    tmux.wait_for("goatclaw>", after=2)
    assert (project / "out" / "hello.txt").read_text() == "hello"
    assert len(srv.requests) == 1

    tmux.send("apply slow.yaml", "Enter")
    tmux.wait_for("nap")
    time.sleep(1.0)
    tmux.send("C-c")
    screen = tmux.wait_for("cancelled")
    tmux.wait_for("goatclaw>", after=3)  # the shell is still there

    tmux.send("model bad!name", "Enter")
    tmux.wait_for("is not a model name")  # refused, and the shell goes on
    tmux.wait_for("goatclaw>", after=4)

    tmux.send("quit", "Enter")
    tmux.wait_for("shell ended")
    history = (project / ".goatclaw" / "shell_history").read_text()
    assert "status" in history and "apply slow.yaml" in history


def test_completion_offers_commands_pipeline_files_task_ids_and_run_ids(project: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    shell = Shell(project)
    assert "status" in completions(shell, [])
    assert "slow.yaml" in completions(shell, ["apply"])
    assert list(completions(shell, ["apply", "slow.yaml", "--only"])) == ["nap"]
    assert list(completions(shell, ["why"])) == ["last"]  # no store yet: no run ids
    (project / "hi.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    import goatclaw

    done = goatclaw.run(project / "hi.yaml")
    assert list(completions(shell, ["runs", "show"])) == [done.run_id, "last"]


def test_model_is_switched_in_the_project_file_keeping_its_comments(project: Path) -> None:
    set_model(project / "goatclaw.yaml", "anthropic/claude-3-5-haiku-latest")
    assert (project / "goatclaw.yaml").read_text() == \
        "# my project\nversion: 1\nmodel: anthropic/claude-3-5-haiku-latest\n"


def _complete(project: Path, words: str, shell: str = "bash") -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "_GOATCLAW_COMPLETE": f"complete_{shell}",
           "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) if words.endswith(" ") else
                                                    len(words.split()) - 1), "_TYPER_COMPLETE_ARGS": words,
           "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    return subprocess.run([sys.executable, "-m", "goatclaw"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_typer_completion_offers_pipeline_files_and_run_ids(project: Path, shell: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert "slow.yaml" in _complete(project, "goatclaw apply ", shell)
    monkeypatch.chdir(project)
    (project / "hi.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    import goatclaw

    done = goatclaw.run(project / "hi.yaml")
    assert done.run_id in _complete(project, "goatclaw runs show ", shell)


def test_init_on_a_terminal_asks_a_provider_and_keeps_the_key_only_in_dotenv(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    env = {"PYTHONPATH": str(REPO), "HOME": str(tmp_path), "PATH": os.environ["PATH"], "TERM": "xterm-256color",
           "CI": ""}
    tmux = Tmux(f"{sys.executable} -m goatclaw init", tmp_path, env)
    try:
        tmux.wait_for("provider (")
        tmux.send("mistral", "Enter")
        tmux.wait_for("MISTRAL_API_KEY (empty: skip)")
        tmux.send("sk-typed-in-secret", "Enter")
        tmux.wait_for("keep it in: keyring, dotenv or none")
        tmux.send("dotenv", "Enter")
        screen = tmux.wait_for("shell ended 0")
    finally:
        tmux.close()
    assert "sk-typed-in-secret" not in screen  # typed hidden
    assert "model: mistral/mistral-small-latest" in (tmp_path / "goatclaw.yaml").read_text()
    assert "sk-typed-in-secret" not in (tmp_path / "goatclaw.yaml").read_text()
    assert (tmp_path / ".env").read_text() == "MISTRAL_API_KEY='sk-typed-in-secret'\n"
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600


def test_a_goal_in_the_shell_cancelled_at_the_question_runs_and_keeps_nothing(
        terminal: tuple[Tmux, FakeOpenAI], project: Path) -> None:
    tmux, _ = terminal
    tmux.wait_for("goatclaw>")
    tmux.send("write a greeting to out/hello.txt", "Enter")
    tmux.wait_for("run / edit / save / cancel")
    tmux.send("cancel", "Enter")
    tmux.wait_for("cancelled: nothing run")
    assert not (project / "out").exists()
    assert not (project / "pipelines" / "write-a-greeting-to-out-hello.yaml").exists()
