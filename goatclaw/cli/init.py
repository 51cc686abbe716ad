"""``goatclaw init``: a commented goatclaw.yaml, a first pipeline, and (on a terminal) a provider and its key.

Registered on the app by importing this module. Nothing that exists is overwritten. A key
is stored only where the user chooses: the OS keyring (``keyring``, through
:func:`goatclaw.providers.store_in_keyring`) or the project's ``.env`` (mode 0600); never
in goatclaw.yaml, which is committed.
"""


import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from goatclaw.cli import options
from goatclaw.cli.app import _err, _in_ci, app, handles_errors

__all__ = ["FIRST_PIPELINE", "init", "project_text", "store_in_dotenv"]

FIRST_PIPELINE = """\
# yaml-language-server: $schema=../schemas/pipeline.schema.json
# A first pipeline: goatclaw apply pipelines/hello.yaml (goatclaw plan shows its graph).
version: 1
name: hello
vars:
  who: world
permissions:
  files: {write: [out/]}      # deny by default: grant what the tasks need
tasks:
  greet:
    uses: echo
    with:
      value: Hello, ${{ vars.who }}!
  save:
    uses: file.write
    needs: [greet]
    with:
      path: out/hello.txt
      content: ${{ tasks.greet.output }}
"""


def project_text(model: str | None) -> str:
    """A commented goatclaw.yaml; ``model`` set when one was chosen (keys never go here)."""
    chosen = f"model: {model}\n" if model else \
        "# model: openai/gpt-4o-mini   # unset: goatclaw picks one from your keys or a local Ollama (goatclaw doctor)\n"
    return (
        "# yaml-language-server: $schema=schemas/goatclaw.schema.json\n"
        "# The project file: settings for every pipeline in this folder. All of it is optional.\n"
        "# API keys never go here: they come from the environment, .env, or the OS keyring (goatclaw init).\n"
        "version: 1\n"
        "store:\n"
        "  path: .goatclaw/goatclaw.db   # runs, events, outputs, cache, memory\n"
        f"{chosen}"
        "# fallbacks: [anthropic/claude-3-5-haiku-latest]\n"
        "# budget: {usd: 1.00}            # the most a run may spend on LLM calls\n"
        "# permissions:                   # the ceiling: a pipeline may only narrow it\n"
        "#   network: [api.openai.com]\n"
    )


@app.command()
@handles_errors
def init(
    provider: Annotated[str | None, typer.Option("--provider", help="The provider to use (openai, anthropic, "
                                                 "ollama …); asked on a terminal.")] = None,
    key_store: Annotated[str | None, typer.Option(
        "--key-store", metavar="WHERE", callback=options.one_of("keyring", "dotenv", "none"),
        help="Where a key typed in is kept: keyring, dotenv, or none.")] = None,
) -> None:
    """Start a project: goatclaw.yaml, pipelines/hello.yaml, schemas/ for editors; on a terminal, a provider and key."""
    from goatclaw.providers import DEFAULT_MODELS, PROVIDERS, choose_model, key_status

    root = Path.cwd()
    asking = _terminal()
    if provider is None and asking:
        detected = choose_model(root, probe_ollama=False)
        default = detected["model"].split("/", 1)[0] if detected else "openai"
        provider = typer.prompt(f"provider ({', '.join(PROVIDERS)})", default=default, err=True).strip()
    if provider is not None and provider not in PROVIDERS:
        raise typer.BadParameter(f"unknown provider '{provider}' (one of: {', '.join(PROVIDERS)})",
                                 param_hint="'--provider'")
    model = DEFAULT_MODELS.get(provider) if provider else None
    _write_new(root / "goatclaw.yaml", project_text(model))
    _write_new(root / "pipelines" / "hello.yaml", FIRST_PIPELINE)
    _write_schemas(root)
    if provider and not PROVIDERS[provider].local and asking and not key_status(PROVIDERS[provider], root)[0]:
        _ask_key(root, PROVIDERS[provider].keys[0], key_store)
    _err().print("next: goatclaw apply pipelines/hello.yaml, or goatclaw run \"a goal in plain words\"",
                 highlight=False)


def _write_schemas(root: Path) -> None:
    """The schemas the modelines name (``schemas/``): editors complete each task's ``with:``, plugins' too.

    ``goatclaw schema > schemas/pipeline.schema.json`` refreshes the pipeline's after an upgrade
    or a new plugin; nothing here is overwritten.
    """
    import json

    from goatclaw.api import load_project_for, pipeline_schema, registry_for, schema_text
    from goatclaw.errors import SpecError

    try:
        registry = registry_for(load_project_for(root / "goatclaw.yaml"))
    except SpecError:  # a goatclaw.yaml that was there already and is invalid: every installed plugin
        registry = None
    pipeline = pipeline_schema(registry)
    _write_new(root / "schemas" / "pipeline.schema.json", json.dumps(pipeline, indent=2, ensure_ascii=False) + "\n")
    for name in ("goatclaw", "test"):
        _write_new(root / "schemas" / f"{name}.schema.json", schema_text(name))


def _terminal() -> bool:
    try:
        return not _in_ci() and sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _write_new(path: Path, text: str) -> None:
    """Write ``path`` unless it exists (never overwritten)."""
    if path.exists():
        _err().print(f"{path.name}: exists, left as it is", highlight=False)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    _err().print(f"wrote {path.relative_to(Path.cwd())}", highlight=False)


def _ask_key(root: Path, name: str, where: str | None) -> None:
    """Ask for the key and keep it where the user says: the OS keyring, .env (0600), or nowhere."""
    from goatclaw.providers import store_in_keyring

    value = typer.prompt(f"{name} (empty: skip)", default="", hide_input=True, show_default=False, err=True).strip()
    if not value:
        return
    while where not in ("keyring", "dotenv", "none"):
        where = typer.prompt("keep it in: keyring, dotenv or none", default="keyring", err=True).strip()
    if where == "keyring":
        store_in_keyring(name, value, root)
        _err().print(f"{name}: stored in the OS keyring", highlight=False)
    elif where == "dotenv":
        store_in_dotenv(root / ".env", name, value)
        _err().print(f"{name}: stored in .env (mode 0600; keep .env out of git)", highlight=False)
    else:
        _err().print(f"{name}: not stored; set it in the environment", highlight=False)


def store_in_dotenv(path: Path, name: str, value: str) -> None:
    """Append ``NAME=value`` to ``.env``, the file made readable by its owner only (0600) before it holds the key."""
    from goatclaw.errors import GoatclawError

    if "\n" in value or "\r" in value:
        raise GoatclawError(f"{name}: a key is one line")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
        size = os.fstat(fd).st_size
        if size:  # a last line without its newline must not swallow the key
            with open(path, "rb") as existing:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    os.write(fd, b"\n")
        quoted = "'" + value + "'" if "'" not in value else '"' + value.replace('"', '\\"') + '"'
        os.write(fd, f"{name}={quoted}\n".encode())
    finally:
        os.close(fd)
