"""Property: no declared secret's value leaves a run through any output path, in any common encoding.

Hypothesis generates secret values and the text around them; the secret reaches a task's
output and an error message as is, base64 (standard and URL-safe, at any alignment inside a
longer text), URL-encoded, hex and JSON-escaped. Every output path is then searched with
checks that do not reuse the redactor: the store file (and its WAL) as raw bytes, every event
a subscriber saw, the CLI's ``--output json`` document, error messages, and the LLM cassette.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openai_server import FakeOpenAI, Reply
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.security.secrets import Redactor

SECRET_CHARS = st.characters(min_codepoint=33, max_codepoint=0x24F, blacklist_categories=("Cs",),
                             blacklist_characters="\\\"'$%{}#&*")


def _empty_store_text() -> str:
    """What every store file holds whatever a run does (its schema): a secret inside it is not a leak."""
    from goatclaw.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "empty.db"
        Store.open(path).close()
        return path.read_bytes().decode("utf-8", "replace")


_EMPTY_STORE = _empty_store_text()
secrets_st = st.text(SECRET_CHARS, min_size=8, max_size=32).filter(lambda s: s not in _EMPTY_STORE)
noise_st = st.text(st.characters(min_codepoint=32, max_codepoint=0x24F, blacklist_categories=("Cs",)), max_size=40)

#: The run's plugin module (written into each project): the forms a secret can take, and tasks
#: that return or raise one.
STEPS = '''
import base64, json
from urllib.parse import quote, quote_plus

ENC = {
    "plain": lambda t: t,
    "base64": lambda t: base64.b64encode(t.encode()).decode(),
    "base64url": lambda t: base64.urlsafe_b64encode(t.encode()).decode(),
    "quote": lambda t: quote(t, safe=""),
    "quote_plus": lambda t: quote_plus(t),
    "hex": lambda t: t.encode().hex(),
    "HEX": lambda t: t.encode().hex().upper(),
    "json": lambda t: json.dumps(t)[1:-1],
    "base64_wrapped": lambda t: base64.encodebytes(t.encode()).decode(),  # 76 columns, as base64(1) writes
    "hex_wrapped": lambda t: "\\n".join(t.encode().hex()[i:i + 60] for i in range(0, 2 * len(t.encode()), 60)),
}
WRAPPED = ("base64_wrapped", "hex_wrapped")

def emit(secret, before, after, how):
    return {"value": ENC[how](before + secret + after), "how": how}

def explode(secret, before, after, how):
    raise ValueError("upstream said: " + ENC[how](before + secret + after))
'''
_STEPS: dict[str, Any] = {}
exec(STEPS, _STEPS)  # one definition of the encodings: the plugin's, and the one the assertions use
TRANSFORMS: dict[str, Callable[[str], str]] = _STEPS["ENC"]
WRAPPED: tuple[str, ...] = _STEPS["WRAPPED"]  # generated only: a check joins the lines and looks for the others
_B64_RUN = re.compile(r"[A-Za-z0-9+/\-_]{8,}")
#: Line breaks, and their escapes in JSON text: a wrapped form reads back once they are gone.
_BREAKS = re.compile(r"\r|\n|\\r|\\n")


def leaks(text: str, secret: str) -> list[str]:
    """Every way ``secret`` reads back out of ``text`` (as is, or lines joined), found without the redactor."""
    return sorted(set(_leaks(text, secret) + _leaks(_BREAKS.sub("", text), secret)))


def _leaks(text: str, secret: str) -> list[str]:
    found = [name for name, f in TRANSFORMS.items() if name not in WRAPPED and f(secret) in text]
    raw = secret.encode()
    for run in _B64_RUN.findall(text):  # decode every base64-looking run at every alignment
        run = run.replace("-", "+").replace("_", "/")
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                if raw in base64.b64decode(chunk):
                    found.append("base64 (decoded)")
            except ValueError:
                continue
    return found


@settings(max_examples=300, deadline=None)
@given(secret=secrets_st, before=noise_st, after=noise_st, transform=st.sampled_from(sorted(TRANSFORMS)))
def test_masking_leaves_nothing_that_reads_back_as_the_secret(secret: str, before: str, after: str,
                                                              transform: str) -> None:
    text = TRANSFORMS[transform](before + secret + after)
    masked = Redactor({"S": secret}).mask(text)
    assert not leaks(masked or "", secret), (text, masked)


@settings(max_examples=200, deadline=None)
@given(secret=secrets_st, other=st.text(SECRET_CHARS, min_size=8, max_size=32), noise=noise_st)
def test_masking_data_reaches_keys_values_and_nested_lists(secret: str, other: str, noise: str) -> None:
    data = {noise + secret: [noise, {"k": secret + noise}, (other, secret)]}
    masked = Redactor({"A": secret, "B": other}).mask_data(data)
    text = json.dumps(masked, ensure_ascii=False)
    assert not leaks(text, secret) and not leaks(text, other)


# -- through a real run: store, events, errors, the CLI's JSON --------------------------------------


PIPELINE = """
version: 1
secrets: [GC_PROP_SECRET]
permissions: {python: [gc_masking_steps]}
vars: {before: "", after: "", how: plain}
tasks:
  out:
    uses: python
    with: {function: "gc_masking_steps:emit", args: ["${{ secrets.GC_PROP_SECRET }}", "${{ vars.before }}",
                                                      "${{ vars.after }}", "${{ vars.how }}"]}
  err:
    uses: python
    retry: {attempts: 2, delay: 0}
    with: {function: "gc_masking_steps:explode", args: ["${{ secrets.GC_PROP_SECRET }}", "${{ vars.before }}",
                                              "${{ vars.after }}", "${{ vars.how }}"]}
"""


def fresh_project(base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new project (and store) per example: an earlier example's text may be this one's secret."""
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n")
    (root / "gc_masking_steps.py").write_text(STEPS)
    (root / "p.yaml").write_text(textwrap.dedent(PIPELINE).lstrip())
    monkeypatch.chdir(root)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    return root


def _store_text(root: Path) -> str:
    return b"".join(p.read_bytes() for p in (root / ".goatclaw").glob("goatclaw.db*")).decode("utf-8", "replace")


_REFERENCES: dict[str, str] = {}
#: A secret past SECRET_CHARS: no generated secret can be found inside it.
_REFERENCE_SECRET = "\u2603" * 12


def _reference(name: str, produce: Callable[[str], str]) -> str:
    """What a run writes whatever its secret is: ``produce(secret)`` with :data:`_REFERENCE_SECRET`, once.

    Its words (topics, keys, memory relations such as ``failed_with``) are goatclaw's, and
    Hypothesis also draws strings from goatclaw's own constants: a generated "secret" found
    in this text is goatclaw's word, not a leak, and the property assumes it away.
    """
    if name not in _REFERENCES:
        _REFERENCES[name] = produce(_REFERENCE_SECRET)
    return _REFERENCES[name]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secrets_st, before=noise_st, after=noise_st, how=st.sampled_from(sorted(TRANSFORMS)))
def test_no_output_path_of_a_run_carries_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   secret: str, before: str, after: str, how: str) -> None:
    def reference_run(reference: str) -> str:
        root = fresh_project(tmp_path, monkeypatch)
        monkeypatch.setenv("GC_PROP_SECRET", reference)
        goatclaw.run("p.yaml")
        return _store_text(root)

    assume(secret not in _reference("run", reference_run))
    secret_project = fresh_project(tmp_path, monkeypatch)
    monkeypatch.setenv("GC_PROP_SECRET", secret)
    seen: list[str] = []
    bus = goatclaw.Bus()
    bus.subscribe("*", lambda ev: seen.append(json.dumps(ev.data, ensure_ascii=False, default=str)))
    variables = {"before": before, "after": after, "how": how}
    result = goatclaw.run("p.yaml", vars=variables, bus=bus)
    assert result.tasks["out"].status.value == "succeeded", result.tasks["out"].error
    assert result.tasks["err"].status.value == "failed"
    produced = result.tasks["out"].output["value"]  # what the task really returned (the run may use it)
    assert produced == TRANSFORMS[how](before + secret + after)
    paths = {
        "store": _store_text(secret_project),
        "events": "\n".join(seen),
        "error": result.tasks["err"].error or "",
    }
    cli = CliRunner().invoke(app, ["apply", "p.yaml", "--output", "json",
                                   *(f"--var={k}={json.dumps(v)}" for k, v in variables.items())])
    paths["cli json"] = cli.stdout
    assert '"run_id"' in cli.stdout
    for where, text in paths.items():
        assert not leaks(text, secret), (where, leaks(text, secret))
        assert produced not in text or not leaks(produced, secret), where


# -- the LLM cassette ---------------------------------------------------------------------------------


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secrets_st, how=st.sampled_from(sorted(TRANSFORMS)))
def test_a_recorded_cassette_never_holds_the_secret(tmp_path_factory: pytest.TempPathFactory, srv: FakeOpenAI,
                                                    monkeypatch: pytest.MonkeyPatch, secret: str, how: str) -> None:
    def record(secret: str) -> tuple[str, str]:
        """Record a cassette of a call whose prompt and answer hold ``secret``; (cassette, store) text."""
        root = tmp_path_factory.mktemp("cassette")
        monkeypatch.chdir(root)
        monkeypatch.setenv("GC_PROP_SECRET", secret)
        (root / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n")
        leaked = TRANSFORMS[how]("key=" + secret)
        srv.respond = lambda body: Reply(f"I saw {leaked} in the prompt")
        (root / "p.yaml").write_text(textwrap.dedent(f"""
            version: 1
            secrets: [GC_PROP_SECRET]
            permissions: {{network: ["127.0.0.1"]}}
            vars: {{leaked: ""}}
            tasks:
              ask:
                uses: llm
                with:
                  model: openai/gpt-4o-mini
                  prompt: "Here is ${{{{ vars.leaked }}}} and ${{{{ secrets.GC_PROP_SECRET }}}}"
                  api_base: {srv.api_base}
                  api_key: sk-test
            """).lstrip())
        result = goatclaw.run("p.yaml", llm="record", vars={"leaked": leaked})
        assert result.ok, result.tasks["ask"].error
        return (root / "p.cassette.json").read_text(), _store_text(root)

    assume(secret not in _reference(f"cassette {how}", lambda reference: "".join(record(reference))))
    cassette, store = record(secret)
    assert "I saw" in cassette and not leaks(cassette, secret)
    assert not leaks(store, secret)


def test_a_cassette_never_holds_a_long_prefix_of_a_secret(tmp_path: Path, srv: FakeOpenAI,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path
    monkeypatch.chdir(root)
    secret = "pk-9f1c2e7a5b3d8e6f0a4c2b1d9e8f7a6b"
    monkeypatch.setenv("GC_PROP_SECRET", secret)
    (root / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n")
    srv.respond = lambda body: Reply(f"Your key begins {secret[:14]}, and {secret[:24]}... is what I saw")
    (root / "p.yaml").write_text(textwrap.dedent(f"""
        version: 1
        secrets: [GC_PROP_SECRET]
        permissions: {{network: ["127.0.0.1"]}}
        tasks:
          ask:
            uses: llm
            with:
              model: openai/gpt-4o-mini
              prompt: "Repeat ${{{{ secrets.GC_PROP_SECRET }}}}"
              api_base: {srv.api_base}
              api_key: sk-test
        """).lstrip())
    result = goatclaw.run("p.yaml", llm="record")
    assert result.ok, result.tasks["ask"].error
    cassette = (root / "p.cassette.json").read_text()
    assert "Your key begins" in cassette and "is what I saw" in cassette
    assert secret[:12] not in cassette  # the answer echoed 14 and 24 characters of it
    again = goatclaw.run("p.yaml", llm="replay")  # the masked recording still replays
    assert again.ok and again.tasks["ask"].output["text"] == "Your key begins ***, and ***... is what I saw"


def test_a_wrapped_base64_or_hex_secret_is_masked_on_every_output_path(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wr-" + "7c1e9a0b4d2f" * 6  # 75 characters: its base64 and hex are wrapped over several lines
    for how in WRAPPED:
        root = fresh_project(tmp_path, monkeypatch)
        monkeypatch.setenv("GC_PROP_SECRET", secret)
        variables = {"before": "user:", "after": "", "how": how}
        result = goatclaw.run("p.yaml", vars=variables)
        produced = result.tasks["out"].output["value"]
        assert produced.count("\n") >= 2 and not leaks(produced.replace("\n", " "), secret)  # really wrapped
        cli = CliRunner().invoke(app, ["apply", "p.yaml", "--output", "json",
                                       *(f"--var={k}={json.dumps(v)}" for k, v in variables.items())])
        for where, text in {"store": _store_text(root), "error": result.tasks["err"].error or "",
                            "cli json": cli.stdout}.items():
            assert not leaks(text, secret), (how, where, leaks(text, secret))


def test_a_plugins_log_messages_are_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    root = fresh_project(tmp_path, monkeypatch)
    secret = "lg-5e2f9a0c31d7"
    monkeypatch.setenv("GC_PROP_SECRET", secret)

    def chatty(ctx: goatclaw.TaskContext, *, value: str) -> str:
        ctx.logger.warning("calling with key %s (b64 %s)", value, base64.b64encode(value.encode()).decode())
        return "done"

    registry = goatclaw.Registry(entry_points=False)
    registry.register_task("chatty", chatty)
    (root / "q.yaml").write_text("version: 1\nsecrets: [GC_PROP_SECRET]\ntasks:\n"
                                 "  x: {uses: chatty, with: {value: '${{ secrets.GC_PROP_SECRET }}'}}\n")
    with caplog.at_level("WARNING", logger="goatclaw.task.x"):
        assert goatclaw.run(root / "q.yaml", registry=registry).ok
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "goatclaw.task.x")
    assert "calling with key ***" in logged and not leaks(logged, secret)
