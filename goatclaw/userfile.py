"""Reading a file a user named: a regular file, and never more than a limit.

Every file goatclaw reads because a user pointed at it (a pipeline file, ``goatclaw.yaml``,
a ``*.test.yaml``, a cassette, ``.env``, a schema ``$ref``, ``file.read``) is read here.
``stat()`` cannot be trusted for that: ``/dev/zero`` and ``/proc`` files report a size of
0 and never end or lie, a FIFO blocks ``open()`` until a writer comes and then ``read()``
until it leaves. So the file is opened without blocking, checked to be a regular file on
the open descriptor (a symlink counts as what it points to, with no gap between check and
read), and read up to ``limit`` bytes whatever its size says.

Refusals are :class:`OSError` subclasses with a ``strerror`` that says why, so callers
that already report ``OSError`` as "cannot read PATH: why" need nothing more.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["FileTooLarge", "NotRegularFile", "is_file", "read_bytes"]

_CHUNK = 1 << 20
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """The path is a directory, FIFO, device or socket (or a symlink to one)."""


class FileTooLarge(OSError):
    """The file holds more than the limit; ``size`` is its size when ``stat`` knew it, else ``None``."""

    def __init__(self, path: str, limit: int, size: int | None) -> None:
        what = f"it is {size:,} bytes" if size is not None else "it holds more"
        super().__init__(errno.EFBIG, f"{what}, over the limit of {limit:,} bytes", path)
        self.limit = limit
        self.size = size


def is_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file; false, not an error, for a path the system refuses (a name too long)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # ENAMETOOLONG, ELOOP, a NUL byte …
        return False


def read_bytes(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """The contents of the regular file ``path``, at most ``limit`` bytes (else :class:`FileTooLarge`)."""
    name = os.fspath(path)
    # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (and is then refused)
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):  # what open() says of a directory elsewhere
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "not a file")
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind})", name)
        size = os.fstat(fd).st_size
        if size > limit:
            raise FileTooLarge(name, limit, size)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:  # read one byte past the limit to know the file holds more
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileTooLarge(name, limit, None)
        return b"".join(chunks)
    finally:
        os.close(fd)
