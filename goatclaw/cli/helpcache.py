"""``goatclaw --help`` from a cache: the text typer and rich wrote last time, when nothing it depends on changed.

Typer's rich help imports markdown-it, rich's traceback and pretty printers and builds
every command of the tree: about 300 ms, twice the time a user should wait for a help
screen. The text it prints depends only on the CLI's source files, the typer and rich
installed, and the terminal (width, colour, encoding, the variables rich reads); all of
that is the cache key, so a cached text is the one typer would print now. A miss runs
typer as usual and keeps what it printed (:class:`Recording`); a cache that cannot be
read or written is no cache. Only the standard library is imported here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TextIO

from goatclaw.codecache import cache_dir

__all__ = ["Recording", "read", "show", "write"]

#: Environment variables that change what rich or typer print (colour, width, terminal detection).
_ENV = ("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
        "JUPYTER_COLUMNS", "JUPYTER_LINES", "TYPER_USE_RICH", "_TYPER_FORCE_DISABLE_TERMINAL", "TERM_PROGRAM",
        "CLICOLOR", "CLICOLOR_FORCE", "PYTHONIOENCODING", "LANG", "LC_ALL", "LC_CTYPE", "TERMINAL_WIDTH",
        "GITHUB_ACTIONS", "PY_COLORS", "_GOATCLAW_COMPLETE")


def read() -> str | None:
    """The cached help text for this code and terminal, or ``None``."""
    try:
        return _file().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def show(text: str) -> int:
    """Print a cached help text; the exit code (a reader that went away is no failure, a full disk is 1)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `goatclaw --help | head -3`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush then succeeds
            os.close(devnull)
        except (OSError, ValueError):
            pass
    except OSError as exc:
        print(f"error: stdout: {exc.strerror or exc} (output was lost)", file=sys.stderr)
        return 1
    return 0


def write(text: str) -> None:
    """Keep ``text`` as the help of this code and terminal; the texts of older code are removed."""
    path = _file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob("help-*.txt"):
            if not old.name.startswith(f"help-{_code_key()}-"):
                old.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: typer renders the help each time


class Recording:
    """A stand-in for ``sys.stdout`` that writes through and keeps a copy of the text."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        """Write ``text`` through, and keep it (bytes are refused as by any text stream: click probes with them)."""
        written = self.stream.write(text)
        self.parts.append(text)
        return written

    def text(self) -> str:
        """Everything written so far."""
        return "".join(self.parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # isatty, fileno, encoding, flush: the real stream's


def _file() -> Path:
    return cache_dir() / f"help-{_code_key()}-{_terminal_key()}.txt"




def _code_key(cli: Path | None = None) -> str:
    """The CLI's source files (``cli``: their folder) and the typer, rich and Python that render them.

    Each file counts by its name, size and modification time, so an edit, a checkout or an
    upgrade is another key.
    """
    from goatclaw import __version__

    parts = [__version__, sys.version]
    for path in sorted((cli or Path(__file__).resolve().parent).glob("*.py")):
        parts.append(_stamp(path))
    for name in ("typer", "rich", "click"):
        spec = find_spec(name)
        parts.append(_stamp(Path(spec.origin)) if spec is not None and spec.origin else f"{name}: none")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _terminal_key() -> str:
    """What the terminal makes of the same help: a tty or not, its size and encoding, and rich's variables."""
    out = sys.stdout
    try:
        tty = bool(out is not None and out.isatty())
    except (AttributeError, ValueError):
        tty = False
    size = shutil.get_terminal_size()
    parts = [f"tty={tty}", f"size={size.columns}x{size.lines}", f"encoding={getattr(out, 'encoding', None)}",
             *(f"fd{fd}={_fd_size(fd)}" for fd in (0, 1, 2)),  # rich asks stdin, stdout and stderr for a width
             *(f"{k}={os.environ.get(k)}" for k in _ENV)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _fd_size(fd: int) -> str:
    try:
        size = os.get_terminal_size(fd)
    except (OSError, ValueError):
        return "-"
    return f"{size.columns}x{size.lines}"


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}: missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"
