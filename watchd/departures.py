"""Originals that vanished, and watched folders that did.

A vanished file first waits `grace` seconds for its other half: a move's destination
arrives as a new file, and the pipeline pairs the two by content. After that it is retired
(sidecar removed, withdrawal from Baidu queued), except that a folder that is unavailable
(missing, unreadable, unmounted or not mounted yet) is never a source of deletions, and a
burst of deletions is held by the mass-delete guard for a person to confirm.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shlex
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from watchd.guard import DeleteGuard
from watchd.journal import Journal
from watchd.scan import is_regular_file
from watchd.schema import FileRow

log = logging.getLogger(__name__)

EMPTIED_MARK = ".watchd-emptied"  # a folder emptied on purpose, not a share that is not mounted
CONFIRMED = 2  # files.delete_held: confirmed by `watchd confirm-deletes`, retired past the guard
MOUNTINFO = "/proc/self/mountinfo"
_UNREACHABLE = (
    "it is missing or cannot be read (unmounted? detached?); nothing is withdrawn until it is back, "
    "and it is watched again within seconds of its return"
)
# A folder with no files known to have been there: configured before it was created, or emptied
# and removed while watched. Nothing can be lost, so it is a warning, not an error.
_ABSENT = "it does not exist; it is watched within seconds of being created"


@dataclass(frozen=True)
class _Place:
    """Where a folder's content comes from: the mount point above it and that device."""

    mount: str
    device: int


class FolderAvailability:
    """Whether a watched folder holds its real content; each change is logged once.

    Existing and readable is not enough: an unmounted share leaves its mount point behind,
    an empty readable directory of the parent filesystem, and reading that as "every file
    deleted" would withdraw them all. So a folder is also unavailable when
    - the filesystem it was on when last available is no longer mounted (its mount point is
      now a higher one): the files are elsewhere, not deleted;
    - it is empty while `journal` knows files that were there when last looked at (a share
      not mounted yet when watchd starts). A folder emptied while watched is not: its files
      were marked vanished one by one as they went.

    A folder found on a newly mounted filesystem (a share mounted again, or after watchd
    started) is available and reported once by `remounted()`.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._places: dict[str, _Place] = {}  # where each folder was when last available
        self._unavailable: dict[str, str] = {}  # folder -> why, as last logged
        self._remounted: set[str] = set()
        self._mounts = _MountTable()

    def __call__(self, root: str) -> bool:
        problem = self.problem(root)
        if problem is None:
            self._unavailable.pop(root, None)
        elif self._unavailable.get(root) != problem:
            self._unavailable[root] = problem
            level = logging.WARNING if problem is _ABSENT else logging.ERROR
            log.log(level, "watched folder %s is unavailable: %s", root, problem)
        return problem is None

    def remounted(self) -> set[str]:
        """Folders found on a newly mounted filesystem since the last call: watches set on the
        old one see nothing there, so they must be renewed and the folder reconciled.

        A share unmounted and mounted again between two calls can look the same to stat()
        (device numbers are reused); it is then the newest mount, so an available folder on
        the newest mount counts as remounted whenever anything was (un)mounted meanwhile.
        """
        if (newest := self._mounts.newest_if_changed()) is not None:
            self._remounted.update(
                root
                for root, place in self._places.items()
                if place.mount == newest and root not in self._unavailable
            )
        found, self._remounted = self._remounted, set()
        return found

    def problem(self, root: str) -> str | None:
        """Why `root` does not hold its real content now, or None when it does (not logged)."""
        try:
            device = os.stat(root).st_dev
            with os.scandir(root) as entries:
                empty = not any(_content(entry) for entry in entries)
        except FileNotFoundError:
            return _UNREACHABLE if self._journal.present_count(root) else _ABSENT
        except OSError:
            return _UNREACHABLE
        if not os.access(root, os.R_OK | os.X_OK):
            return _UNREACHABLE
        place = _Place(_mount_point(root), device)
        last = self._places.get(root)
        if last is not None and len(place.mount) < len(last.mount):
            return (
                f"the filesystem mounted at {last.mount} that held it is no longer mounted; nothing is "
                "withdrawn until it is mounted again (if the folder is meant to stay where it is now, "
                "restart watchd)"
            )
        if empty and (known := self._journal.present_count(root)):
            return (
                f"it is empty although {known} files were there (a share not mounted yet?); nothing is "
                f"withdrawn. If you emptied it on purpose, mark it so (touch {root}/{EMPTIED_MARK}): "
                "the deletions then pass the mass-delete guard like any other"
            )
        if last is not None and place != last:
            self._remounted.add(root)
        self._places[root] = place
        return None


def _content(entry: os.DirEntry[str]) -> bool:
    """Whether a folder entry shows the folder's own filesystem is there: anything visible
    (sidecars left by deleted images too: they live on the share), or the mark of a folder
    emptied on purpose. Hidden entries, such as watchd's temp files, do not count; watchd
    writes no sidecar next to an original that is not there."""
    return entry.name == EMPTIED_MARK or not entry.name.startswith(".")


def watchd_command(args: str, config: Path | None) -> str:
    """A `watchd` command line for a hint, naming the daemon's config when it is known:
    without `-c`, whoever runs it (root, for a system service) gets their own default config
    and state directory, and so finds no journal there instead of the daemon's."""
    return f"watchd {args} -c {shlex.quote(str(config))}" if config is not None else f"watchd {args}"


class Departures:
    """Marks vanished originals and decides which of them are deleted for good."""

    def __init__(
        self,
        journal: Journal,
        guard: DeleteGuard,
        available: FolderAvailability,
        *,
        grace: float,
        clock: Callable[[], float],
        config: Path | None,
    ) -> None:
        self.grace = grace
        self.config = config  # named in the hint to confirm held deletions
        self._journal = journal
        self._guard = guard
        self._available = available
        self._clock = clock

    def gone(self, rows: Sequence[FileRow | None]) -> None:
        """These originals vanished (a deletion, or the first half of a move)."""
        now = self._clock()
        for row in rows:
            if row is not None and row.path is not None and row.missing_since is None:
                self._journal.mark_missing(row.id, now)

    def due(self, now: float, *, force: bool, in_flight: Collection[int]) -> list[FileRow]:
        """The vanished files to retire now: their grace is over (or `force`), they are still
        gone, no worker holds them, their folder is available and the guard admits them."""
        fresh: list[FileRow] = []
        confirmed: list[FileRow] = []
        rows = self._journal.missing(older_than=now if force else now - self.grace)
        available = {root: self._available(root) for root in {row.root for row in rows}}
        for row in rows:
            if row.path is not None and is_regular_file(row.path):
                self._journal.mark_missing(row.id, None)
            elif row.id not in in_flight and available[row.root]:
                (confirmed if row.delete_held == CONFIRMED else fresh).append(row)
        allowed, held = self._guard.admit(fresh, self._journal.live_count)
        if held:
            self._journal.hold_deletes([row.id for row in held])
            log.error(
                "%d files vanished at once from %s: their withdrawal is held. If the deletions are "
                "intended, run `%s`; otherwise restore the files",
                len(held),
                ", ".join(sorted({row.root for row in held})),
                watchd_command("confirm-deletes", self.config),
            )
        return confirmed + allowed


class _MountTable:
    """The kernel's mount table, polled: it flags every mount and unmount (proc(5))."""

    def __init__(self) -> None:
        self._poll = select.poll()
        try:
            self._file: BinaryIO | None = open(MOUNTINFO, "rb")  # noqa: SIM115 - kept open to be polled
        except OSError:  # no procfs: changes go unnoticed, stat() still tells most remounts
            self._file = None
            return
        weakref.finalize(self, self._file.close)
        self._poll.register(self._file, select.POLLPRI)

    def newest_if_changed(self) -> str | None:
        """The mount point of the newest mount, if anything was mounted or unmounted since the
        last call (mounts are listed oldest first); else None."""
        if self._file is None or not self._poll.poll(0):
            return None
        self._file.seek(0)
        lines = self._file.read().splitlines()
        return _unescape(os.fsdecode(lines[-1].split()[4])) if lines else None


def _unescape(field: str) -> str:
    """A mountinfo path with its octal escapes (space, tab, newline, backslash) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal[1], 8)), field)


def _mount_point(path: str) -> str:
    """The mount point `path` is on (itself or its nearest ancestor that is one)."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path
