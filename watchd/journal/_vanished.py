"""The journal's vanished files: waiting for their other half (a move), then retired unless
the mass-delete guard holds them."""

from __future__ import annotations

from collections.abc import Sequence

from watchd.journal._store import Store
from watchd.schema import FileRow


class Vanished(Store):
    """Files whose original disappeared: moves are paired, deletions held or confirmed."""

    def has_missing_of_size(self, size: int) -> bool:
        """Whether some vanished file of this size waits to be paired with a new one (a move)."""
        if not self._maybe_missing():
            return False
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM files WHERE missing_since IS NOT NULL AND size = ? LIMIT 1", (size,)
                ).fetchone()
                is not None
            )

    def _maybe_missing(self) -> bool:
        """Whether any file is marked vanished. Asked for every new file and every turn of the
        engine's loop, so the answer "none" is remembered until `mark_missing` (the only
        way a file becomes vanished) is called again."""
        known = self._any_missing  # read without the lock, like `Services.pauses`
        if known is None:
            with self._lock:
                if self._any_missing is None:
                    sql = "SELECT 1 FROM files WHERE missing_since IS NOT NULL LIMIT 1"
                    self._any_missing = self._db.execute(sql).fetchone() is not None
                known = self._any_missing
        return known

    def present_count(self, root: str) -> int:
        """Files in one watched folder that were there when last looked at (neither vanished nor
        tombstones): if the folder is empty, it is not the folder they were in (not mounted)."""
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM files "
                    "WHERE root = ? AND path IS NOT NULL AND missing_since IS NULL",
                    (root,),
                ).fetchone()[0]
            )

    def find_moved_source(self, sha256: str, size: int) -> FileRow | None:
        """The vanished file that held exactly this content, if any: the new file is that one moved."""
        return self._one(
            "SELECT * FROM files WHERE missing_since IS NOT NULL AND size = ? AND "
            "(sha256 = ? OR uploaded_sha256 = ?) ORDER BY missing_since LIMIT 1",
            (size, sha256, sha256),
        )

    def mark_missing(self, file_id: int, since: float | None) -> None:
        """The original vanished (or, with None, came back); a vanished file becomes a tombstone
        unless it reappears elsewhere (a move)."""
        with self._lock:
            self._any_missing = None if since is None else True
            self._set(file_id, missing_since=since, delete_held=0)

    def missing(self, older_than: float) -> list[FileRow]:
        """Vanished files whose grace period is over and whose deletion is not held."""
        if not self._maybe_missing():
            return []
        return self._many(
            "SELECT * FROM files WHERE missing_since IS NOT NULL AND missing_since <= ? AND delete_held != 1 "
            "ORDER BY id",
            (older_than,),
        )

    def hold_deletes(self, file_ids: Sequence[int]) -> None:
        """Too many deletions at once: keep these until `watchd confirm-deletes` (mass-delete guard).

        `delete_held` is 0 (normal), 1 (held by the guard) or 2 (confirmed: retire, bypassing it).
        """
        with self._write() as db:
            db.executemany("UPDATE files SET delete_held = 1 WHERE id = ?", [(i,) for i in file_ids])

    def held_deletes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM files WHERE delete_held = 1").fetchone()[0])

    def rejudge_held_deletes(self) -> int:
        """Put held deletions back before the guard (after a start or reload: the caps may
        have been raised); returns how many."""
        with self._write() as db:
            return db.execute("UPDATE files SET delete_held = 0 WHERE delete_held = 1").rowcount

    def confirm_deletes(self) -> int:
        """Release every held deletion; returns how many (they are processed at once)."""
        with self._write() as db:
            return db.execute(
                "UPDATE files SET delete_held = 2 WHERE delete_held = 1 AND missing_since IS NOT NULL"
            ).rowcount
