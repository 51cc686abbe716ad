"""A missing extra is one clear message: which extra, which module, the install line; never a traceback.

Each test runs goatclaw in a subprocess whose import system has the extra's modules
blocked (``sys.modules[name] = None``: ``import name`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec`` finds nothing, exactly as on an install without the extra).
tests/test_install.py does the same on a real fresh default install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from goatclaw.extras import DISTRIBUTION, EXTRAS, extra_of, install_line, missing

REPO = Path(__file__).resolve().parent.parent

# argv[1]: comma-separated modules to block; argv[2]: "cli" (the goatclaw command) or a file of Python to run
RUNNER = textwrap.dedent("""
    import runpy, sys
    for name in sys.argv.pop(1).split(","):
        sys.modules[name] = None
    mode = sys.argv.pop(1)
    if mode == "cli":
        from goatclaw.cli import main
        main(sys.argv[1:])
    else:
        runpy.run_path(mode, run_name="__main__")
""")

LLM = """
version: 1
tasks:
  ask:
    uses: llm
    with: {model: gpt-4o-mini, prompt: hello}
"""

MEMORY = """
version: 1
tasks:
  note:
    uses: echo
    with: {value: 1}
  remember:
    uses: memory
    needs: note
    with: {action: store, text: a note}
"""


def without(modules: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    return subprocess.run([sys.executable, "-c", RUNNER, modules, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_extras_table_names_real_extras() -> None:
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert declared["name"] == DISTRIBUTION
    assert set(EXTRAS) <= set(declared["optional-dependencies"])
    assert extra_of("numpy.linalg") == "memory" and extra_of("opentelemetry.sdk") == "otel"
    assert extra_of("yaml") is None
    assert missing("memory") is None  # the test environment has every extra
    assert install_line("memory") in (f"pip install -e '{REPO}[memory]'", "pip install -e '.[memory]'")


@pytest.mark.parametrize(("text", "blocked", "extra", "module", "line"), [
    (LLM, "litellm", "llm", "litellm", 4),
    (MEMORY, "numpy", "memory", "numpy", 7),
])
def test_validate_names_the_extra_at_the_uses_line(project: Path, text: str, blocked: str, extra: str,
                                                   module: str, line: int) -> None:
    (project / "p.yaml").write_text(text.lstrip())
    done = without(blocked, "cli", "validate", "p.yaml", cwd=project)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    task = "llm" if extra == "llm" else "memory"
    expected = f"p.yaml:{line}:11: tasks.{'ask' if extra == 'llm' else 'remember'}.uses: task '{task}' needs the " \
               f"'{extra}' extra ({module} is not installed): pip install -e"
    assert expected in done.stdout + done.stderr, done.stdout + done.stderr
    assert f"[{extra}]'" in done.stdout + done.stderr


def test_a_task_that_imports_a_missing_extra_fails_once_as_invalid_input(project: Path) -> None:
    (project / "p.yaml").write_text(textwrap.dedent("""
        version: 1
        tasks:
          vectors:
            uses: uses.numpy
            retry: {attempts: 3, delay: 0s}
        """).lstrip())
    (project / "run.py").write_text(textwrap.dedent("""
        import json
        import goatclaw

        def uses_numpy(ctx):
            import numpy
            return numpy.zeros(2).tolist()

        reg = goatclaw.Registry()
        reg.register_task("uses.numpy", uses_numpy)
        result = goatclaw.run(goatclaw.load("p.yaml", registry=reg), registry=reg, store=False)
        t = result.tasks["vectors"]
        print(json.dumps({"status": str(t.status.value), "error": t.error, "error_class": t.error_class,
                          "attempts": t.attempts}))
        """))
    done = without("numpy", "run.py", cwd=project)
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout.strip().splitlines()[-1])
    assert task["status"] == "failed" and task["error_class"] == "invalid_input"
    assert task["attempts"] == 1, "a missing module is not there on a retry either"
    assert task["error"].startswith("this needs the 'memory' extra (numpy is not installed): pip install -e ")


@pytest.mark.parametrize("args", [("why",), ("memory", "stats"), ("memory", "search", "x")])
def test_memory_commands_without_the_extra_say_so(project: Path, args: tuple[str, ...]) -> None:
    (project / "p.yaml").write_text("version: 1\ntasks:\n  a: {uses: shell, with: {run: [\"false\"]}}\n")
    assert without("wordllama", "cli", "apply", "p.yaml", "--output", "plain", cwd=project).returncode == 1
    done = without("numpy,wordllama", "cli", *args, cwd=project)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 1, done.stderr
    assert "the 'memory' extra (numpy is not installed): pip install -e " in done.stderr, done.stderr


def test_plan_cost_without_litellm_says_so(project: Path) -> None:
    (project / "p.yaml").write_text(LLM.lstrip())
    done = without("litellm", "cli", "plan", "p.yaml", "--cost", cwd=project)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert "'llm' extra (litellm is not installed): pip install -e " in done.stdout + done.stderr
