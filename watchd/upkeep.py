"""Keeping the folders watched: watches renewed when a folder goes away, comes back or is
replaced by another directory, or when a directory that could not be read (so not watched)
becomes readable; and every folder reconciled about once per `rescan_interval`, the safety
net under events.

The engine's loop calls `tick` each turn and sleeps no longer than `deadlines` allow;
what to reconcile arrives as `Rescan` (or `FolderBack`) facts, handled like any other.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

from watchd.config import Settings
from watchd.departures import FolderAvailability
from watchd.scan import printable
from watchd.watcher import Fact, FolderBack, FolderWatcher, Rescan, WatchSpec

log = logging.getLogger("watchd.engine")  # the name these lines always had, for log filters

ROOT_CHECK_INTERVAL = 5.0
# How long after a folder vanished or a directory's permissions changed it is looked at: long
# enough for `rm -rf w && mkdir w` to be done, and for the events right behind a chmod (a chmod
# of the files too) to be heard before the watches are renewed.
LOOK_AGAIN_DELAY = 0.5


class FolderUpkeep:
    """The watcher of `watchd run` (`sync` has none) and the schedule of reconciliations.

    `settings` is replaced on a reload; `restart` then watches the new folders.
    """

    def __init__(
        self,
        settings: Settings,
        available: FolderAvailability,
        tell: Callable[[Fact], None],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._available = available
        self._tell = tell
        self._clock = clock
        self.watcher: FolderWatcher | None = None
        self._watched_roots: dict[str, tuple[int, int]] = {}  # folder -> (st_dev, st_ino) watched
        self._unreadable: set[str] = set()  # directories reconciliation could not list
        self._next_root_check = 0.0
        self._next_rescan = clock() + jittered(settings.rescan_interval)

    def rescan_all(self) -> None:
        """Queue a full reconciliation of every folder."""
        for folder in self.settings.folders:
            self._tell(Rescan(str(folder.path)))

    def restart(self) -> None:
        """(Re)start watching every available folder of the current settings."""
        self._watch(self._available_roots())

    def _watch(self, roots: dict[str, tuple[int, int]]) -> None:
        """Watch the folders anew; `roots` are the directories they were just before, so that one
        swapped (or come back) meanwhile is seen to differ at the next check."""
        self.stop()
        self._watched_roots = roots
        specs = [WatchSpec(f.path, f.recursive, f.poll, f.poll_interval) for f in self.settings.folders]
        self.watcher = FolderWatcher(specs, self._tell)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def unreadable(self, directory: str) -> None:
        """Reconciliation could not list `directory`, so it is not watched either: warn once;
        once it is readable, it is watched and reconciled (see `_check_roots`)."""
        if directory in self._unreadable:
            return
        self._unreadable.add(directory)
        log.warning(
            "cannot read directory %s: its images are not published. Let the user watchd runs as "
            "read and enter it (chmod a+rx, chown or an ACL); a running watchd takes them in as soon "
            "as it can",
            printable(directory),
        )

    def folder_gone(self, root: str) -> None:
        """The watched folder `root` was deleted, and its watches with it: it is watched anew
        once it is there again, even with the same inode (`rm -rf w && mkdir w` may reuse it)."""
        self._watched_roots.pop(root, None)
        self.look_again()

    def look_again(self) -> None:
        """Check the folders and unreadable directories in a moment (a folder was deleted, or a
        directory's permissions changed), not only every few seconds."""
        self._next_root_check = min(self._next_root_check, self._clock() + LOOK_AGAIN_DELAY)

    def tick(self, now: float) -> None:
        """Renew the watches if a folder went, came back or was replaced, or a directory became
        readable; reconcile when one is due."""
        if self.watcher is None:
            return
        self._check_roots(now)
        if self.settings.rescan_interval and now >= self._next_rescan:
            self._next_rescan = now + jittered(self.settings.rescan_interval)
            self.rescan_all()

    def deadlines(self) -> list[float]:
        """When `tick` has work next (none while not watching)."""
        if self.watcher is None:
            return []
        if not self.settings.rescan_interval:  # 0 = off: a deadline in the past would spin the loop
            return [self._next_root_check]
        return [self._next_root_check, self._next_rescan]

    def _check_roots(self, now: float) -> None:
        """Every few seconds: a folder that vanished, came back or is another directory now (its
        watches follow the old one, or died with it), and a directory that became readable, get
        their watches renewed and are reconciled."""
        if now < self._next_root_check:
            return
        self._next_root_check = now + ROOT_CHECK_INTERVAL
        available = self._available_roots()
        remounted = self._available.remounted()
        readable = {d for d in self._unreadable if os.access(d, os.R_OK | os.X_OK)}
        if available == self._watched_roots and not remounted and not readable:
            return
        back = {root for root, place in available.items() if self._watched_roots.get(root) != place}
        replaced = back & self._watched_roots.keys()
        self._unreadable -= readable
        self._watch(available)
        for root in sorted(back | remounted):
            if root in replaced:
                log.warning("watched folder %s is another directory now; watching and reconciling it", root)
            else:
                log.info("watched folder %s is available again; reconciling it", root)
            self._tell(FolderBack(root))
        for directory in sorted(readable):
            log.info("directory %s is readable now; watching and reconciling it", printable(directory))
        # Renewing stopped every folder's watches for a moment: what happened meanwhile in the
        # others is found by reconciling them too (a readable directory is under one of them).
        for root in sorted(available.keys() - back - remounted):
            self._tell(Rescan(root))

    def _available_roots(self) -> dict[str, tuple[int, int]]:
        """Which directory each available folder is now, by device and inode."""
        roots: dict[str, tuple[int, int]] = {}
        for folder in self.settings.folders:
            root = str(folder.path)
            if self._available(root):
                try:
                    info = os.stat(root)
                except OSError:
                    continue
                roots[root] = (info.st_dev, info.st_ino)
        return roots


def jittered(interval: float) -> float:
    """`interval` ±25 %, so many daemons (or folders) do not rescan in step."""
    return interval * random.uniform(0.75, 1.25)
