"""``file.copy``, ``file.move``, ``file.delete``, ``file.mkdir``, ``file.archive`` and ``file.extract``.

Every path goes through the task's grants (``permissions.files``), resolved with its
symlinks first, so a link can never carry a copy, a move or a delete out of a grant. A
tree being copied or archived is walked without following links: a link whose target is
outside the read grant is refused; one inside is copied as the file it names. A link
that is itself deleted or moved is the link, never its target. Extracting an archive
checks every member before writing anything: absolute names, ``..``, links, devices
and members landing outside the destination refuse the whole archive (zip-slip,
tar-slip), and the total size is bounded.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from goatclaw.plugin import TaskContext, fail, task

__all__ = ["archive", "copy", "delete", "extract", "mkdir", "move"]

#: The most bytes an extraction writes, and the most members it accepts (archive bombs).
MAX_EXTRACT_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 100_000
_ARCHIVE_SUFFIXES = {".zip": "zip", ".tar": "tar", ".tgz": "tar.gz", ".gz": "tar.gz", ".tar.gz": "tar.gz"}


@task(side_effects=True, permissions=("files.read", "files.write"), sinks=("source", "destination"))
def copy(ctx: TaskContext, *, source: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
    """Copy a file or a folder (recursively) to ``destination``; returns the files copied."""
    src = _existing(ctx, source)
    dst = ctx.require_write(destination)
    _refuse_existing(dst, destination, overwrite)
    copied = _copy_tree(ctx, src, dst) if src.is_dir() else [_copy_file(ctx, src, dst)]
    ctx.audit("file.copied", source=_rel(ctx, src), destination=_rel(ctx, dst), files=len(copied))
    return {"source": _rel(ctx, src), "destination": _rel(ctx, dst), "files": [_rel(ctx, p) for p in copied]}


@task(side_effects=True, permissions=("files.write",), sinks=("source", "destination"))
def move(ctx: TaskContext, *, source: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
    """Move (rename) a file, folder or link inside the write grant."""
    src = _entry(ctx, source)
    dst = ctx.require_write(destination)
    _refuse_existing(dst, destination, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst) if not dst.is_dir() else os.rename(src, dst)
    except OSError as exc:
        fail(f"cannot move '{source}' to '{destination}': {exc.strerror or exc}", error_class="invalid_input")
    ctx.audit("file.moved", source=_rel(ctx, src), destination=_rel(ctx, dst))
    return {"source": _rel(ctx, src), "destination": _rel(ctx, dst)}


@task(side_effects=True, permissions=("files.write",), sinks=("path",))
def delete(ctx: TaskContext, *, path: str, recursive: bool = False, missing_ok: bool = False) -> dict[str, Any]:
    """Delete a file or link (the link itself), or a folder with ``recursive: true``."""
    target = _entry(ctx, path, missing_ok=missing_ok)
    if not os.path.lexists(target):
        return {"path": _rel(ctx, target), "deleted": False}
    if target == ctx.workspace.resolve():
        fail("refusing to delete the workspace itself", error_class="permission_denied")
    if target.is_dir() and not target.is_symlink():
        if not recursive:
            fail(f"'{path}' is a folder: give recursive: true to delete it", error_class="invalid_input")
        shutil.rmtree(target)  # never follows links (they are unlinked, not entered)
    else:
        target.unlink()
    ctx.audit("file.deleted", path=_rel(ctx, target))
    return {"path": _rel(ctx, target), "deleted": True}


@task(side_effects=True, permissions=("files.write",), sinks=("path",))
def mkdir(ctx: TaskContext, *, path: str) -> dict[str, Any]:
    """Make a folder (and its parents); it may exist already."""
    target = ctx.require_write(path)
    if target.exists() and not target.is_dir():
        fail(f"'{path}' exists and is not a folder", error_class="invalid_input")
    target.mkdir(parents=True, exist_ok=True)
    return {"path": _rel(ctx, target)}


@task(side_effects=True, permissions=("files.read", "files.write"), sinks=("source", "output"))
def archive(ctx: TaskContext, *, source: str | list[str], output: str, overwrite: bool = False) -> dict[str, Any]:
    """Pack files or folders into a .zip, .tar or .tar.gz ``output`` (names relative to each source's parent)."""
    kind = _kind(output)
    dst = ctx.require_write(output)
    _refuse_existing(dst, output, overwrite)
    members: list[tuple[Path, str]] = []
    for item in [source] if isinstance(source, str) else source:
        src = _existing(ctx, item)
        files = _walk(ctx, src) if src.is_dir() else [src]
        members += [(f, f.relative_to(src.parent).as_posix()) for f in files]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ctx.throttle_blocking("file")  # rate_limits.side_effects.file_writes_per_minute: wait, never fail
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        _pack(kind, tmp, members)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    ctx.audit("file.written", path=_rel(ctx, dst), bytes=dst.stat().st_size, members=len(members))
    return {"path": _rel(ctx, dst), "format": kind, "members": [name for _, name in members],
            "bytes": dst.stat().st_size}


@task(side_effects=True, permissions=("files.read", "files.write"), sinks=("archive", "destination"))
def extract(ctx: TaskContext, *, archive: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
    """Unpack a .zip, .tar or .tar.gz into ``destination``, refusing any member that could land outside it."""
    src = _existing(ctx, archive)
    dest = ctx.require_write(destination)
    kind = _kind(archive)
    plan = _zip_plan(src, archive) if kind == "zip" else _tar_plan(src, archive)
    names = []
    for name, _is_dir, _size in plan:  # all checked before anything is written
        target = ctx.require_write(Path(destination) / name)
        if not target.is_relative_to(dest):
            fail(f"{archive}: member '{name}' lands outside '{destination}'", error_class="permission_denied")
        if not _is_dir and target.exists() and not overwrite:
            fail(f"{archive}: '{name}' exists in '{destination}' (give overwrite: true)", error_class="invalid_input")
        names.append(name)
    dest.mkdir(parents=True, exist_ok=True)
    written = _unpack(kind, src, dest, plan, lambda: ctx.throttle_blocking("file"))
    ctx.audit("file.extracted", archive=_rel(ctx, src), destination=_rel(ctx, dest), members=len(names),
              bytes=written)
    return {"destination": _rel(ctx, dest), "members": names, "bytes": written}


# -- paths ---------------------------------------------------------------------------


def _existing(ctx: TaskContext, path: str) -> Path:
    """The real path of an existing file or folder under the read grant."""
    real = ctx.require_read(path)
    if not real.exists():
        fail(f"'{path}': no such file or folder in the workspace", error_class="invalid_input", path=path)
    return real


def _entry(ctx: TaskContext, path: str, *, missing_ok: bool = False) -> Path:
    """The entry ``path`` names itself (a link stays a link), in a folder the write grant allows."""
    if not isinstance(path, str) or not path or PurePosixPath(path).name in ("", ".", ".."):
        fail(f"'{path}' does not name a file or folder", error_class="invalid_input")
    parent = ctx.require_write(str(PurePosixPath(path).parent))
    target = parent / PurePosixPath(path).name
    if not os.path.lexists(target):
        if missing_ok:
            return target
        fail(f"'{path}': no such file or folder in the workspace", error_class="invalid_input", path=path)
    if not target.is_symlink():
        ctx.require_write(path)
    return target


def _refuse_existing(dst: Path, shown: str, overwrite: bool) -> None:
    if os.path.lexists(dst) and not overwrite:
        fail(f"'{shown}' exists (give overwrite: true to replace it)", error_class="invalid_input")


def _rel(ctx: TaskContext, path: Path) -> str:
    base = ctx.workspace.resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def _walk(ctx: TaskContext, root: Path) -> list[Path]:
    """The files under ``root``, links refused when they point out of the read grant (then followed)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):  # os.walk does not enter linked folders
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            if entry.is_symlink():
                real = ctx.require_read(entry)  # refuses a link out; a link in is taken as what it names
                if real.is_dir():
                    fail(f"'{_rel(ctx, entry)}' is a link to a folder; refusing to follow it",
                         error_class="permission_denied")
                found.append(real)
            elif entry.is_file():
                found.append(entry)
    return sorted(found)


def _copy_file(ctx: TaskContext, src: Path, dst: Path) -> Path:
    """Copy one file (its mode too) through a temporary file beside ``dst``, after the file-write limit."""
    ctx.throttle_blocking("file")  # rate_limits.side_effects.file_writes_per_minute: wait, never fail
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    shutil.copymode(src, tmp)
    os.replace(tmp, dst)
    return dst


def _copy_tree(ctx: TaskContext, src: Path, dst: Path) -> list[Path]:
    out = []
    for folder, _dirs, files in os.walk(src):
        for name in sorted(files):
            entry = Path(folder) / name
            real = ctx.require_read(entry) if entry.is_symlink() else entry
            if real.is_dir():
                fail(f"'{_rel(ctx, entry)}' is a link to a folder; refusing to follow it",
                     error_class="permission_denied")
            out.append(_copy_file(ctx, real, dst / entry.relative_to(src)))
        (dst / Path(folder).relative_to(src)).mkdir(parents=True, exist_ok=True)
    return out


# -- archives ------------------------------------------------------------------------


def _kind(path: str) -> str:
    lower = str(path).lower()
    for suffix in (".tar.gz", ".tgz", ".zip", ".tar"):
        if lower.endswith(suffix):
            return _ARCHIVE_SUFFIXES[suffix]
    fail(f"'{path}': an archive is .zip, .tar, .tar.gz or .tgz", error_class="invalid_input")


def _pack(kind: str, tmp: Path, members: list[tuple[Path, str]]) -> None:
    if kind == "zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, name in members:
                zf.write(path, name)
        return
    with tarfile.open(tmp, "w:gz" if kind == "tar.gz" else "w") as tf:
        for path, name in members:
            tf.add(path, name, recursive=False)


def _safe_name(name: str, archive: str) -> str:
    """A member name that stays below the destination, or a refusal of the whole archive."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if not posix or posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in parts:
        fail(f"{archive}: member '{name}' has an absolute path or '..'; refusing the archive",
             error_class="permission_denied")
    return PurePosixPath(*[p for p in parts if p != "."]).as_posix() if parts else posix


def _bounded(plan: list[tuple[str, bool, int]], archive: str) -> list[tuple[str, bool, int]]:
    if len(plan) > MAX_MEMBERS or sum(size for _, _, size in plan) > MAX_EXTRACT_BYTES:
        fail(f"{archive}: over {MAX_MEMBERS:,} members or {MAX_EXTRACT_BYTES:,} bytes unpacked; refusing it",
             error_class="invalid_input")
    return plan


def _zip_plan(src: Path, archive: str) -> list[tuple[str, bool, int]]:
    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        fail(f"{archive}: not a readable zip archive: {exc}", error_class="invalid_input")
    plan = []
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
            fail(f"{archive}: member '{info.filename}' is a link or special file; refusing the archive",
                 error_class="permission_denied")
        plan.append((_safe_name(info.filename, archive), info.is_dir(), info.file_size))
    return _bounded(plan, archive)


def _tar_plan(src: Path, archive: str) -> list[tuple[str, bool, int]]:
    try:
        with tarfile.open(src) as tf:
            infos = tf.getmembers()
    except (tarfile.TarError, OSError) as exc:
        fail(f"{archive}: not a readable tar archive: {exc}", error_class="invalid_input")
    plan = []
    for info in infos:
        if not (info.isfile() or info.isdir()):
            fail(f"{archive}: member '{info.name}' is a link or special file; refusing the archive",
                 error_class="permission_denied")
        plan.append((_safe_name(info.name, archive), info.isdir(), info.size))
    return _bounded(plan, archive)


def _unpack(kind: str, src: Path, dest: Path, plan: list[tuple[str, bool, int]], throttle: Callable[[], Any]) -> int:
    """Write the checked members (no link followed: each file is opened with ``O_NOFOLLOW``); bytes written.

    ``throttle`` is called before each file is written (the file-write limit).
    """
    written = 0
    with (zipfile.ZipFile(src) if kind == "zip" else tarfile.open(src)) as box:
        members = box.infolist() if isinstance(box, zipfile.ZipFile) else box.getmembers()
        for (name, is_dir, _size), member in zip(plan, members, strict=True):
            target = dest / name
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            throttle()
            reader = box.open(member) if isinstance(box, zipfile.ZipFile) else box.extractfile(member)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
            with reader as fin, os.fdopen(fd, "wb") as fout:  # type: ignore[union-attr]
                while chunk := fin.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_EXTRACT_BYTES:
                        fail(f"extracting: over {MAX_EXTRACT_BYTES:,} bytes; stopped", error_class="invalid_input")
                    fout.write(chunk)
    return written
