"""What was compiled once, kept on disk and keyed by what it was compiled from (like ``__pycache__``).

A fresh ``goatclaw`` process compiles the same templates every time it checks or runs an
unchanged pipeline: Jinja2 lexes, parses, generates Python and compiles it, about 1 ms for
each expression. :class:`CodeCache` keeps such results (code objects and plain data,
marshalled) in the user's cache folder, the one of the schema validators
(``$GOATCLAW_CACHE_DIR``, else ``$XDG_CACHE_HOME/goatclaw``, else ``~/.cache/goatclaw``).

Each entry's name is a hash of the cache's salt (what the compiler is: its version, the
source file of ours that drives it, and Python's bytecode magic), the kind of entry and the
source text; the entry holds the kind and the source again, so a value is only ever
returned for the very text it was compiled from. An entry that cannot be read (missing,
truncated, from another Python) is a miss; a folder that cannot be written is no cache.
Entries live in a folder per salt: the first entry under a new salt (an upgrade, an edit)
removes the folders of the others but the :data:`KEEP` written last, so that two installs on
one machine (a checkout and a release, two projects' virtual environments) keep their
entries instead of removing each other's on every run. A process that misses more than :attr:`CodeCache.MISSES`
times (a generated pipeline of thousands of distinct templates) stops looking and writing:
the cache is for the files people run again, not a copy of every template ever checked.
Nothing here imports more than the standard library.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
from pathlib import Path
from typing import Any

__all__ = ["KEEP", "CodeCache", "cache_dir", "file_stamp"]

#: How many folders of other salts a new salt's folder leaves beside it (the ones written last).
KEEP = 3


def cache_dir() -> Path:
    """``$GOATCLAW_CACHE_DIR``, else ``$XDG_CACHE_HOME/goatclaw``, else ``~/.cache/goatclaw``."""
    explicit = os.environ.get("GOATCLAW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "goatclaw"


def file_stamp(path: str | os.PathLike[str]) -> str:
    """``path``'s name, size and modification time, for a salt: an edit or a checkout is another salt."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}: missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


class CodeCache:
    """Compiled values in the folder ``name`` of the cache folder, under a salt made of ``salt``."""

    #: Misses after which a process neither reads nor writes the cache any more.
    MISSES = 1000

    def __init__(self, name: str, *salt: str) -> None:
        self.name = name
        self.salt = hashlib.sha256("\0".join((importlib.util.MAGIC_NUMBER.hex(), *salt)).encode()).hexdigest()[:16]
        self.misses = 0
        self._made: Path | None = None  # the folder made (or found) already
        self._unwritable: Path | None = None  # a folder that could not be written: no more tries in this process

    @property
    def folder(self) -> Path:
        """The folder of this salt's entries, as the environment says now (a test may point it elsewhere)."""
        return cache_dir() / self.name / self.salt

    def _path(self, kind: str, source: str) -> Path:
        key = hashlib.sha256(f"{kind}\0{source}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return self.folder / f"{key}.bin"

    def get(self, kind: str, source: str) -> Any | None:
        """The value kept for ``source`` (of ``kind``), or ``None``."""
        if self.misses > self.MISSES:
            return None
        try:
            entry = marshal.loads(self._path(kind, source).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            self.misses += 1
            return None
        if type(entry) is not tuple or len(entry) != 3 or entry[0] != kind or entry[1] != source:
            return None
        return entry[2]

    def put(self, kind: str, source: str, value: Any) -> None:
        """Keep ``value`` for ``source`` (of ``kind``); quietly nothing when it cannot be marshalled or written."""
        folder = self.folder
        if folder == self._unwritable or self.misses > self.MISSES:
            return
        try:
            data = marshal.dumps((kind, source, value))
        except ValueError:
            return
        path = self._path(kind, source)
        try:
            if folder != self._made:
                if not folder.is_dir():
                    folder.mkdir(parents=True, exist_ok=True)
                    _prune(folder)
                self._made = folder
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            self._unwritable = folder  # a read-only home: compile each time


def _prune(kept: Path) -> None:
    """Remove the folders of other salts beside ``kept`` but the :data:`KEEP` written last; errors are ignored."""
    import shutil

    def written(folder: Path) -> int:
        try:
            return folder.stat().st_mtime_ns  # a new entry's file changes its folder's time
        except OSError:
            return 0

    try:
        others = sorted((p for p in kept.parent.iterdir() if p != kept and p.is_dir()), key=written, reverse=True)
    except OSError:
        return
    for other in others[KEEP:]:
        shutil.rmtree(other, ignore_errors=True)
