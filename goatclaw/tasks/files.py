"""``file.read``, ``file.write``, ``file.list`` and ``file.glob``: files inside the workspace.

Every path is relative to the workspace and resolved (symlinks included) before use; the
real path must be inside a root of ``permissions.files.read`` (``file.read``, ``file.list``)
or ``permissions.files.write`` (``file.write``), so ``../x``, ``/etc/passwd`` and a symlink
pointing out fail with ``permission_denied``; so does writing a file with other hard
links (their names may be outside). Writes replace a file atomically (a temporary file
in the same directory, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NoReturn

from goatclaw.plugin import TaskContext, fail, task
from goatclaw.userfile import FileTooLarge, read_bytes

__all__ = ["glob", "list_files", "read", "replace_atomically", "write"]

#: The largest file ``file.read`` returns: outputs are stored and handed to later tasks.
MAX_READ_BYTES = 10 * 1024 * 1024
#: The most paths ``file.glob`` may be asked to return.
MAX_GLOB_RESULTS = 100_000

_READ_FORMATS = ("text", "json", "yaml", "lines")
_WRITE_FORMATS = ("text", "json")
_WRITE_MODES = ("overwrite", "append")


# cacheable=False: the output follows the file's content, which the cache key cannot see
@task(cacheable=False, permissions=("files.read",), sinks=("path",))
def read(ctx: TaskContext, *, path: str, format: Literal["text", "json", "yaml", "lines"] = "text",
         encoding: str = "utf-8") -> Any:
    """Read a workspace file as text, JSON, YAML or a list of lines.

    The output is untrusted when an untrusted flow wrote the file (see ``TaskContext.read_back``).
    """
    _check_choice("format", format, _READ_FORMATS)
    target = _existing_file(ctx, path)
    data = _read_file(target, path)
    ctx.read_back(target, data)
    text = _decode(data, path, encoding)
    if format == "json":
        return _parse_json(text, path)
    if format == "yaml":
        return _parse_yaml(text, path)
    if format == "lines":
        return text.splitlines()
    return text


@task(side_effects=True, permissions=("files.write",), sinks=("path",))
def write(ctx: TaskContext, *, path: str, content: Any, format: Literal["text", "json"] = "text",
          mode: Literal["overwrite", "append"] = "overwrite", mkdir: bool = True,
          encoding: str = "utf-8") -> dict[str, Any]:
    """Write text or JSON to a workspace file (atomically when overwriting); returns its path and size."""
    _check_choice("format", format, _WRITE_FORMATS)
    _check_choice("mode", mode, _WRITE_MODES)
    target = ctx.require_write(path)
    data = _encode(_serialise(content, format, mode), encoding)
    _prepare_parent(target, path, mkdir)
    if target.is_dir():
        fail(f"cannot write '{path}': it is a directory", error_class="invalid_input")
    ctx.throttle_blocking("file")  # rate_limits.side_effects.file_writes_per_minute: wait, never fail
    try:
        if mode == "append":
            _append(target, data, path)
        else:
            replace_atomically(target, data)
    except OSError as exc:
        fail(f"cannot write '{path}': {exc.strerror or exc}", error_class="internal")
    written = _relative(ctx, target)
    ctx.audit("file.written", path=written, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), mode=mode)
    return {"path": written, "bytes": len(data)}


@task(cacheable=False, permissions=("files.read",), sinks=("path", "pattern"))
def list_files(ctx: TaskContext, *, pattern: str = "*", path: str = ".", recursive: bool = False,
               files_only: bool = True) -> list[str]:
    """List workspace paths under ``path`` matching a glob ``pattern``, sorted, relative to the workspace."""
    root = ctx.require_read(path)
    if not root.is_dir():
        fail(f"cannot list '{path}': no such directory in the workspace", error_class="invalid_input")
    _check_pattern(pattern)
    base = ctx.workspace.resolve()
    matches = root.rglob(pattern) if recursive else root.glob(pattern)
    found = {entry.relative_to(base).as_posix() for entry in matches
             if _inside(entry, base) and ctx.grant.may_read(entry) and (entry.is_file() if files_only else True)}
    return sorted(found)


@task(cacheable=False, permissions=("files.read",), sinks=("path", "patterns"))
def glob(ctx: TaskContext, *, patterns: str | list[str], path: str = ".", exclude: list[str] | None = None,
         files_only: bool = True, limit: int = 10_000, details: bool = False) -> dict[str, Any]:
    """Find workspace paths under ``path`` matching glob ``patterns`` (``**`` spans folders), minus ``exclude``.

    ``*`` and ``?`` never match ``/``; ``**`` as a whole segment matches any number of folders.
    ``path`` may be a folder above the read grants (the workspace, say): only granted files are listed.
    The walk never follows a link into a folder; a linked file is listed only if its target is
    readable under the grant. Returns ``{"paths": [...], "count", "truncated"}`` (sorted, relative
    to the workspace, at most ``limit``); ``details: true`` makes each path ``{path, bytes, modified}``.
    """
    root = _glob_root(ctx, path)
    if not root.is_dir():
        fail(f"cannot glob in '{path}': no such directory in the workspace", error_class="invalid_input")
    wanted = _matchers(patterns, "patterns")
    skipped = _matchers(exclude or [], "exclude")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_GLOB_RESULTS:
        fail(f"limit must be a whole number from 1 to {MAX_GLOB_RESULTS:,}, not {limit!r}", error_class="invalid_input")
    found, truncated = _walk_matching(ctx, root, wanted, skipped, files_only, limit)
    paths = sorted(found)
    listed: list[Any] = [_described(ctx, p) for p in paths] if details else paths
    return {"paths": listed, "count": len(paths), "truncated": truncated}


# -- reading -------------------------------------------------------------------------


def _existing_file(ctx: TaskContext, path: str) -> Path:
    """The resolved path of an existing regular file, or a clear ``invalid_input``."""
    target = ctx.require_read(path)
    if not target.exists():
        fail(f"cannot read '{path}': no such file in the workspace", error_class="invalid_input", path=path)
    if not target.is_file():
        fail(f"cannot read '{path}': it is not a regular file", error_class="invalid_input", path=path)
    return target


def _read_file(target: Path, path: str) -> bytes:
    """The file's bytes, refusing files over :data:`MAX_READ_BYTES`."""
    try:
        return read_bytes(target, limit=MAX_READ_BYTES)  # a regular file, bounded whatever stat() says
    except FileTooLarge as exc:
        fail(f"cannot read '{path}': {exc.strerror}", error_class="invalid_input", path=path)
    except OSError as exc:
        fail(f"cannot read '{path}': {exc.strerror or exc}", error_class="invalid_input", path=path)


def _decode(data: bytes, path: str, encoding: str) -> str:
    """The file's text, with Windows and old Mac line ends turned into newlines."""
    try:
        return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        fail(f"cannot read '{path}' as {encoding}: {exc.reason} at byte {exc.start}", error_class="invalid_input",
             path=path)
    except LookupError:
        fail(f"unknown encoding '{encoding}'", error_class="invalid_input")


def _parse_json(text: str, path: str) -> Any:
    """Strict JSON: ``NaN``, ``Infinity`` and duplicate keys are refused (Python's json accepts them)."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        fail(f"'{path}' is not valid JSON: {exc}", error_class="invalid_input", path=path)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a key given twice (``json`` keeps the last one silently, as PyYAML does)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {json.dumps(key, ensure_ascii=False)} in one object")
        out[key] = value
    return out


def _reject_constant(name: str) -> NoReturn:
    """``json`` calls this for ``NaN``, ``Infinity`` and ``-Infinity``."""
    raise ValueError(f"{name} is not a JSON number")


def _parse_yaml(text: str, path: str) -> Any:
    """YAML through goatclaw's safe loader (no tags, no alias bombs, no duplicate keys)."""
    from goatclaw.errors import SpecError
    from goatclaw.spec.loader import load_text  # imported here: it is the one owner of PyYAML

    try:
        doc = load_text(text, file=path)
    except SpecError as exc:
        fail(f"'{path}' is not valid YAML: {exc}", error_class="invalid_input", path=path)
    if doc.problems:
        fail(f"'{path}' is not valid YAML: " + "; ".join(str(p) for p in doc.problems), error_class="invalid_input",
             path=path)
    return doc.data


# -- writing -------------------------------------------------------------------------


def _serialise(content: Any, format: str, mode: str) -> str:
    """The text to write: ``content`` itself, or JSON (indented, or one line per append for JSON Lines)."""
    if format == "text":
        if not isinstance(content, str):
            fail(f"content is a {type(content).__name__}, not text: use format: json to write data",
                 error_class="invalid_input")
        return content
    try:
        if mode == "append":
            return json.dumps(content, ensure_ascii=False, allow_nan=False) + "\n"
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=2) + "\n"
    except (TypeError, ValueError) as exc:
        fail(f"content cannot be written as JSON: {exc}", error_class="invalid_input")


def _encode(text: str, encoding: str) -> bytes:
    """The bytes to write, or ``invalid_input`` for an unknown encoding or unencodable text."""
    try:
        return text.encode(encoding)
    except LookupError:
        fail(f"unknown encoding '{encoding}'", error_class="invalid_input")
    except UnicodeEncodeError as exc:
        fail(f"content cannot be encoded as {encoding}: {exc.reason}", error_class="invalid_input")


def _prepare_parent(target: Path, path: str, mkdir: bool) -> None:
    """Make sure the parent directory exists (creating it if ``mkdir``)."""
    parent = target.parent
    if parent.is_dir():
        return
    if not mkdir:
        fail(f"cannot write '{path}': directory '{parent.name}' does not exist (mkdir is off)",
             error_class="invalid_input")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create the directory for '{path}': {exc.strerror or exc}", error_class="invalid_input")


def _append(target: Path, data: bytes, path: str) -> None:
    """Append to ``target``, refusing a file that became a symlink or got another hard link since the check.

    The grant checked the real path; between that check and this open the file can
    change, so the open itself does not follow a symlink and the opened file's own link
    count is checked (a hard link's other names may be outside the workspace).
    """
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "ab") as fh:
        links = os.fstat(fh.fileno()).st_nlink
        if links > 1:
            fail(f"files: cannot append to '{path}': it has {links} hard links, whose other names may be outside "
                 "the workspace", error_class="permission_denied")
        fh.write(data)


def replace_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file beside ``target``, flush it to disk, then rename it over ``target``."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as for any new file; an existing file keeps its mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- listing -------------------------------------------------------------------------


def _check_pattern(pattern: str) -> None:
    """A glob pattern must stay below the listed directory."""
    if not isinstance(pattern, str) or not pattern:
        fail("pattern must be a non-empty glob such as '*.md'", error_class="invalid_input")
    parts = PurePosixPath(pattern).parts
    if pattern.startswith(("/", "\\")) or ".." in parts:
        fail(f"pattern '{pattern}' reaches outside the listed directory", error_class="permission_denied")


def _glob_root(ctx: TaskContext, path: str) -> Path:
    """Where the walk starts: ``path`` if readable, or a folder holding a read grant (only granted files are listed)."""
    target = ctx.path(path)
    roots = ctx.grant.files_read or ()
    if not ctx.grant.may_read(target) and any((ctx.workspace / str(r)).resolve().is_relative_to(target)
                                              for r in roots):
        return target
    return ctx.require_read(path)  # readable, or refused (and audited) here


def _matchers(patterns: Any, name: str) -> list[Any]:
    """Each glob of ``patterns`` as a linear-time regular expression over a POSIX relative path."""
    from goatclaw.regex import RegexError, compile_linear

    items = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(items, list) or (name == "patterns" and not items):
        fail(f"{name} must be a glob such as '**/*.py' or a list of them", error_class="invalid_input")
    out = []
    for pattern in items:
        _check_pattern(pattern)
        try:
            out.append(compile_linear(_glob_regex(pattern.strip("/"))))
        except RegexError as exc:
            fail(f"{name}: '{pattern}' is not a glob goatclaw can match: {exc}", error_class="invalid_input")
    return out


def _glob_regex(pattern: str) -> str:
    """``pattern`` as a regular expression: ``**`` segments span folders, ``*`` and ``?`` stay in one name."""
    import re

    parts = []
    segments = pattern.split("/")
    for number, segment in enumerate(segments, start=1):
        if segment == "**":
            parts.append(".*/" if number == len(segments) else "(?:[^/]+/)*")  # a last ** takes everything below
            continue
        out, i = "", 0
        while i < len(segment):
            c = segment[i]
            close = segment.find("]", i + 2) if c == "[" else -1
            if c == "*":
                out += "[^/]*"
            elif c == "?":
                out += "[^/]"
            elif close > 0:
                body = segment[i + 1:close]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                out += "[" + ("^/" if negate else "") + body.replace("\\", "\\\\").replace("/", "") + "]"
                i = close
            else:
                out += re.escape(c)
            i += 1
        parts.append(out + "/")
    return "^" + "".join(parts).removesuffix("/") + "$"


def _walk_matching(ctx: TaskContext, root: Path, wanted: list[Any], skipped: list[Any], files_only: bool,
                   limit: int) -> tuple[set[str], bool]:
    """Paths under ``root`` (relative to the workspace) that a pattern matches, walking without following links."""
    base = ctx.workspace.resolve()
    found: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        rel_here = here.relative_to(root).as_posix()
        prefix = "" if rel_here == "." else rel_here + "/"
        dirs[:] = sorted(d for d in dirs if not any(m.search(prefix + d) for m in skipped))
        names = files if files_only else [*files, *dirs]
        for name in sorted(names):
            rel = prefix + name
            if not any(m.search(rel) for m in wanted) or any(m.search(rel) for m in skipped):
                continue
            entry = here / name
            if not (_inside(entry, base) and ctx.grant.may_read(entry)):
                continue  # a link out of the grant, or a file the grant leaves out
            if files_only and not entry.is_file():
                continue
            if len(found) >= limit:
                return found, True
            found.add(entry.relative_to(base).as_posix())
    return found, False


def _described(ctx: TaskContext, rel: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    info = (ctx.workspace.resolve() / rel).stat()
    return {"path": rel, "bytes": info.st_size,
            "modified": datetime.fromtimestamp(info.st_mtime, UTC).isoformat(timespec="seconds")}


def _inside(entry: Path, base: Path) -> bool:
    """Whether ``entry`` (after following symlinks) is inside the workspace."""
    try:
        return entry.resolve().is_relative_to(base)
    except OSError:
        return False


def _relative(ctx: TaskContext, target: Path) -> str:
    """``target`` as a POSIX path relative to the workspace."""
    base = ctx.workspace.resolve()
    return target.relative_to(base).as_posix() if target.is_relative_to(base) else str(target)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """``invalid_input`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        fail(f"{name} must be one of {', '.join(choices)}, not '{value}'", error_class="invalid_input")
