"""Originals that vanished, and watched folders that did.

A vanished file first waits `grace` seconds for its other half: a move's destination
arrives as a new file, and the pipeline pairs the two by content. After that it is retired
(sidecar removed, withdrawal from Baidu queued), except that a folder that is missing or
unreadable (unmounted, detached) is never a source of deletions, and a burst of deletions
is held by the mass-delete guard for a person to confirm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence

from watchd.guard import DeleteGuard
from watchd.journal import Journal
from watchd.schema import FileRow

log = logging.getLogger(__name__)

CONFIRMED = 2  # files.delete_held: confirmed by `watchd confirm-deletes`, retired past the guard


class FolderAvailability:
    """Whether a watched folder is there and readable; each change is logged once."""

    def __init__(self) -> None:
        self._unavailable: set[str] = set()

    def __call__(self, root: str) -> bool:
        available = os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK)
        if available:
            self._unavailable.discard(root)
        elif root not in self._unavailable:
            self._unavailable.add(root)
            log.error(
                "watched folder %s is unavailable (unmounted? detached?): nothing is withdrawn "
                "until it is back",
                root,
            )
        return available


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
    ) -> None:
        self.grace = grace
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
        for row in self._journal.missing(older_than=now if force else now - self.grace):
            if row.path is not None and os.path.lexists(row.path):
                self._journal.mark_missing(row.id, None)
            elif row.id not in in_flight and self._available(row.root):
                (confirmed if row.delete_held == CONFIRMED else fresh).append(row)
        allowed, held = self._guard.admit(fresh, self._journal.live_count)
        if held:
            self._journal.hold_deletes([row.id for row in held])
            log.error(
                "%d files vanished at once from %s: their withdrawal is held. If the deletions are "
                "intended, run `watchd confirm-deletes`; otherwise restore the files",
                len(held),
                ", ".join(sorted({row.root for row in held})),
            )
        return confirmed + allowed
