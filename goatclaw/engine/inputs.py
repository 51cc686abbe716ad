"""A task's ``inputs:``: file globs inside the workspace, expanded, matched and digested.

The task cache adds the digest of the files a task's globs match (their paths and
contents, never their modification times) to the task's key, so editing one of those
files re-runs exactly the tasks that read it. Watch mode (:mod:`goatclaw.watch`) uses
the same globs to know which saves concern which pipeline.

The glob language is the shell's, relative to the workspace (the project folder):
``*`` and ``?`` match within one path component, ``[abc]``/``[!abc]`` are classes,
``**`` is any number of folders, and a trailing ``/`` means everything below that
folder. Names starting with ``.`` match only when the pattern's component starts with
``.`` too (so ``**`` never walks into ``.git`` or ``.goatclaw``). Absolute patterns and
``..`` are refused: inputs stay inside the workspace.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goatclaw.errors import Problem
from goatclaw.spec.loader import dotted

__all__ = ["InputGlobs", "file_digest", "glob_problem", "input_problems"]

_MAGIC = re.compile(r"[*?\[]")
_CHUNK = 1 << 20


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be an ``inputs:`` glob, or ``None`` when it can."""
    if pattern.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", pattern):
        return f"'{pattern}' is absolute: inputs are globs relative to the project folder"
    if ".." in _components(pattern):
        return f"'{pattern}' leaves the project folder ('..')"
    try:
        _Glob.compile(pattern)
    except re.error as exc:
        return f"'{pattern}' is not a valid glob: {exc}"
    return None


def input_problems(pipeline: Any) -> list[Problem]:
    """Every ``inputs:`` glob of ``pipeline``'s tasks that cannot be one, located."""
    problems = []
    for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            for i, pattern in enumerate(task.inputs):
                why = glob_problem(pattern)
                if why:
                    path = (*task.path, "inputs", i)
                    problems.append(Problem(pipeline.locate(path), dotted(path), why))
    return problems


class InputGlobs:
    """The files that ``patterns`` (relative to ``root``) match, their folders and their digest."""

    def __init__(self, patterns: Iterable[str], root: Path) -> None:
        self.root = Path(root).resolve()
        self.globs = [_Glob.compile(p) for p in patterns if glob_problem(p) is None]

    def matches(self, path: Path) -> bool:
        """Whether ``path`` (absolute, or relative to the root) is one the globs match."""
        rel = _relative(Path(path), self.root)
        return rel is not None and any(g.regex.fullmatch(rel) for g in self.globs)

    def files(self) -> list[Path]:
        """Every existing regular file the globs match, sorted, without duplicates."""
        found: set[Path] = set()
        for g in self.globs:
            found.update(p for p in g.walk_files(self.root) if self._inside(p))
        return sorted(found)

    def folders(self) -> set[Path]:
        """The folders to watch (each on its own, not recursively) to see every file the globs could match.

        A glob's folder that does not exist yet is stood in for by its nearest existing
        parent inside the root, so creating it is noticed too.
        """
        found: set[Path] = set()
        for g in self.globs:
            found.update(g.walk_dirs(self.root))
        return found

    def digest(self) -> str:
        """A digest of the matched files' paths and contents (empty globs give a digest too)."""
        h = hashlib.blake2b(digest_size=16)
        for path, content in self.file_digests().items():
            h.update(path.relative_to(self.root).as_posix().encode("utf-8", "surrogateescape") + b"\0")
            h.update(content + b"\0")
        return h.hexdigest()

    def file_digests(self) -> dict[Path, bytes]:
        """Each matched file (sorted) with the digest of its contents."""
        return {path: file_digest(path) for path in self.files()}

    def _inside(self, path: Path) -> bool:
        """Symbolic links that point out of the root are not inputs."""
        try:
            return path.resolve().is_relative_to(self.root)
        except OSError:
            return False


@dataclass(frozen=True)
class _Glob:
    """One compiled pattern: its literal folder prefix, the rest, and a regex over root-relative paths."""

    pattern: str
    base: tuple[str, ...]  # literal leading components (folders, or the whole path of a plain file)
    rest: tuple[str, ...]  # the components after them, at least one
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> _Glob:
        parts = _components(pattern)
        if pattern.endswith("/"):
            parts.append("**")
        if not parts:
            raise re.error("empty pattern")
        cut = next((i for i, p in enumerate(parts) if p == "**" or _MAGIC.search(p)), len(parts) - 1)
        regex = re.compile(_translate(parts))
        return cls(pattern, tuple(parts[:cut]), tuple(parts[cut:]), regex)

    @property
    def recursive(self) -> bool:
        return "**" in self.rest

    @property
    def depth(self) -> int:
        """How many folders below the base a match can be (for a non-recursive glob)."""
        return len(self.rest) - 1

    def walk_files(self, root: Path) -> Iterator[Path]:
        for folder, files in self._walk(root):
            for name in files:
                path = folder / name
                rel = path.relative_to(root).as_posix()
                if self.regex.fullmatch(rel) and path.is_file():
                    yield path

    def walk_dirs(self, root: Path) -> Iterator[Path]:
        base = root.joinpath(*self.base)
        if not base.is_dir():
            yield _existing_parent(base, root)
            return
        for folder, _ in self._walk(root):
            yield folder

    def _walk(self, root: Path) -> Iterator[tuple[Path, list[str]]]:
        base = root.joinpath(*self.base)
        if not base.is_dir():
            return
        dotted = any(p.startswith(".") for p in self.rest)
        for top, dirs, files in os.walk(base):
            folder = Path(top)
            level = len(folder.relative_to(base).parts)
            if not self.recursive and level >= self.depth:
                dirs[:] = []
            elif not dotted:
                dirs[:] = [d for d in dirs if not d.startswith(".")]
            yield folder, files


def _components(pattern: str) -> list[str]:
    return [p for p in pattern.replace("\\", "/").split("/") if p and p != "."]


def _translate(parts: list[str]) -> str:
    """A regex for root-relative POSIX paths that the glob components match."""
    out: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(r"(?:(?!\.)[^/]+/)*" + (r"(?!\.)[^/]+" if last else ""))
        else:
            out.append(_component(part) + ("" if last else "/"))
    return "".join(out)


def _component(part: str) -> str:
    out = "" if part.startswith(".") else r"(?!\.)"
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1:end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out += "[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("[", "\\[") + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return out


def _relative(path: Path, root: Path) -> str | None:
    path = path if path.is_absolute() else root / path
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _existing_parent(path: Path, root: Path) -> Path:
    while path != root and not path.is_dir() and path.is_relative_to(root):
        path = path.parent
    return path if path.is_dir() else root


def file_digest(path: Path) -> bytes:
    """The digest of a file's contents (an unreadable or missing file gives a digest saying so)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the key
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                h.update(b"not a regular file")
                return h.digest()
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:  # gone or unreadable between the walk and the read: that is a different input
        h.update(f"unreadable: {exc.strerror}".encode())
    return h.digest()
