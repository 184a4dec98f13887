"""The journal's services: pauses (quota until its reset, configuration until a reload) and
the per-day quota counters."""

from __future__ import annotations

import sqlite3
import time

from watchd.journal._store import Store
from watchd.schema import ServicePause


def count_quota(db: sqlite3.Connection, service: str, day: str, n: int) -> None:
    """Add `n` to the day's use of `service`, in `db`'s open transaction."""
    db.execute(
        "INSERT INTO quota (service, day, used) VALUES (?, ?, ?) "
        "ON CONFLICT (service, day) DO UPDATE SET used = used + excluded.used",
        (service, day, n),
    )


class Services(Store):
    """Paused services and today's use of each quota."""

    def give_back_quota(self, service: str, day: str, n: int) -> None:
        """Uncount `n` sends that provably never reached the service (no connection was made)."""
        with self._write() as db:
            count_quota(db, service, day, -n)

    def pause(self, name: str, kind: str, until: float | None, reason: str) -> None:
        with self._write() as db:
            self._pauses = None
            db.execute(
                "INSERT INTO services (name, paused_until, pause_kind, reason, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "paused_until = excluded.paused_until, pause_kind = excluded.pause_kind, "
                "reason = excluded.reason, updated_at = excluded.updated_at",
                (name, until, kind, reason, time.time()),
            )

    def resume(self, name: str) -> None:
        with self._write() as db:
            self._pauses = None
            db.execute("DELETE FROM services WHERE name = ?", (name,))

    def pauses(self) -> list[ServicePause]:
        """The paused services. Asked before every send, so kept in memory between changes,
        which only this process makes (one watchd per journal)."""
        pauses = self._pauses  # read without the lock: the list is replaced, never changed
        if pauses is None:
            with self._lock:
                if self._pauses is None:
                    rows = self._db.execute(
                        "SELECT name, pause_kind, paused_until, reason FROM services ORDER BY name"
                    ).fetchall()
                    self._pauses = [ServicePause(*row) for row in rows]
                pauses = self._pauses
        return list(pauses)

    def paused_until(self, service: str, now: float) -> float | None:
        """When a paused service resumes (inf for a configuration pause), or None if it is not
        paused at `now`; a pause that has run out is lifted here."""
        for pause in self.pauses():
            if pause.name != service:
                continue
            if pause.until is None:
                return float("inf")
            if pause.until > now:
                return pause.until
            self.resume(service)
        return None

    def quota_used(self, service: str, day: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT used FROM quota WHERE service = ? AND day = ?", (service, day)
            ).fetchone()
        return int(row[0]) if row else 0

    def learn_quota(self, service: str, day: str, limit: int) -> None:
        """The service said its quota was used up on `day` after taking `limit` sends."""
        with self._write() as db:
            db.execute(
                "INSERT INTO quota (service, day, used, learned) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (service, day) DO UPDATE SET learned = excluded.learned",
                (service, day, limit),
            )

    def learned_quota(self, service: str) -> int | None:
        """The daily quota last learned for `service` (`learn_quota`), None if never."""
        with self._lock:
            row = self._db.execute(
                "SELECT learned FROM quota WHERE service = ? AND learned IS NOT NULL "
                "ORDER BY day DESC LIMIT 1",
                (service,),
            ).fetchone()
        return int(row[0]) if row else None
