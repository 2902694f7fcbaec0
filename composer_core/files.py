"""Reading a file a user named: only regular files, never more than a bound, never blocking.

Every file xtm-composer reads on a user's word (settings, connectors files, ``password_file``,
``config.json``, ``auth.json``) goes through :func:`read_bytes` / :func:`read_text`, so that
``--config /dev/zero`` or a FIFO as ``password_file`` is a clear error at once instead of a hang
or gigabytes of memory. The error's ``reason`` names the file and the bound, never its content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

#: bounds per kind of file; generous for what each holds, small enough to never hurt
LIMIT_SETTINGS = 4 * MiB
LIMIT_CONNECTORS = 16 * MiB
LIMIT_AUTH_FILE = 4 * MiB
LIMIT_SECRET_FILE = 64 * KiB


class FileReadError(Exception):
    """The file could not be read. ``reason`` is a full sentence naming the file (never quoting it);
    ``missing`` tells "no such file" apart from every other failure."""

    def __init__(self, reason: str, *, path: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path
        self.missing = missing


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} bytes"


def read_bytes(path: str | os.PathLike[str], *, limit: int, what: str = "file") -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes, or :class:`FileReadError`.

    ``what`` names the file in messages ("settings file", "password_file of ..."). Special files are
    refused before they are opened for reading (a FIFO would block, ``/dev/zero`` never ends); the
    file is opened non-blocking and checked again, so a swap between the two checks changes nothing.
    """
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise FileReadError(f"{what} {name} does not exist", path=name, missing=True) from None
    except OSError as exc:
        raise FileReadError(f"{what} {name} cannot be read: {exc.strerror or exc}",
                            path=name) from None
    if not stat.S_ISREG(info.st_mode):
        raise FileReadError(f"{what} {name} is {_kind(info.st_mode)}: only regular files are read",
                            path=name)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileReadError(f"{what} {name} does not exist", path=name, missing=True) from None
    except OSError as exc:
        raise FileReadError(f"{what} {name} cannot be read: {exc.strerror or exc}",
                            path=name) from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise FileReadError(f"{what} {name} is {_kind(opened.st_mode)}: only regular files "
                                "are read", path=name)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 * MiB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileReadError(f"{what} {name} is larger than {_size(limit)}, the most "
                                    "xtm-composer reads from such a file", path=name)
        return b"".join(chunks)
    except OSError as exc:
        raise FileReadError(f"{what} {name} cannot be read: {exc.strerror or exc}",
                            path=name) from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], *, limit: int, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8 (a BOM is accepted); not UTF-8 is a :class:`FileReadError`."""
    data = read_bytes(path, limit=limit, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileReadError(f"{what} {os.fspath(path)} is not UTF-8 text (byte {exc.start})",
                            path=os.fspath(Path(path))) from None
