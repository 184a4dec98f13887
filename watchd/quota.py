"""Daily quotas: which "day" a service counts in, when it resets, and the gate before a send.

Both services count uploads per calendar day in their own time zone (ImageBan: Moscow by
default, configurable; Baidu: Asia/Shanghai). Counters live in the journal so a restart
does not forget what was already spent today.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from watchd.journal import Journal


def day_key(tz: str, now: float) -> str:
    """The service's calendar day at `now`, as YYYY-MM-DD."""
    return datetime.fromtimestamp(now, ZoneInfo(tz)).date().isoformat()


def next_reset(tz: str, now: float) -> float:
    """The next midnight in `tz` after `now`, as a Unix time."""
    zone = ZoneInfo(tz)
    today = datetime.fromtimestamp(now, zone).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=zone) + timedelta(days=1)
    return midnight.timestamp()


class QuotaGate:
    """Counts sends against a daily limit (None = unlimited) kept in the journal."""

    def __init__(
        self, journal: Journal, service: str, limit: int | None, tz: str, clock: Callable[[], float]
    ) -> None:
        self.journal = journal
        self.service = service
        self.limit = limit
        self.tz = tz
        self.clock = clock
        self._lock = threading.Lock()

    def used_today(self) -> int:
        return self.journal.quota_used(self.service, day_key(self.tz, self.clock()))

    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used_today())

    def take(self, n: int = 1) -> bool:
        """Count `n` sends if today's limit allows them all; False (nothing counted) if not."""
        with self._lock:
            if self.limit is not None and self.used_today() + n > self.limit:
                return False
            self.journal.count_quota(self.service, day_key(self.tz, self.clock()), n)
            return True

    def reset_at(self) -> float:
        return next_reset(self.tz, self.clock())
