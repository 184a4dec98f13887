"""Reconciliation: compare a watched folder with the journal and report the differences.

Used at start-up, by `watchd sync`, after an event-queue overflow and by the periodic
safety rescan. The directory walk and the journal are both produced in the same sorted
order and merged like two sorted lists, so memory stays bounded by one directory listing
and one page of journal rows, however many files there are. Only size and mtime are
compared here; the engine hashes a file only when those changed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchd.intree import in_real_directory
from watchd.journal import DONE, Journal
from watchd.sidecar import TEMP_MARKER, remove_stale_temp


@dataclass(frozen=True)
class Difference:
    """`kind` is "new" (not in the journal), "changed" (size/mtime differ), "missing",
    "sidecar" (done, but its sidecar is gone or does not show its Baidu submission yet,
    see `Journal.stale_sidecars`), "unrecordable" (a file or directory whose
    name is not valid UTF-8, which the journal cannot hold: skipped) or "unreadable" (a
    directory that cannot be listed: its files are neither new nor missing)."""

    kind: str
    path: str


def is_regular_file(path: str) -> bool:
    """Whether an image can be at `path`: a regular file, not followed if a symlink, in a
    directory no symlink leads to (`in_real_directory`). What else took a vanished image's
    place (a directory of its name, a link, a link to a directory) does not bring it back."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode) and in_real_directory(path)
    except OSError:
        return False


def walk_sorted(
    root: str, recursive: bool, wanted: Callable[[str], bool], unreadable: set[str], skipped: list[str]
) -> Iterator[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every wanted regular file below `root`, in byte order of path.

    Temp files of a sidecar writer that was killed are removed on the way.
    A directory's entries are sorted by name, with "/" appended to directory names, which
    makes the depth-first walk come out in plain string order of the full paths (the order
    SQLite's `ORDER BY path` uses). Hidden directories are not entered. A directory that
    cannot be listed is added to `unreadable` before the walk goes past it; an entry whose
    name is not valid UTF-8 is added to `skipped` and not entered.
    """
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return  # removed since it was asked for: its files are gone, not out of reach
    except OSError:
        unreadable.add(root)
        return
    keyed = []
    for entry in entries:
        if not recordable(entry.name):
            skipped.append(entry.path)
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        keyed.append((entry.name + "/" if is_dir else entry.name, is_dir, entry))
    keyed.sort(key=lambda item: item[0])
    for _key, is_dir, entry in keyed:
        if is_dir:
            if recursive and not entry.name.startswith("."):
                yield from walk_sorted(entry.path, recursive, wanted, unreadable, skipped)
            continue
        if TEMP_MARKER in entry.name:
            remove_stale_temp(entry.path)
            continue
        if not wanted(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            yield entry.path, info.st_size, info.st_mtime_ns


def reconcile(
    journal: Journal, root: Path, recursive: bool, wanted: Callable[[str], bool]
) -> Iterator[Difference]:
    """Every difference between `root` on disk and the journal's rows under it.

    `wanted(name)` is a cheap filter on file names (image extensions); include/exclude
    rules are the engine's business. Rows under a directory that cannot be read are not
    reported missing: an unreadable directory is not a deleted one; the directory itself is
    reported "unreadable", after the files.
    """
    stale = journal.stale_sidecars(str(root))  # one query; empty but for refreshes failed or under way
    unreadable_files = journal.unreadable_under(str(root))  # as rare
    unreadable: set[str] = set()
    skipped: list[str] = []
    disk = walk_sorted(str(root), recursive, wanted, unreadable, skipped)
    rows = journal.iter_root(str(root))
    file = next(disk, None)
    row = next(rows, None)
    while file is not None or row is not None:
        while skipped:
            yield Difference("unrecordable", skipped.pop())
        if row is None or (file is not None and file[0] < row[0]):
            assert file is not None
            yield Difference("new", file[0])
            file = next(disk, None)
        elif file is None or row[0] < file[0]:
            if not any(row[0].startswith(d + "/") for d in unreadable):
                yield Difference("missing", row[0])
            row = next(rows, None)
        else:
            fixed_by_a_chmod = row[0] in unreadable_files and os.access(row[0], os.R_OK)
            if (file[1], file[2]) != (row[1], row[2]) or fixed_by_a_chmod:
                yield Difference("changed", file[0])
            elif row[3] == DONE and (row[0] in stale or (row[4] and not os.path.exists(row[4]))):
                yield Difference("sidecar", file[0])
            file = next(disk, None)
            row = next(rows, None)
    for path in skipped:
        yield Difference("unrecordable", path)
    for directory in sorted(unreadable):
        yield Difference("unreadable", directory)


def recordable(path: str) -> bool:
    """Whether the journal (UTF-8 text) can hold `path`. A name that is not valid UTF-8 comes
    from the OS with surrogate escapes (PEP 383) and cannot be stored or compared in order."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """`path` for a message: undecodable bytes shown as U+FFFD, so the log line can be written."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
