"""The project's ``.env`` is read by python-dotenv, as shells and Docker Compose users write it.

A hand-written ``KEY=value`` splitter changed secrets' values: it kept an inline comment
as part of the value, cut a quoted multi-line value to its first line and left escapes
as they were written. Each case here is a value such a reader got wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from goatclaw import providers
from goatclaw.api import read_secrets

DOTENV = r"""# keys for the digest
export OPENAI_API_KEY=sk-plain   # rotated 2026-11
QUOTED="sk-quoted # not a comment"
SINGLE='raw \n stays $HOME'
ESCAPED="tab\there \"quoted\" line\nbreak"
PEM="-----BEGIN KEY-----
abc
-----END KEY-----"
DOLLAR=pa$$word${NOT_EXPANDED}
EMPTY=
BARE
"""

EXPECTED = {
    "OPENAI_API_KEY": "sk-plain",
    "QUOTED": "sk-quoted # not a comment",
    "SINGLE": r"raw \n stays $HOME",
    "ESCAPED": 'tab\there "quoted" line\nbreak',
    "PEM": "-----BEGIN KEY-----\nabc\n-----END KEY-----",
    "DOLLAR": "pa$$word${NOT_EXPANDED}",
    "EMPTY": "",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text(DOTENV, encoding="utf-8")
    return tmp_path


def test_dotenv_values_are_read_as_python_dotenv_reads_them(project: Path) -> None:
    assert providers.read_dotenv(project) == EXPECTED


def test_declared_secrets_from_dotenv_keep_their_exact_values(project: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EXPECTED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUOTED", "from-the-environment")  # the environment wins over .env
    found = read_secrets([*EXPECTED, "BARE", "ABSENT"], project)
    assert found == {**EXPECTED, "QUOTED": "from-the-environment"}


def test_no_dotenv_file_gives_nothing(tmp_path: Path) -> None:
    assert providers.read_dotenv(tmp_path) == {}
