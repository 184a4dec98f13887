"""Keeping the folders watched: watches renewed when a folder goes away or comes back, and
every folder reconciled about once per `rescan_interval`, the safety net under events.

The engine's loop calls `tick` each turn and sleeps no longer than `deadlines` allow;
what to reconcile arrives as `Rescan` facts, handled like any other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from watchd.config import Settings
from watchd.departures import FolderAvailability
from watchd.watcher import Fact, FolderWatcher, Rescan, WatchSpec

log = logging.getLogger("watchd.engine")  # the name these lines always had, for log filters

ROOT_CHECK_INTERVAL = 5.0


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
        self.watcher: FolderWatcher | None = None
        self._watched_roots: set[str] = set()
        self._next_root_check = 0.0
        self._next_rescan = clock() + jittered(settings.rescan_interval)

    def rescan_all(self) -> None:
        """Queue a full reconciliation of every folder."""
        for folder in self.settings.folders:
            self._tell(Rescan(str(folder.path)))

    def restart(self) -> None:
        """(Re)start watching every available folder of the current settings."""
        self.stop()
        self._watched_roots = self._available_roots()
        specs = [WatchSpec(f.path, f.recursive, f.poll, f.poll_interval) for f in self.settings.folders]
        self.watcher = FolderWatcher(specs, self._tell)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def tick(self, now: float) -> None:
        """Renew the watches if a folder went or came back; reconcile when one is due."""
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
        """Every few seconds: a folder that vanished or came back gets its watches renewed."""
        if now < self._next_root_check:
            return
        self._next_root_check = now + ROOT_CHECK_INTERVAL
        available = self._available_roots()
        remounted = self._available.remounted()
        if available == self._watched_roots and not remounted:
            return
        back = (available - self._watched_roots) | remounted
        self.restart()
        for root in sorted(back):
            log.info("watched folder %s is available again; reconciling it", root)
            self._tell(Rescan(root))

    def _available_roots(self) -> set[str]:
        return {str(f.path) for f in self.settings.folders if self._available(str(f.path))}


def jittered(interval: float) -> float:
    """`interval` ±25 %, so many daemons (or folders) do not rescan in step."""
    return interval * random.uniform(0.75, 1.25)
