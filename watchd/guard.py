"""The mass-delete guard: a burst of deletions is held for a person to confirm.

An unmounted share, a detached disk or a bad sync can make thousands of originals vanish
at once; withdrawing them all from Baidu would be hard to undo. Deletions in one watched
folder are admitted while the count in the sliding window stays within the cap; a batch
that would exceed BOTH `max_files` and `max_percent` of the folder is held (recorded in the
journal, shown by `status`) until `watchd confirm-deletes` or a raised cap releases it.
A folder that is missing or unreadable is never a source of deletions at all (the engine
checks that before asking the guard).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence

from watchd.journal import FileRow


class DeleteGuard:
    """Decides which vanished files may be retired now, per watched folder."""

    def __init__(
        self,
        *,
        max_files: int = 50,
        max_percent: float = 20.0,
        window: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_files = max_files
        self.max_percent = max_percent
        self.window = window
        self.clock = clock
        self._recent: dict[str, deque[float]] = defaultdict(deque)

    def admit(
        self, rows: Sequence[FileRow], folder_size: Callable[[str], int]
    ) -> tuple[list[FileRow], list[FileRow]]:
        """Split `rows` into (retire now, hold); counts the admitted ones in the window."""
        now = self.clock()
        by_root: dict[str, list[FileRow]] = defaultdict(list)
        for row in rows:
            by_root[row.root].append(row)
        allowed: list[FileRow] = []
        held: list[FileRow] = []
        for root, group in by_root.items():
            recent = self._recent[root]
            while recent and recent[0] < now - self.window:
                recent.popleft()
            total = len(recent) + len(group)
            share = 100.0 * total / max(1, folder_size(root))
            if total > self.max_files and share > self.max_percent:
                held.extend(group)
                continue
            recent.extend([now] * len(group))
            allowed.extend(group)
        return allowed, held
