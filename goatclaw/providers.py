"""Which LLM providers are usable here, without importing litellm.

* :func:`provider_of` maps a litellm model name to its provider with a small table
  (``gpt-*``, ``o1``/``o3``/``o4``, ``openai/`` → OpenAI; ``claude-*``, ``anthropic/`` →
  Anthropic; ``gemini/`` → Google; ``mistral/``, ``groq/``, ``deepseek/`` …; ``ollama/``
  → a local server). An unknown model maps to ``None``: nothing is checked for it.
* :func:`key_status` says whether a provider's API key is set in the environment or in
  the project's ``.env``.
* :func:`ollama_running` probes an Ollama server on localhost:11434 (0.3 s timeout). It
  uses httpx, imported only there: besides ``goatclaw/tasks/http.py``, this is the only
  module that imports httpx.
* :func:`model_problems` is what ``goatclaw validate`` adds: a warning for each ``llm``
  task whose constant model has no key (see docs/llm.md).
* :func:`choose_model` is the zero-config choice: with no ``model:`` in goatclaw.yaml, the
  first provider with a key (the table's order) gives its everyday model, else a running
  Ollama its first local model (``/api/tags``); it says which and why.
* :func:`doctor` is the report behind ``goatclaw doctor``.
* :func:`keyring_key` / :func:`store_in_keyring`: a key ``goatclaw init`` put in the OS keyring
  (service ``goatclaw``). The keyring is asked only for the variable names listed in
  ``.goatclaw/keyring`` (names, never values), so a command never pays for the keyring
  library unless a key was stored there; this is the one module that imports ``keyring``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goatclaw.errors import GoatclawError
from goatclaw.userfile import is_file, read_bytes

__all__ = ["DEFAULT_MODELS", "KEYRING_SERVICE", "PROVIDERS", "Provider", "capability_problems", "choose_model",
           "doctor", "key_status", "keyring_key", "model_problems", "ollama_models", "ollama_running", "ollama_url",
           "provider_of", "store_in_keyring"]

#: The OS keyring service goatclaw's keys are stored under.
KEYRING_SERVICE = "goatclaw"

OLLAMA_URL = "http://127.0.0.1:11434"
#: The largest ``.env`` read (a regular file; a FIFO or device is refused).
MAX_DOTENV_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Provider:
    """A provider: its name, the environment variables any one of which holds its key."""

    name: str
    keys: tuple[str, ...]
    local: bool = False


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("openai", ("OPENAI_API_KEY",)),
    Provider("anthropic", ("ANTHROPIC_API_KEY",)),
    Provider("gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
    Provider("mistral", ("MISTRAL_API_KEY",)),
    Provider("groq", ("GROQ_API_KEY",)),
    Provider("deepseek", ("DEEPSEEK_API_KEY",)),
    Provider("cohere", ("COHERE_API_KEY", "CO_API_KEY")),
    Provider("openrouter", ("OPENROUTER_API_KEY",)),
    Provider("together_ai", ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY")),
    Provider("xai", ("XAI_API_KEY",)),
    Provider("ollama", (), local=True),
)}
#: The model :func:`choose_model` picks for a provider with a key: a cheap, capable everyday model.
DEFAULT_MODELS = {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-3-5-haiku-latest",
                  "gemini": "gemini/gemini-2.0-flash", "mistral": "mistral/mistral-small-latest",
                  "groq": "groq/llama-3.1-8b-instant", "deepseek": "deepseek/deepseek-chat",
                  "cohere": "cohere_chat/command-r", "openrouter": "openrouter/openai/gpt-4o-mini",
                  "together_ai": "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", "xai": "xai/grok-3-mini"}
_PREFIXES = {"openai": "openai", "text-completion-openai": "openai", "anthropic": "anthropic",
             "gemini": "gemini", "mistral": "mistral", "groq": "groq", "deepseek": "deepseek",
             "cohere": "cohere", "cohere_chat": "cohere", "openrouter": "openrouter",
             "together_ai": "together_ai", "xai": "xai", "ollama": "ollama", "ollama_chat": "ollama"}
_BARE = (("gpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"), ("chatgpt-", "openai"),
         ("text-embedding-", "openai"), ("claude-", "anthropic"), ("gemini-", "gemini"),
         ("mistral-", "mistral"), ("open-mistral", "mistral"), ("codestral", "mistral"),
         ("command-", "cohere"), ("deepseek-", "deepseek"))


def provider_of(model: str) -> Provider | None:
    """The provider serving ``model`` (a litellm name), or ``None`` when the table does not know it."""
    if not isinstance(model, str) or not model:
        return None
    prefix, slash, _ = model.partition("/")
    if slash:
        name = _PREFIXES.get(prefix)
        return PROVIDERS[name] if name else None
    bare = next((p for start, p in _BARE if model == start or model.startswith(start)), None)
    if bare in ("openai",) and model.startswith(("o1", "o3", "o4")) and not (
            len(model) == 2 or model[2] == "-"):
        return None  # "o1x..." is not an OpenAI reasoning model name
    return PROVIDERS[bare] if bare else None


def read_dotenv(root: Path | None) -> dict[str, str]:
    """The variables of ``root/.env``, read by python-dotenv; ``{}`` without one.

    python-dotenv reads the file as the shells and Docker Compose users write it: quotes,
    ``export``, inline ``# comments`` after unquoted values, multi-line quoted values and
    escapes in double quotes. Values are taken literally (no ``${VAR}`` expansion), so a
    secret holding ``$`` is never changed; a bare ``KEY`` line without ``=`` sets nothing.
    """
    path = (root or Path.cwd()) / ".env"
    if not path.exists():
        return {}
    try:
        text = read_bytes(path, limit=MAX_DOTENV_BYTES).decode("utf-8", errors="replace")
    except OSError as exc:  # a FIFO, a device, a huge file: refused, never read until memory runs out
        raise GoatclawError(f"cannot read {path}: {exc.strerror or exc}") from None
    from dotenv import dotenv_values  # the one module that reads .env files

    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def _keyring_names(root: Path | None) -> list[str]:
    """The variable names ``goatclaw init`` stored in the keyring for this project (``.goatclaw/keyring``)."""
    path = (root or Path.cwd()) / ".goatclaw" / "keyring"
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


def keyring_key(name: str, root: Path | None = None) -> str | None:
    """The value of key ``name`` in the OS keyring, when ``goatclaw init`` stored it there; else ``None``."""
    if name not in _keyring_names(root):
        return None
    try:
        import keyring  # only here: a keyring backend is looked for only when a key was stored in one

        return keyring.get_password(KEYRING_SERVICE, name) or None
    except Exception:  # no backend (a headless machine), a locked keyring: the key is simply not there
        return None


def store_in_keyring(name: str, value: str, root: Path | None = None) -> None:
    """Put key ``name`` in the OS keyring and list its name in ``.goatclaw/keyring`` (raises when no keyring works)."""
    import keyring

    try:
        keyring.set_password(KEYRING_SERVICE, name, value)
    except Exception as exc:  # keyring.errors.NoKeyringError and the backends' own
        raise GoatclawError(f"the OS keyring refused the key: {exc}") from None
    names = _keyring_names(root)
    if name not in names:
        path = (root or Path.cwd()) / ".goatclaw" / "keyring"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([*names, name]) + "\n", encoding="utf-8")


def key_status(provider: Provider, root: Path | None = None, *,
               dotenv: Mapping[str, str] | None = None) -> tuple[bool, str | None]:
    """``(usable, where)``: whether one of the provider's keys is set, and where (``env`` or ``.env``)."""
    if provider.local:
        return True, None
    dotenv = read_dotenv(root) if dotenv is None else dotenv
    for name in provider.keys:
        if os.environ.get(name):
            return True, "env"
    for name in provider.keys:
        if dotenv.get(name):
            return True, ".env"
    for name in provider.keys:
        if keyring_key(name, root):
            return True, "keyring"
    return False, None


def ollama_url(dotenv: Mapping[str, str] | None = None) -> str:
    """Where Ollama is: ``OLLAMA_API_BASE`` (which litellm reads; the environment, then .env), else localhost."""
    found = os.environ.get("OLLAMA_API_BASE") or (dotenv or {}).get("OLLAMA_API_BASE")
    return found.rstrip("/") if found else OLLAMA_URL


def ollama_running(url: str | None = None, timeout: float = 0.3) -> bool:
    """Whether an Ollama server answers at ``url`` (default :func:`ollama_url`) within ``timeout`` seconds."""
    import httpx  # only here (and in goatclaw/tasks/http.py): plain validate never pays for it

    url = url or ollama_url()

    try:
        return httpx.get(f"{url}/api/tags", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def ollama_models(url: str | None = None, timeout: float = 0.3) -> list[str] | None:
    """The local models of the Ollama server at ``url`` (its ``/api/tags``), or ``None`` when none answers."""
    import httpx  # only here (and in goatclaw/tasks/http.py): plain validate never pays for it

    try:
        reply = httpx.get(f"{url or ollama_url()}/api/tags", timeout=timeout)
        if reply.status_code != 200:
            return None
        found = reply.json().get("models") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return [str(m["name"]) for m in found if isinstance(m, Mapping) and isinstance(m.get("name"), str)]


def choose_model(root: Path | None = None, *, dotenv: Mapping[str, str] | None = None,
                 probe_ollama: bool = True) -> dict[str, Any] | None:
    """The model an ``llm`` task without ``model:`` uses when goatclaw.yaml names none: ``{model, api_base, why}``.

    The first provider of :data:`PROVIDERS` whose key is set (the environment, then
    ``.env``) gives its :data:`DEFAULT_MODELS` entry; without any key, a running Ollama
    (``OLLAMA_API_BASE``, else localhost) gives its first local model. ``None``: nothing found.
    """
    dotenv = read_dotenv(root) if dotenv is None else dotenv
    for provider in PROVIDERS.values():
        if provider.local or provider.name not in DEFAULT_MODELS:
            continue
        usable, where = key_status(provider, root, dotenv=dotenv)
        if usable:
            var = next(k for k in provider.keys if os.environ.get(k) or dotenv.get(k) or keyring_key(k, root))
            model = DEFAULT_MODELS[provider.name]
            found = {"api_key": keyring_key(var, root)} if where == "keyring" else {}
            return {"model": model, "api_base": None, **found,
                    "why": f"no model in goatclaw.yaml; {var} is set ({where}), so {model}, {provider.name}'s "
                           "everyday model"}
    if probe_ollama:
        url = ollama_url(dotenv)
        local = ollama_models(url)
        if local:
            model = f"ollama/{local[0]}"
            return {"model": model, "api_base": url,
                    "why": f"no model in goatclaw.yaml and no provider key; Ollama answers on {url} with "
                           f"{len(local)} local model{'s' if len(local) != 1 else ''}, so {model}"}
    return None


def _constant_models(value: Any) -> list[str]:
    """The constant model names to check; an entry with its own ``api_base``/``api_key`` is not checked."""
    from goatclaw.template import has_template

    models = value if isinstance(value, list) else [value]
    names = [m.get("name") if isinstance(m, Mapping) and not (m.get("api_base") or m.get("api_key")) else m
             for m in models]
    return [m for m in names if isinstance(m, str) and m and not has_template(m)]


def model_problems(pipeline: Any, root: Path | None = None, cassette: Path | None = None, *,
                   mode: str = "live") -> list[Any]:
    """Problems with each ``llm`` task's constant models whose provider has no key set.

    An error when none of a task's models can be called (every one needs a key that is
    not set) and no cassette could answer instead: the run would fail, so ``validate``
    says so first, naming the missing keys. A warning when another model of the task (a
    fallback, a local Ollama model) can still answer, or when a cassette exists (the
    pipeline's own ``<name>.cassette.json``, or ``cassette``) so ``--llm replay`` runs
    without keys. Skipped for a task that passes ``api_base`` or ``api_key``, for
    templated models and for models the provider table does not know, and in ``replay``
    ``mode``, which answers from the cassette and calls no provider.
    """
    from goatclaw.errors import Problem
    from goatclaw.spec.loader import dotted

    problems: list[Any] = capability_problems(pipeline)
    if mode == "replay":
        return problems
    dotenv: dict[str, str] | None = None
    file = getattr(pipeline, "file", None)
    tape = cassette or (Path(file).with_suffix(".cassette.json") if file else None)
    has_tape = tape is not None and is_file(tape)
    for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            if task.uses not in ("llm", "agent") or not isinstance(task.with_, Mapping):
                continue
            args = task.with_
            if args.get("api_base") or args.get("api_key") or "model" not in args:
                continue
            value = args["model"]
            if isinstance(value, Mapping) and isinstance(value.get("cascade"), list):
                value = value["cascade"]  # a cascade's models, like a list's: any one of them can answer
            models = _constant_models(value)
            missing: list[tuple[str, str]] = []
            callable_ = len(models) < _model_count(value)  # a templated model may be anything
            for model in models:
                provider = provider_of(model)
                if provider is None or provider.local:
                    callable_ = True
                    continue
                if dotenv is None:
                    dotenv = read_dotenv(root)
                usable, _ = key_status(provider, root, dotenv=dotenv)
                if usable:
                    callable_ = True
                else:
                    missing.append((model, " or ".join(provider.keys)))
            path = (*task.path, "with", "model")
            for model, keys in missing:
                message = f"model '{model}' needs {keys} (not set in the environment or .env)"
                if callable_:
                    severity = "warn"
                elif has_tape:
                    severity = "warn"
                    message += f"; only `--llm replay` from {tape.name} can run it"  # type: ignore[union-attr]
                else:
                    severity = "error"
                    message += ("; no other model of the task can answer and there is no cassette to replay "
                                "(set the key, add a fallback model, or record one with --llm record)")
                problems.append(Problem(pipeline.locate(path), dotted(path), message, severity=severity))
    return problems


def _task_needs(args: Mapping[str, Any], uses: str = "llm") -> dict[str, bool]:
    """What a task's ``with:`` needs of a model, as far as the file says (tools, an image part, JSON mode)."""
    found = {}
    if args.get("tools") or uses == "agent":
        found["tools"] = True
    messages = args.get("messages")
    if isinstance(messages, list) and any(
            isinstance(m, Mapping) and isinstance(m.get("content"), list)
            and any(isinstance(p, Mapping) and p.get("type") == "image_url" for p in m["content"]) for m in messages):
        found["vision"] = True
    if args.get("output") == "json":
        found["json_mode"] = True
    return found


def _prompt_tokens(args: Mapping[str, Any]) -> int | None:
    """The prompt's size in tokens as the run estimates it (characters / 4), when the file's text is all of it.

    ``None`` when a template fills part of it: its size is known only when the run renders it.
    """
    from goatclaw.template import has_template

    parts: list[str] = []
    for key in ("prompt", "system", "goal", "context"):
        if isinstance(args.get(key), str):
            parts.append(args[key])
    messages = args.get("messages")
    if isinstance(messages, list):
        parts += [str(m.get("content", "")) for m in messages if isinstance(m, Mapping)]
    if not parts or any(has_template(p) for p in parts) or isinstance(messages, str):
        return None
    return sum(len(p) for p in parts) // 4 + 1


def capability_problems(pipeline: Any) -> list[Any]:
    """A warning for each ``llm`` or ``agent`` task none of whose constant models has what it needs.

    What it needs: tools, an image part, room for its prompt when the file gives all of it
    (``context``: longer than the model's ``max_input_tokens``), and JSON mode (``output:
    json``) where litellm is already imported: the map does not say it, so ``validate`` leaves
    JSON mode to the run's routing.
    litellm's model map is read from its bundled file (litellm is not imported); a model the
    map does not know may have it, so a chain with one is not warned about.
    """
    from goatclaw.errors import Problem
    from goatclaw.spec.loader import dotted

    problems: list[Any] = []
    for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            if task.uses not in ("llm", "agent") or not isinstance(task.with_, Mapping) or not isinstance(
                    task.with_.get("model"), (str, list, Mapping)):
                continue
            wanted = _task_needs(task.with_, task.uses)
            tokens = _prompt_tokens(task.with_)
            model = task.with_["model"]
            if isinstance(model, Mapping) and isinstance(model.get("cascade"), list):
                model = model["cascade"]
            names = _names(model)
            if not (wanted or tokens) or not names or len(names) < _model_count(model):
                continue
            from goatclaw.llm import lacks

            missing = {name: lacks(name, wanted, tokens) for name in names}
            if all(missing.values()):
                need = ", ".join(f"a prompt of ~{tokens:,} tokens (context)" if n == "context" else n
                                 for n in sorted({n for m in missing.values() for n in m}))
                path = (*task.path, "with", "model")
                problems.append(Problem(pipeline.locate(path), dotted(path),
                                        f"no model of the chain supports {need} (litellm's model map): "
                                        + "; ".join(f"{m} lacks {', '.join(x)}" for m, x in missing.items()),
                                        severity="warn"))
    return problems


def _names(value: Any) -> list[str]:
    """The constant model names of a model value (names or entries), templated ones left out."""
    from goatclaw.template import has_template

    models = value if isinstance(value, list) else [value]
    names = [m.get("name") if isinstance(m, Mapping) else m for m in models]
    return [m for m in names if isinstance(m, str) and m and not has_template(m)]


def _model_count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def doctor(root: Path | None = None, store: Path | None = None, *, probe_ollama: bool = True,
           model: str | None = None, fallbacks: tuple[str, ...] = ()) -> dict[str, Any]:
    """What ``goatclaw doctor`` reports: the model goatclaw uses, each provider's key (or server), the store's health.

    ``model``/``fallbacks`` are the project's (``goatclaw.yaml``); the Ollama server is
    looked for at ``OLLAMA_API_BASE`` when it is set.
    """
    dotenv = read_dotenv(root)
    ollama = ollama_url(dotenv)
    providers = []
    for provider in PROVIDERS.values():
        if provider.local:
            up = ollama_running(ollama) if probe_ollama else False
            providers.append({"provider": provider.name, "usable": up, "how": ollama if up else None,
                              "needs": f"an Ollama server on {ollama}"})
            continue
        usable, where = key_status(provider, root, dotenv=dotenv)
        found = next((k for k in provider.keys if os.environ.get(k) or dotenv.get(k)), None)
        providers.append({"provider": provider.name, "usable": usable,
                          "how": f"{found} ({where})" if usable else None, "needs": " or ".join(provider.keys)})
    chosen = None if model else choose_model(root, dotenv=dotenv, probe_ollama=probe_ollama)
    return {"model": _model_choice(model, fallbacks, chosen, providers), "providers": providers,
            "store": _store_health(store)}


def _model_choice(model: str | None, fallbacks: tuple[str, ...], chosen: dict[str, Any] | None,
                  providers: list[dict[str, Any]]) -> dict[str, Any]:
    """Which model an ``llm`` task without ``model:`` uses (goatclaw.yaml's, else the zero-config choice), and why."""
    if model:
        return {"model": model, "fallbacks": list(fallbacks), "from": "goatclaw.yaml",
                "message": f"llm tasks without model: use {model}" + (f", then {', '.join(fallbacks)}" if fallbacks
                                                                       else "")}
    if chosen is not None:
        return {"model": chosen["model"], "fallbacks": list(fallbacks), "from": "detected",
                "api_base": chosen["api_base"], "message": f"llm tasks without model: use {chosen['model']}: "
                                                           f"{chosen['why']}"}
    usable = [p["provider"] for p in providers if p["usable"]]
    found = (f"usable here: {', '.join(usable)}, but no key goatclaw picks a model for and no local Ollama model"
             if usable else "no provider key (environment or .env) and no Ollama server found")
    return {"model": None, "fallbacks": list(fallbacks), "from": None,
            "message": f"none: {found}, so an llm task without model: fails; set a key, pull an Ollama model, "
                       "or set model: in goatclaw.yaml"}


def _schema_version(con: Any) -> int:
    """How many of the store's migrations have run (the store records them by name, not in ``user_version``)."""
    import sqlite3

    try:
        return int(con.execute("SELECT count(*) FROM migrations").fetchone()[0])
    except sqlite3.Error:  # a file from before migrations were recorded, or not a goatclaw store
        return int(con.execute("PRAGMA user_version").fetchone()[0])


def _newer_migrations(applied: set[str]) -> set[str]:
    """The store's migrations this goatclaw does not know (a newer goatclaw wrote the store)."""
    from goatclaw.store import MIGRATIONS

    return applied - {name for name, _ in MIGRATIONS}


def _store_health(path: Path | None) -> dict[str, Any]:
    """Whether the store opens, its size, schema version and run count; never creates one."""
    if path is None:
        return {"path": None, "ok": True, "message": "no store configured"}
    if not path.exists():
        return {"path": str(path), "ok": True, "message": "no store yet (created by the first run)"}
    info: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
    try:
        import sqlite3

        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            info["integrity"] = con.execute("PRAGMA quick_check").fetchone()[0]
            info["schema_version"] = _schema_version(con)
            try:
                info["runs"] = con.execute("SELECT count(*) FROM runs").fetchone()[0]
                applied = {row[0] for row in con.execute("SELECT name FROM migrations")}
            except sqlite3.Error:
                info["runs"], applied = None, set()
        finally:
            con.close()
        newer = _newer_migrations(applied)
        info["ok"] = info["integrity"] == "ok" and not newer
        info["message"] = ("ok" if info["ok"] else f"integrity check: {info['integrity']}" if not newer else
                           f"written by a newer goatclaw (migration {max(newer)}): this one refuses it")
    except Exception as exc:  # a locked, corrupt or foreign file
        info.update(ok=False, message=f"cannot open: {exc}")
    return info
