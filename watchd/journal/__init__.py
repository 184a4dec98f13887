"""The journal: SQLite, the single source of truth for what was seen, uploaded and submitted.

Every decision is written here *before* the network call it leads to, so a crash at any
moment is resumed from the journal on the next start:

    pending ──claim──► uploading ──► uploaded ──sidecar──► done
       ▲                   │                                 │ content changed
       └── transient ◄─────┘──► failed (permanent, reason)   └──► pending (same row, same Baidu id)
    any state ──original deleted──► tombstone (path NULL, last_path kept, Baidu delete queued)
    any state ──`watchd forget`──► gone, or a tombstone if Baidu may hold its id (see `forget`)

The Baidu outbox (`outbox`) holds push and delete intents, one row per item, so batches are
rebuilt from the journal after a restart. `services` holds pauses (quota until its reset,
configuration until a reload) and `quota` the per-day counters. The tables, their
migrations, the states and the row types are in `watchd.schema`.

Durability: WAL with synchronous=NORMAL survives a killed process without losing a commit;
after a power cut the last commits may roll back, which only means work is redone (an image
uploaded twice at worst), never lost: reconciliation finds every file again.
"""

from __future__ import annotations

from collections.abc import Collection

from watchd.journal._files import Files
from watchd.journal._outbox import Outbox
from watchd.journal._services import Services
from watchd.journal._status import Status
from watchd.journal._store import JOURNAL_NAME
from watchd.journal._vanished import Vanished
from watchd.schema import (  # re-exported: callers use journal.PENDING, journal.FileRow, …
    DELETED,
    DONE,
    FAILED,
    HELD,
    MIGRATIONS,
    PENDING,
    QUEUED,
    SENDING,
    STATES,
    UPLOADED,
    UPLOADING,
    FileRow,
    OutboxRow,
    ServicePause,
    UploadResult,
    new_baidu_id,
)

__all__ = [
    "DELETED",
    "DONE",
    "FAILED",
    "HELD",
    "JOURNAL_NAME",
    "MIGRATIONS",
    "PENDING",
    "QUEUED",
    "SENDING",
    "STATES",
    "UPLOADED",
    "UPLOADING",
    "FileRow",
    "Journal",
    "OutboxRow",
    "ServicePause",
    "UploadResult",
    "new_baidu_id",
]


class Journal(Files, Vanished, Outbox, Services, Status):
    """The journal: one SQLite connection (`watchd.journal._store.Store`) and the operations
    of each concern, one module each."""

    def recover(self, exclude: Collection[int] = (), *, outbox: bool = True) -> tuple[int, int]:
        """After a crash: interrupted uploads (and, with `outbox`, batches) go back to the queue.

        Returns (files requeued, outbox items requeued). An interrupted upload may have
        reached the host; it is uploaded again (at most one duplicate per item in flight). An
        interrupted push of a file deleted meanwhile is dropped, never resent after its
        withdrawal. `exclude` names files whose upload is still running in this process.
        """
        with self._write() as db:
            files = sum(
                db.execute(
                    "UPDATE files SET state = ?, next_attempt_at = 0 WHERE id = ?", (PENDING, file_id)
                ).rowcount
                for (file_id,) in db.execute("SELECT id FROM files WHERE state = ?", (UPLOADING,)).fetchall()
                if file_id not in exclude
            )
        return files, self.requeue_sending() if outbox else 0

    def probe(self) -> None:
        """Raise sqlite3.Error unless the journal can be written now (a full or read-only disk
        fails it): one write of a page that changes nothing, the schema version."""
        with self._write() as db:
            db.execute(f"PRAGMA user_version = {self.schema_version}")
