"""Staying inside the watched folders: whoever can write in one must not lead watchd out.

Watched folders are held by their resolved paths, so no symlink lies on the way to a file
that is really in one. Replace a directory by a symlink (`mv album away; ln -s /etc album`)
and every path below it leads elsewhere: watchd would read, write or remove files outside
the tree through it. Every such operation first asks `in_real_directory`, and files are
opened with `open_regular`, which also refuses a symlink, a FIFO (whose open would block
forever) or a device in a file's place.
"""

from __future__ import annotations

import errno
import os
import stat


def in_real_directory(path: str | os.PathLike[str]) -> bool:
    """Whether `path`'s directory is reached without a symlink: its real path is itself."""
    parent = os.path.dirname(os.fspath(path))
    return os.path.realpath(parent) == parent


def open_regular(path: str | os.PathLike[str]) -> int:
    """A file descriptor of `path` opened for reading if it is a regular file in a real
    directory (`in_real_directory`), not reached through a symlink. Anything else in its
    place raises `FileNotFoundError`: for watchd, the file it knew is not there."""
    where = os.fspath(path)
    if not in_real_directory(where):
        raise FileNotFoundError(errno.ENOENT, "a directory on its way is now a symbolic link", where)
    try:  # O_NONBLOCK: opening a FIFO waits for a writer otherwise
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the file itself is a symlink
            raise FileNotFoundError(errno.ENOENT, "a symbolic link, not a file", where) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file (a FIFO, socket or device)", where)
    return fd
