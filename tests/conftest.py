"""Shared fixtures: a throwaway project folder with its own store, and pipeline writers."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai_server import FakeOpenAI, echo

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _no_held_audit_key() -> Iterator[None]:
    """The audit key a test's run took from the environment is not held into the next test."""
    yield
    from goatclaw.security.auditkey import forget_audit_key

    forget_audit_key()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder (with goatclaw.yaml) that is also the current directory.

    Its goatclaw.yaml grants every permission, so that tests of other features need not
    say what each pipeline may do; tests/security uses projects that grant nothing.
    """
    (tmp_path / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n"
                                            "permissions: {shell: true, network: true, env: true, python: true,\n"
                                            "              files: {read: [.], write: [.]}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return tmp_path


@pytest.fixture
def write_pipeline(project: Path) -> Callable[..., Path]:
    """Write a pipeline file into the project: ``write_pipeline(yaml_text, name="p.yaml")``."""

    def write(text: str, name: str = "p.yaml") -> Path:
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture
def store_path(project: Path) -> Path:
    """Where the project's store lives."""
    return project / ".goatclaw" / "goatclaw.db"


@pytest.fixture(scope="module")
def openai_api() -> Iterator[FakeOpenAI]:
    """A real local OpenAI-compatible HTTP server (tests/openai_server.py), one per test module."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def srv(openai_api: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The module's OpenAI server, with a fresh script and request log for each test."""
    openai_api.respond = echo
    openai_api.requests.clear()
    openai_api.headers.clear()
    yield openai_api
    openai_api.respond = echo
