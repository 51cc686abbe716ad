"""What a task may do: :class:`Grant`, built in layers, deny by default.

Three layers say what is allowed, each one field at a time (``shell``, ``network``,
``files.read``, ``files.write``, ``env``, ``python``):

1. the project file (``goatclaw.yaml``): where it says a field, that is the default
   *and the ceiling* for every pipeline under it;
2. the pipeline: narrows the project's value (a field the project does not say is the
   pipeline's to grant);
3. the task: narrows the pipeline's value, never widens it (asking for more is an error
   that ``goatclaw validate`` reports at the task's ``permissions:``).

Where no layer says a field, :data:`EMBEDDED_DEFAULT` holds: no programs, no network,
no Python, read the workspace, write nothing, and only the baseline environment.

The checks (:meth:`Grant.check_program`, :meth:`Grant.check_url`, :meth:`Grant.check_read`,
:meth:`Grant.check_write`, :meth:`Grant.check_module`, :meth:`Grant.environment`) raise
:class:`~goatclaw.errors.PermissionDenied` with a message that names the rule and where it
was written, e.g. ``network: host evil.com is not in permissions.network [api.example.com]
(pipeline x.yaml:7:3)``. They are cooperative: they guard what goatclaw's tasks and
well-behaved plugins do; in-process Python code is not sandboxed by them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any
from urllib.parse import urlsplit

from goatclaw.errors import PermissionDenied
from goatclaw.security.auditkey import KEY_ENV, KEY_FILE_ENV
from goatclaw.security.globs import has_glob, literal_prefix, matches, matches_within, segments
from goatclaw.security.pycalls import follow, refusal

__all__ = [
    "BASELINE_ENV",
    "EMBEDDED_DEFAULT",
    "FIELDS",
    "Grant",
    "build_grant",
    "covers",
    "host_matches",
    "model_hosts",
    "widenings",
    "within",
]

#: The permission fields, as written in ``permissions:`` (``files.read``/``files.write``).
FIELDS = ("shell", "network", "files.read", "files.write", "env", "python", "mcp")
_ATTR = {"shell": "shell", "network": "network", "files.read": "files_read", "files.write": "files_write",
         "env": "env", "python": "python", "mcp": "mcp"}

#: Variables every process and template sees: without them no program can be found or
#: print text. None of them holds a credential.
BASELINE_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
                          "TMPDIR", "TERM", "SHELL", "PWD"})

#: Paths inside the workspace that a grant must name explicitly (a root at or inside them):
#: the secrets file, the store, git's internals (hooks run code) and the project file
#: (writing it would widen the next run's permissions).
PROTECTED = (".env", ".goatclaw", ".git", "goatclaw.yaml")


@dataclass(frozen=True)
class Grant:
    """The permissions one task runs with, every field decided (no "not said here").

    ``shell``, ``network``, ``env``, ``python``: ``True`` (anything), ``False`` (nothing) or
    the allowed program names, host patterns, variable names, modules (``pkg``, or
    ``module:function`` for one function). ``files_read``/``files_write``: roots (or globs)
    relative to ``workspace``. ``sources`` says, per field, where its value was written.
    """

    shell: bool | tuple[str, ...] = False
    network: bool | tuple[str, ...] = False
    files_read: tuple[str, ...] = ()
    files_write: tuple[str, ...] = ()
    env: bool | tuple[str, ...] = False
    python: bool | tuple[str, ...] = False
    #: MCP servers (``goatclaw.yaml``'s ``mcp_servers:``) whose tools may be called: a server
    #: name for all its tools, ``server:tool`` for one.
    mcp: bool | tuple[str, ...] = False
    workspace: str = ""
    protected: tuple[str, ...] = ()  # real paths beyond PROTECTED a grant must name explicitly (the store's files)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # a dict: grants travel to workers

    @classmethod
    def everything(cls, workspace: str | os.PathLike[str] = "") -> Grant:
        """Everything, files inside the workspace (for code that calls a plugin directly and means it)."""
        return cls(True, True, (".",), (".",), True, True, True, str(workspace or Path.cwd()),
                   sources=dict.fromkeys(FIELDS, "Grant.everything()"))

    @classmethod
    def nothing(cls, workspace: str | os.PathLike[str] = "") -> Grant:
        """A grant of nothing at all."""
        return cls(workspace=str(workspace or Path.cwd()), sources=dict.fromkeys(FIELDS, "no grant"))

    # -- the checks ------------------------------------------------------------------

    def check_program(self, program: str) -> None:
        """Refuse to start ``program`` (argv[0]; for a script, the shell) unless ``shell`` allows it.

        A bare name (``git``) is allowed by that name; a path (``./git``, ``/usr/bin/git``)
        only when the list holds that exact path, so a file planted in the workspace cannot
        pass for an allowed program.
        """
        program = str(program)
        if self.shell is True or (isinstance(self.shell, tuple) and program in self.shell):
            return
        self._deny("shell", f"program '{program}'" + (" is not in" if self.shell else " cannot run:"),
                   self.shell)

    def check_url(self, url: str) -> str:
        """Refuse a request to ``url`` unless its host matches ``network``; returns the host."""
        host, port = _host_port(url)
        if not host:
            raise PermissionDenied(f"network: '{url}' names no host")
        if not self.allows_host(host, port):
            self._deny("network", f"host {host}" + (" is not in" if self.network else " cannot be reached:"),
                       self.network)
        return host

    def allows_host(self, host: str, port: int | None = None, *, listed: bool = False) -> bool:
        """Whether ``network`` allows ``host``; ``listed``: only by a pattern that names hosts.

        ``network: true`` lists no host, and neither does the pattern ``*`` (with or
        without a port): where a secret may go, "anywhere" is not a name.
        """
        if self.network is True:
            return not listed
        return isinstance(self.network, tuple) and any(
            host_matches(host, port, p) for p in self.network if not (listed and _names_no_host(p)))

    def allows_mcp(self, server: str, tool: str | None = None) -> bool:
        """Whether ``mcp`` grants ``tool`` of ``server`` (``tool=None``: some tool of it at least)."""
        if self.mcp is True:
            return True
        if not isinstance(self.mcp, tuple):
            return False
        if server in self.mcp:
            return True
        return any(g.partition(":")[0] == server and (tool is None or g.partition(":")[2] == tool)
                   for g in self.mcp if ":" in g)

    def check_mcp(self, server: str, tool: str) -> None:
        """Refuse a call of ``tool`` on the MCP server ``server`` unless ``mcp`` grants it."""
        if not self.allows_mcp(server, tool):
            what = f"tool '{tool}' of server '{server}'"
            self._deny("mcp", what + (" is not in" if self.mcp else " cannot be called:"), self.mcp)

    def check_read(self, path: str | os.PathLike[str]) -> Path:
        """The real path of ``path`` (relative to the workspace) if ``files.read`` allows it."""
        return self._check_file("files.read", self.files_read, path)

    def check_write(self, path: str | os.PathLike[str]) -> Path:
        """The real path of ``path`` (relative to the workspace) if ``files.write`` allows it."""
        return self._check_file("files.write", self.files_write, path)

    def may_read(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``files.read`` allows ``path`` (no error)."""
        try:
            self.check_read(path)
        except PermissionDenied:
            return False
        return True

    def check_module(self, module: str, function: str = "") -> None:
        """Refuse to call ``module:function`` unless ``python`` allows the module (or that function).

        Checked before the import (importing runs the module's code); what the reference
        really names is checked after it, by :meth:`check_callable`.
        """
        if self.python is True:
            return
        ref = f"{module}:{function}" if function else module
        if isinstance(self.python, tuple):
            if any(function.startswith("_") or part.startswith("_") for part in function.split(".")):
                self._deny("python", f"'{ref}' names a private attribute, which only python: true allows; it is "
                                     "not in", self.python)
            if self.granting(module, function):
                return
        self._deny("python", f"'{ref}'" + (" is not in" if self.python else " cannot be called:"), self.python)

    def granting(self, module: str, function: str = "") -> list[str]:
        """The modules of the ``python`` entries that allow ``module:function`` (``pkg`` covers ``pkg.sub``)."""
        if not isinstance(self.python, tuple):
            return [module] if self.python is True else []
        found = []
        for allowed in self.python:
            mod, _, fn = allowed.partition(":")
            if (module == mod or module.startswith(mod + ".")) and (not fn or fn == function):
                found.append(mod)
        return found

    def check_callable(self, module: ModuleType, name: str, attr: str) -> Any:
        """What ``name:attr`` names in the imported ``module``, if ``python`` allows calling it.

        The attribute chain is followed one step at a time: with ``python: true`` anything
        goes; otherwise every step must be a class, and the last a plain function or class,
        defined in a granted module (so ``os.path:os.system`` and ``json:codecs.open``, which
        walk into other modules, are refused). ``AttributeError`` when a step is missing.
        """
        self.check_module(name, attr)
        chain = follow(module, attr)
        if self.python is not True:
            why = refusal(chain, attr, self.granting(name, attr))
            if why is not None:
                self._deny("python", f"'{name}:{attr}' {why}; a grant allows only the functions and classes "
                                     "its module defines:", self.python)
        return chain[-1]

    def env_visible(self, name: str) -> bool:
        """Whether a task may see the environment variable ``name`` (never the audit key)."""
        if name in (KEY_ENV, KEY_FILE_ENV):
            return False
        return name in BASELINE_ENV or self.env is True or (isinstance(self.env, tuple) and name in self.env)

    def environment(self, source: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables of ``source`` (default ``os.environ``) that this task may see."""
        source = os.environ if source is None else source
        return {k: v for k, v in source.items() if self.env_visible(k)}

    def environment_view(self, source: Mapping[str, str]) -> Mapping[str, str]:
        """``env`` for templates: the visible variables; reading another one names the rule."""
        return _EnvView(self.environment(source), self)

    # -- describing ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Each field's value and where it was written (``goatclaw plan --permissions``)."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, _ATTR[name])
            out[name] = {"value": list(value) if isinstance(value, tuple) else value,
                         "from": self.sources.get(name, "embedded default")}
        return out

    def _deny(self, name: str, what: str, value: Any, hint: str = "") -> None:
        where = self.sources.get(name, "embedded default")
        raise PermissionDenied(f"{name.split('.')[0]}: {what} permissions.{name} {_show(value)} ({where}){hint}",
                               details={"rule": f"permissions.{name}", "where": where})

    def _check_file(self, name: str, roots: tuple[str, ...], path: str | os.PathLike[str]) -> Path:
        base = Path(self.workspace or Path.cwd()).resolve()
        try:
            target = (base / Path(path)).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise PermissionDenied(f"{name.split('.')[0]}: '{path}' cannot be resolved: {exc}") from None
        guards = [p for p in self.protected_paths(base) if target.is_relative_to(p)]
        reaching = [r for r in roots if grants_path(r, target, base)]
        shown = _shown_path(target, base)
        what = f"'{path}' (really {shown})" if str(path) != shown else f"'{path}'"
        if any(all(_names(r, base, g) for g in guards) for r in reaching):
            if name == "files.write":
                self._check_links(target, what)
            return target
        if reaching:  # the guard that the grant naming the most of them still misses
            best = max(reaching, key=lambda r: sum(_names(r, base, g) for g in guards))
            guard = next(g for g in guards if not _names(best, base, g))
            if str(guard) in self.protected:
                said = f"{what} is one of the store's files ({_shown_path(guard, base)}), which a grant must name"
            else:
                where = "is" if guard == target else "is inside"
                said = f"{what} {where} {_shown_path(guard, base)}, which a grant must name"
            self._deny(name, f"{said} explicitly; it is not in", roots)
        hint = ""
        if not target.is_relative_to(base) and any(not _is_absolute(r) for r in roots):
            hint = "; it is outside the workspace, which only a grant of an absolute folder reaches"
        self._deny(name, f"{what} is not in" if roots else f"{what} cannot be accessed:", roots, hint)
        raise AssertionError("unreachable")  # _deny raises

    def protected_paths(self, base: Path | None = None) -> list[Path]:
        """The real paths a grant must name explicitly: :data:`PROTECTED` in the workspace, and the store's files."""
        base = base or Path(self.workspace or Path.cwd()).resolve()
        return [base / p for p in PROTECTED] + [Path(p) for p in self.protected]

    def _check_links(self, target: Path, what: str) -> None:
        """Refuse to write a file that has other hard links: they may be anywhere, outside the workspace too."""
        try:
            links = target.lstat().st_nlink if target.is_file() else 1
        except OSError:
            return
        if links > 1:
            where = self.sources.get("files.write", "embedded default")
            raise PermissionDenied(
                f"files: {what} has {links} hard links; writing it would change the same file under its other "
                f"names, which may be outside the workspace, so it is refused (permissions.files.write, {where})",
                details={"rule": "permissions.files.write", "where": where})


class _EnvView(dict):  # type: ignore[type-arg]
    """The variables a task may see; the template sandbox asks it why another one is missing."""

    def __init__(self, visible: Mapping[str, str], grant: Grant) -> None:
        super().__init__(visible)
        self._grant = grant

    def explain_missing(self, name: str) -> str:
        """Why ``env.<name>`` is undefined: not set, or not granted."""
        if name in os.environ:
            where = self._grant.sources.get("env", "embedded default")
            return (f"env: {name} is not visible to this task: it is not in permissions.env "
                    f"{_show(self._grant.env)} ({where})")
        return f"env: {name} is not set"


def _show(value: Any) -> str:
    if value is True:
        return "true"
    if value is False or value == ():
        return "[] (nothing granted)" if value == () else "false"
    return "[" + ", ".join(value) + "]"


def _shown_path(target: Path, base: Path) -> str:
    return target.relative_to(base).as_posix() if target.is_relative_to(base) else str(target)


def _is_absolute(root: str) -> bool:
    return root.startswith("/")


def _root_path(root: str, base: Path) -> Path:
    """The real path of a literal root (a relative one starts at the workspace)."""
    return (base / root).resolve()


def _under(target: Path, base: Path) -> tuple[str, ...] | None:
    """The segments of ``target`` relative to ``base``; ``None`` when it is not inside."""
    return target.relative_to(base).parts if target.is_relative_to(base) else None


def grants_path(root: str, target: Path, base: Path) -> bool:
    """Whether the grant ``root`` reaches the real path ``target`` (the workspace is ``base``, resolved).

    A relative root (literal or glob) only reaches paths inside the workspace: it is
    matched against the target's path relative to ``base``, segment by segment, and a
    target outside has none. Only an absolute root reaches outside, and only below it.
    A literal root reaches itself and what is inside it; a glob, what it matches and
    what is inside that.
    """
    if _is_absolute(root):
        if has_glob(root):
            return matches_within(root, target.parts[1:])
        return target.is_relative_to(_root_path(root, base))
    rel = _under(target, base)
    if rel is None:
        return False
    if has_glob(root):
        return matches_within(root, rel)
    literal = _root_path(root, base)
    return literal.is_relative_to(base) and target.is_relative_to(literal)


def root_problem(root: str, base: Path) -> str | None:
    """What is wrong with a file grant ``root`` for the workspace ``base`` (``None``: nothing).

    A relative root whose real path is outside the workspace (``../x``, a symlink out)
    would grant nothing, since a relative grant never reaches outside; a glob holding
    ``..`` matches nothing (paths are matched after they are resolved).
    """
    if has_glob(root) and ".." in segments(root):
        return f"'{root}' holds '..', which a glob never matches (paths are matched after resolving): " \
               "write the folder it means"
    if _is_absolute(root):
        return None
    try:
        real = base.joinpath(*(literal_prefix(root) if has_glob(root) else segments(root))).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if real.is_relative_to(base):
        return None
    return f"'{root}' is outside the workspace (really {real}), which a relative grant never reaches: " \
           "name the folder by its absolute path to grant it"


def _names(root: str, base: Path, protected: Path) -> bool:
    """Whether ``root`` explicitly names the protected path: its literal part is that path or inside it.

    For a glob only the leading segments without glob characters count, compared as
    real paths: ``.git*`` (for ``.gitignore``) does not name ``.git``, ``.goatclaw/*`` names ``.goatclaw``.
    """
    if has_glob(root):
        start = Path("/") if _is_absolute(root) else base
        literal = start.joinpath(*literal_prefix(root))
        try:
            literal = literal.resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return literal.is_relative_to(protected)
    return _root_path(root, base).is_relative_to(protected)


def _host_port(url: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(str(url))
        return (parts.hostname or "").lower().rstrip("."), parts.port
    except ValueError:
        return "", None


def _split_port(pattern: str) -> tuple[str, int | None]:
    """``host:8080`` -> (``host``, 8080); the host part lower-cased, without brackets or a final dot."""
    pattern = pattern.strip().lower()
    want_port: int | None = None
    if pattern.count(":") == 1 or (pattern.startswith("[") and "]:" in pattern):
        head, _, tail = pattern.rpartition(":")
        if tail.isdigit():
            pattern, want_port = head, int(tail)
    return pattern.strip("[]").rstrip("."), want_port


def _names_no_host(pattern: str) -> bool:
    """Whether a network pattern matches any host at all (``*``, ``*:443``): it lists none by name."""
    return _split_port(pattern)[0] == "*"


def host_matches(host: str, port: int | None, pattern: str) -> bool:
    """Whether ``host`` (and ``port``) match ``pattern``: ``api.example.com``, ``*.example.com``, ``h:8080``.

    ``*.example.com`` matches every subdomain of example.com, not example.com itself; ``*``
    matches any host. A pattern with a port matches that port only.
    """
    pattern, want_port = _split_port(pattern)
    host = host.lower().strip("[]").rstrip(".")
    if want_port is not None and port != want_port:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


# -- layering ------------------------------------------------------------------------

#: What holds where no layer says anything: deny, except reading the workspace.
EMBEDDED_DEFAULT: Mapping[str, Any] = MappingProxyType({
    "shell": False, "network": False, "files.read": (".",), "files.write": (), "env": False, "python": False,
    "mcp": False})


def _value(perms: Any, name: str) -> Any:
    return None if perms is None else getattr(perms, _ATTR[name], None)


def build_grant(layers: Iterable[tuple[Any, str]], workspace: str | os.PathLike[str], *,
                store: Iterable[str | os.PathLike[str] | None] = ()) -> Grant:
    """The grant from ``(Permissions, where)`` layers, outermost first; a layer's ``None`` says nothing.

    ``where`` is a text, or a mapping from field name to text (where each field was written).
    Each field takes the innermost value said (the validator makes sure it only narrows).
    ``store``: the store files wherever ``store.path`` puts them; each one, with its
    ``-wal``, ``-shm`` and ``-journal`` files and its TOTP key (``.key``), is protected like ``.env``.
    """
    values = {name: (EMBEDDED_DEFAULT[name], "embedded default") for name in FIELDS}
    for perms, where in layers:
        for name in FIELDS:
            v = _value(perms, name)
            if v is not None:
                values[name] = (v, where if isinstance(where, str) else where.get(name, ""))
    kwargs = {_ATTR[n]: (tuple(v) if isinstance(v, list) else v) for n, (v, _) in values.items()}
    kwargs["files_read"] = tuple(kwargs["files_read"] or ())
    kwargs["files_write"] = tuple(kwargs["files_write"] or ())
    return Grant(**kwargs, workspace=str(Path(workspace).resolve()), protected=store_files(store, workspace),
                 sources={n: w for n, (_, w) in values.items()})


#: The files SQLite keeps beside a database: what the store holds is in them too; and the key of
#: the users' sealed TOTP secrets (goatclaw.server.sealing), which is the store's path with ``.key``.
STORE_SIDECARS = ("", "-wal", "-shm", "-journal", ".key")


def store_files(stores: Iterable[str | os.PathLike[str] | None], workspace: str | os.PathLike[str]) -> tuple[str, ...]:
    """The real paths of the store files (and their WAL, shared-memory and journal files, and TOTP key)."""
    found: dict[str, None] = {}
    for store in stores:
        if store:
            real = (Path(workspace) / Path(store)).resolve()
            found.update(dict.fromkeys(str(real) + suffix for suffix in STORE_SIDECARS))
    return tuple(found)


def covers(name: str, outer: Any, inner: Any, workspace: Path | None = None) -> list[str]:
    """The parts of ``inner`` that ``outer`` does not allow (empty: ``inner`` only narrows)."""
    if inner is None or inner is False or inner == ():
        return []
    if outer is True:
        return []
    if inner is True:
        return ["true"]
    if not outer:
        return list(inner)
    if name in ("files.read", "files.write"):
        base = (workspace or Path.cwd()).resolve()
        return [p for p in inner if not any(_root_covers(o, p, base) for o in outer)]
    return [p for p in inner if not any(_item_covers(name, o, p) for o in outer)]


def _item_covers(name: str, outer: str, inner: str) -> bool:
    if outer == inner:
        return True
    if name == "network":
        if outer.strip() == "*":
            return True
        probe = inner[2:] if inner.startswith("*.") else inner
        return host_matches("x." + probe if inner.startswith("*.") else probe, None, outer)
    if name == "mcp":  # a server covers each of its tools
        return ":" not in outer and inner.partition(":")[0] == outer
    if name == "python":
        mod, _, fn = outer.partition(":")
        imod, _, ifn = inner.partition(":")
        return (imod == mod or imod.startswith(mod + ".")) and (not fn or fn == ifn)
    return False


def _root_covers(outer: str, inner: str, base: Path) -> bool:
    """Whether every path the grant ``inner`` reaches is reached by ``outer`` (sound, not complete)."""
    if root_problem(inner, base) is not None:
        return False  # validate reports it on its own too
    if outer.rstrip("/") == inner.rstrip("/"):
        return True
    literal = inner
    if has_glob(inner):  # what a glob reaches lies inside its literal part
        literal = "/".join(literal_prefix(inner)) or "."
        literal = "/" + literal if _is_absolute(inner) else literal
    target = _root_path(literal, base)
    if grants_path(outer, target, base):
        return True
    if has_glob(outer) and has_glob(inner) and _is_absolute(outer) == _is_absolute(inner):
        return _pattern_covers(segments(outer), segments(inner))
    return False


def _pattern_covers(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether every path that ``inner`` (or a folder it matches) reaches, ``outer`` reaches: segment by segment."""
    if not outer:
        return True  # outer matched a folder: all below it is granted
    if not inner:
        return False
    if outer[0] == "**":  # it stands for no segment, or takes the next inner one (whatever that matches)
        return _pattern_covers(outer[1:], inner) or _pattern_covers(outer, inner[1:])
    return _segment_covers(outer[0], inner[0]) and _pattern_covers(outer[1:], inner[1:])


def _segment_covers(outer: str, inner: str) -> bool:
    """Whether the pattern segment ``outer`` matches every name the segment ``inner`` matches."""
    if outer in (inner, "**"):
        return True
    if inner == "**":
        return False
    return outer == "*" or (not has_glob(inner) and matches(outer, (inner,)))


def widenings(outer: Any, inner: Any, workspace: Path | None = None) -> list[tuple[str, list[str]]]:
    """Per field of ``inner`` (a Permissions or Grant): what it asks beyond ``outer`` (a Grant)."""
    found = []
    for name in FIELDS:
        extra = covers(name, getattr(outer, _ATTR[name]), _value(inner, name), workspace)
        if extra:
            found.append((name, extra))
    return found


# -- model hosts ---------------------------------------------------------------------

#: The API host each litellm provider prefix talks to when no ``api_base`` is given.
PROVIDER_HOSTS: Mapping[str, str] = MappingProxyType({
    "openai": "api.openai.com", "text-completion-openai": "api.openai.com", "anthropic": "api.anthropic.com",
    "gemini": "generativelanguage.googleapis.com", "mistral": "api.mistral.ai", "groq": "api.groq.com",
    "together_ai": "api.together.xyz", "deepseek": "api.deepseek.com", "cohere": "api.cohere.ai",
    "openrouter": "openrouter.ai", "fireworks_ai": "api.fireworks.ai", "perplexity": "api.perplexity.ai",
    "xai": "api.x.ai", "ollama": "localhost:11434", "ollama_chat": "localhost:11434",
    "huggingface": "api-inference.huggingface.co", "voyage": "api.voyageai.com",
})
#: Environment variables that move a provider to another host (litellm reads them).
BASE_ENV = {"openai": ("OPENAI_API_BASE", "OPENAI_BASE_URL"), "ollama": ("OLLAMA_API_BASE",),
            "ollama_chat": ("OLLAMA_API_BASE",), "anthropic": ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")}


def model_hosts(model: str, api_base: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The URL the call for ``model`` goes to (``api_base``, a provider's env override, or its host).

    ``None`` when it cannot be told (an unknown provider and no ``api_base``).
    """
    if api_base:
        return api_base if "://" in api_base else f"https://{api_base}"
    environ = os.environ if environ is None else environ
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    for var in BASE_ENV.get(provider, ()):
        if environ.get(var):
            return environ[var]
    host = PROVIDER_HOSTS.get(provider)
    return f"https://{host}" if host else None


def narrowed(grant: Grant, **fields: Any) -> Grant:
    """``grant`` with some fields replaced (for tests and direct plugin calls)."""
    return replace(grant, **fields)


def within(grant: Grant, ceiling: Grant) -> Grant:
    """``grant`` cut down to what ``ceiling`` allows too, field by field (a child run under its caller's grant).

    A field is kept where both allow it: ``True`` under a list becomes the list; of two
    lists, the entries of each that the other covers. What neither covers whole is dropped
    (sound, not complete: a cut is never wider than either side).
    """
    base = Path(grant.workspace or ceiling.workspace or Path.cwd())
    cut: dict[str, Any] = {}
    for name in FIELDS:
        attr = _ATTR[name]
        mine, theirs = getattr(grant, attr), getattr(ceiling, attr)
        cut[attr] = _meet(name, mine, theirs, base)
    sources = {n: f"{grant.sources.get(n, '')}, within the calling task's grant" for n in FIELDS}
    protected = tuple(dict.fromkeys((*grant.protected, *ceiling.protected)))
    return replace(grant, **cut, protected=protected, sources=sources)


def _meet(name: str, mine: Any, theirs: Any, base: Path) -> Any:
    if mine is True:
        return theirs
    if theirs is True:
        return mine
    if not mine or not theirs:
        return () if name.startswith("files") else False
    kept = [m for m in mine if not covers(name, theirs, (m,), base)]
    kept += [t for t in theirs if not covers(name, mine, (t,), base)]
    return tuple(dict.fromkeys(kept)) or (() if name.startswith("files") else False)
