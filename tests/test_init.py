"""``goatclaw init`` and where a key is kept: the OS keyring or .env (0600), never the project file."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from goatclaw import providers
from goatclaw.cli.app import app
from goatclaw.cli.init import store_in_dotenv


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for provider in providers.PROVIDERS.values():
        for key in provider.keys:
            monkeypatch.delenv(key, raising=False)
    return tmp_path


def test_init_writes_a_commented_project_file_and_a_first_pipeline_that_runs(here: Path) -> None:
    result = CliRunner().invoke(app, ["init", "--provider", "anthropic"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = (here / "goatclaw.yaml").read_text()
    assert "model: anthropic/claude-3-5-haiku-latest" in text and "# budget:" in text
    assert "API_KEY=" not in text
    done = CliRunner().invoke(app, ["apply", "pipelines/hello.yaml", "--output", "plain"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert (here / "out" / "hello.txt").read_text() == "Hello, world!"


def test_init_writes_the_schemas_its_modelines_name(here: Path) -> None:
    """An editor opening the new files finds their schemas; the pipeline's completes research's with: keys."""
    import json
    import re

    import jsonschema

    result = CliRunner().invoke(app, ["init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for written in (here / "goatclaw.yaml", here / "pipelines" / "hello.yaml"):
        modeline = re.match(r"# yaml-language-server: \$schema=(\S+)", written.read_text())
        assert modeline and (written.parent / modeline.group(1)).is_file(), written
    schema = json.loads((here / "schemas" / "pipeline.schema.json").read_text())
    editor = jsonschema.Draft202012Validator(schema)
    doc = {"version": 1, "tasks": {"r": {"uses": "research", "with": {"questoin": "why?"}}}}
    assert any("questoin" in e.message for e in editor.iter_errors(doc))
    assert (here / "schemas" / "test.schema.json").is_file()


def test_init_beside_an_invalid_project_file_still_writes_the_schemas(here: Path) -> None:
    (here / "goatclaw.yaml").write_text("version: 1\nnope: 3\n")
    result = CliRunner().invoke(app, ["init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (here / "schemas" / "pipeline.schema.json").is_file()
    assert (here / "goatclaw.yaml").read_text() == "version: 1\nnope: 3\n"


def test_init_never_overwrites_what_exists(here: Path) -> None:
    (here / "goatclaw.yaml").write_text("version: 1\n# mine\n")
    result = CliRunner().invoke(app, ["init"], catch_exceptions=False)
    assert result.exit_code == 0 and "exists, left as it is" in result.output
    assert (here / "goatclaw.yaml").read_text() == "version: 1\n# mine\n"


def test_init_refuses_an_unknown_provider_with_exit_2(here: Path) -> None:
    result = CliRunner().invoke(app, ["init", "--provider", "nope"])
    assert result.exit_code == 2 and "unknown provider 'nope'" in result.output
    assert not (here / "goatclaw.yaml").exists()


def test_a_key_in_dotenv_is_readable_by_its_owner_only_and_is_found(here: Path) -> None:
    (here / ".env").write_text("OTHER=1")  # no newline at the end
    store_in_dotenv(here / ".env", "OPENAI_API_KEY", "sk-in-dotenv")
    assert stat.S_IMODE((here / ".env").stat().st_mode) == 0o600
    assert providers.read_dotenv(here) == {"OTHER": "1", "OPENAI_API_KEY": "sk-in-dotenv"}
    assert providers.key_status(providers.PROVIDERS["openai"], here) == (True, ".env")




def test_a_key_in_the_keyring_is_found_and_handed_to_the_chosen_model(here: Path) -> None:
    import keyring
    from keyring.backend import KeyringBackend

    class Backend(KeyringBackend):
        priority = 1  # type: ignore[assignment]
        def __init__(self) -> None:
            super().__init__()
            self.values: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> Any:
            return self.values.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.values[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.values.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(Backend())
    try:
        assert providers.key_status(providers.PROVIDERS["openai"], here) == (False, None)
        providers.store_in_keyring("OPENAI_API_KEY", "sk-in-keyring", here)
        assert (here / ".goatclaw" / "keyring").read_text() == "OPENAI_API_KEY\n"  # the name, never the value
        assert providers.key_status(providers.PROVIDERS["openai"], here) == (True, "keyring")
        chosen = providers.choose_model(here, probe_ollama=False)
        assert chosen is not None and chosen["api_key"] == "sk-in-keyring"
        assert "(keyring)" in chosen["why"]
    finally:
        keyring.set_keyring(previous)
