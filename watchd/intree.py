"""Staying inside the watched folders: whoever can write in one must not lead watchd out.

Watched folders are held by their resolved paths, so no symlink lies on the way to a file
that is really in one. Replace a directory by a symlink (`mv album away; ln -s /etc album`)
and every path below it leads elsewhere: watchd would read, write or remove files outside
the tree through it. So files are read, written and removed through `real_directory`, a
descriptor of their directory reached one name at a time without following a symlink,
which stays on that directory whatever is renamed meanwhile (a check of the path and then
an open by path could be raced). `open_regular` also refuses a symlink, a FIFO (whose open
would block for ever) or a device in a file's place, and `read_regular` reads a small one
so; `in_real_directory` asks the same of a path for decisions that open nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

# A directory to look names up in: no read permission needed, no symlink followed.
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINKED = "a directory on its way is now a symbolic link"


def in_real_directory(path: str | os.PathLike[str]) -> bool:
    """Whether `path`'s directory is there and reached without a symlink (`real_directory`)."""
    try:
        with real_directory(path):
            return True
    except OSError:
        return False


@contextmanager
def real_directory(path: str | os.PathLike[str]) -> Iterator[int]:
    """A descriptor of `path`'s directory, opened from "/" one name at a time without
    following a symlink; names looked up through it (`dir_fd=`) stay in that directory.
    `FileNotFoundError` if a name on the way is a symlink or is gone."""
    where = os.fspath(path)
    fd = os.open("/", _DIRECTORY)
    try:
        for name in os.path.dirname(where).split("/"):
            if not name:
                continue
            try:
                below = os.open(name, _DIRECTORY, dir_fd=fd)
            except NotADirectoryError as exc:  # a symlink (or a file) where a directory was
                raise FileNotFoundError(errno.ENOENT, _LINKED, where) from exc
            os.close(fd)
            fd = below
        yield fd
    finally:
        os.close(fd)


def open_regular(path: str | os.PathLike[str]) -> int:
    """A file descriptor of `path` opened for reading if it is a regular file in its real
    directory (`real_directory`), not reached through a symlink. Anything else in its place
    raises `FileNotFoundError`: for watchd, the file it knew is not there."""
    where = os.fspath(path)
    with real_directory(where) as directory:
        try:  # O_NONBLOCK: opening a FIFO waits for a writer otherwise
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(os.path.basename(where), flags, dir_fd=directory)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the file itself is a symlink
                raise FileNotFoundError(errno.ENOENT, "a symbolic link, not a file", where) from exc
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file (a FIFO, socket or device)", where)
    return fd


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The content of `path`, opened by `open_regular`, if it holds at most `limit` bytes;
    `OSError(EFBIG)` if it holds more, of which no more than `limit` + 1 are read."""
    fd = open_regular(path)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB", os.fspath(path))
    return data
