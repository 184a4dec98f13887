"""The journal's summaries, for `watchd status`, STATUS= and metrics."""

from __future__ import annotations

from watchd.journal._store import Store
from watchd.schema import FAILED, FORGOTTEN, PENDING, STATES, UPLOADED, FileRow

# Every row but the tombstones `watchd forget` leaves: their files were not deleted.
_COUNTED = f"error_kind IS NOT '{FORGOTTEN}'"


class Status(Store):
    """Counts per state and folder, and the latest failures."""

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT state, COUNT(*) FROM files WHERE {_COUNTED} GROUP BY state"
            ).fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({state: n for state, n in rows})
        return counts

    def live_count(self, root: str) -> int:
        """Files the journal knows in one watched folder (vanished ones included, tombstones not)."""
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM files WHERE root = ? AND path IS NOT NULL", (root,)
                ).fetchone()[0]
            )

    def counts_by_root(self) -> dict[str, dict[str, int]]:
        """Files per folder they were found in (watched still or not) and state, adding up to
        `counts`: a deleted file, its path gone, still counts in the folder it was in."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT root, state, COUNT(*) FROM files WHERE {_COUNTED} GROUP BY root, state"
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for root, state, n in rows:
            result.setdefault(root, dict.fromkeys(STATES, 0))[state] = n
        return result

    def baidu_failures_by_root(self) -> dict[str, int]:
        """Failed Baidu items (kept for `watchd retry`) per watched folder of their file,
        withdrawals of deleted files included."""
        with self._lock:
            rows = self._db.execute(
                "SELECT files.root, COUNT(*) FROM outbox JOIN files ON files.id = outbox.file_id "
                "WHERE outbox.state = ? GROUP BY files.root",
                (FAILED,),
            ).fetchall()
        return {root: n for root, n in rows}

    def recent_failures(self, limit: int = 20) -> list[FileRow]:
        return self._many(
            "SELECT * FROM files WHERE state = ? OR (state IN (?, ?) AND reason IS NOT NULL) "
            "ORDER BY updated_at DESC LIMIT ?",
            (FAILED, PENDING, UPLOADED, limit),
        )
