"""Daily quotas: which "day" a service counts in, when it resets, and the gate before a send.

Both services count uploads per calendar day in their own time zone (ImageBan: Moscow by
default, configurable; Baidu: Asia/Shanghai). Counters live in the journal so a restart
does not forget what was already spent today.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    """Counts sends against a daily limit (None = unlimited) kept in the journal.

    `reserve` decides from an in-memory count of today's use, loaded from the journal once
    a day (only this process writes it: one watchd per journal); the caller records the
    reservation in the journal together with the send's intent, in one transaction. A
    reservation whose transaction fails stays counted here, which errs on the safe side.

    Concurrent senders use `hold`, which also counts the sends in flight: a unit they may
    still give back is not yet spent, so no one concludes from it that the day is over.
    """

    def __init__(
        self, journal: Journal, service: str, limit: int | None, tz: str, clock: Callable[[], float]
    ) -> None:
        self.journal = journal
        self.service = service
        self.limit = limit
        self.tz = tz
        self.clock = clock
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when a held send ends
        self._day = ""
        self._used = 0
        self._in_flight = 0

    def used_today(self) -> int:
        return self.journal.quota_used(self.service, day_key(self.tz, self.clock()))

    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used_today())

    def room(self) -> int | None:
        """How many more sends today's limit allows (None: no limit)."""
        if self.limit is None:
            return None
        with self._lock:
            self._load_today()
            return max(0, self.limit - self._used)

    def reserve(self, n: int = 1) -> tuple[str, str] | None:
        """Count `n` sends if today's limit allows them all, and return the (service, day)
        to record with their intent; None (nothing counted) if the limit does not allow them."""
        with self._lock:
            return self._take(n)

    @contextmanager
    def hold(self) -> Iterator[tuple[str, str] | None]:
        """Reserve one send for the block, counted as in flight until the block ends (a
        `give_back` belongs inside it); None, and nothing counted, when there is no room."""
        with self._lock:
            reservation = self._take(1)
            if reservation is not None:
                self._in_flight += 1
        if reservation is None:
            yield None
            return
        try:
            yield reservation
        finally:
            with self._settled:
                self._in_flight -= 1
                self._settled.notify_all()

    def wait_for_room(self) -> bool:
        """With today's limit reached, wait while held sends are in flight; True when there
        is room again.

        A held send that never reached the service gives its unit back, so a day is not
        over while units an outage is about to return are still out.
        """
        with self._settled:
            while True:
                self._load_today()
                if self.limit is None or self._used < self.limit:
                    return True
                if not self._in_flight:
                    return False
                self._settled.wait()

    def give_back(self, reservation: tuple[str, str], n: int = 1) -> None:
        """Return `n` units of a reservation whose sends never reached the service: an outage
        must not use up the day's quota with attempts that counted for nothing."""
        _service, day = reservation
        with self._lock:
            if day == self._day:
                self._used -= n
        self.journal.give_back_quota(self.service, day, n)

    def _take(self, n: int) -> tuple[str, str] | None:
        """`reserve`, called under the lock."""
        day = self._load_today()
        if self.limit is not None and self._used + n > self.limit:
            return None
        self._used += n
        return self.service, day

    def _load_today(self) -> str:
        """Today's day key, with `_used` holding today's count (called under the lock)."""
        day = day_key(self.tz, self.clock())
        if day != self._day:
            self._day, self._used = day, self.journal.quota_used(self.service, day)
        return day

    def reset_at(self) -> float:
        return next_reset(self.tz, self.clock())


class DailyRoom:
    """How many items the next call to a service with an unpublished daily quota (Baidu) may
    carry, learned from its "quota used up" answers, which refuse a whole call.

    Refused with `n` items, fewer than `n` are left today: the next call carries half as
    many, and so on down to one, so the day's last units are used (a quota of 25 takes 20,
    then 5, not 20 and a refusal). A call of one refused, or the units known to be left all
    taken, ends the day; what was taken by then is the quota learned (kept in the journal).
    On later days calls are sized to end on the learned quota, and one item is tried past
    it: taken, the quota has grown and is learned again; refused, the day is over after a
    single refusal of one item.
    """

    def __init__(
        self, journal: Journal, service: str, tz: str, clock: Callable[[], float], largest: int
    ) -> None:
        self.journal = journal
        self.service = service
        self.tz = tz
        self.clock = clock
        self.largest = largest
        self.learned = journal.learned_quota(service)
        self._day = ""
        self._left: int | None = None  # most units that can be left today, after a refusal
        self._past_learned = False  # Baidu took more today than the learned quota

    def size(self) -> int:
        """Items for the next call (the largest call when nothing limits it)."""
        day = self._today()
        if self._left is not None:
            return min(self.largest, max(1, (self._left + 1) // 2))
        if self.learned is not None and not self._past_learned:
            return min(self.largest, max(1, self.learned - self.journal.quota_used(self.service, day)))
        return self.largest

    def refused(self, n: int) -> bool:
        """A call of `n` items was refused as over the quota. True if a smaller call may still
        fit today; False if the day's quota is used up (and now learned)."""
        day = self._today()
        self._left = n - 1 if self._left is None else min(self._left, n - 1)
        if self._left > 0:
            return True
        self._learn(day)
        return False

    def taken(self, n: int) -> bool:
        """A call's `n` items were taken. False if that provably used up the day's quota
        (and it is now learned)."""
        day = self._today()
        if self._left is not None:
            self._left -= n
            if self._left <= 0:
                self._learn(day)
                return False
        elif self.learned is not None and self.journal.quota_used(self.service, day) > self.learned:
            self._past_learned = True  # learned again when Baidu next says the quota is used up
        return True

    def _learn(self, day: str) -> None:
        self.learned = self.journal.quota_used(self.service, day)
        self.journal.learn_quota(self.service, day, self.learned)

    def _today(self) -> str:
        day = day_key(self.tz, self.clock())
        if day != self._day:
            self._day, self._left, self._past_learned = day, None, False
        return day
