"""The journal's schema and the rows it hands out: tables, migrations, states.

Kept apart from `watchd.journal` (the operations) so that the shape of the data can be
read in one place. The state machine itself is drawn in `watchd.journal`'s docstring.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from watchd.hosts.base import Uploaded

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT UNIQUE,
        last_path TEXT NOT NULL,
        root TEXT NOT NULL,
        state TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        mtime_ns INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT,
        baidu_id TEXT NOT NULL UNIQUE,
        host TEXT,
        remote_id TEXT,
        link TEXT,
        short_link TEXT,
        resolution TEXT,
        uploaded_size INTEGER,
        uploaded_at TEXT,
        uploaded_sha256 TEXT,
        upload_count INTEGER NOT NULL DEFAULT 0,
        sidecar_path TEXT,
        pushed_at TEXT,
        missing_since REAL,
        delete_held INTEGER NOT NULL DEFAULT 0,
        error_kind TEXT,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX files_due ON files (state, next_attempt_at);
    CREATE INDEX files_sha ON files (sha256);
    CREATE INDEX files_missing ON files (missing_since) WHERE missing_since IS NOT NULL;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files (id),
        action TEXT NOT NULL CHECK (action IN ('push', 'delete')),
        baidu_id TEXT NOT NULL,
        payload TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX outbox_due ON outbox (state, action, next_attempt_at);
    CREATE TABLE services (
        name TEXT PRIMARY KEY,
        paused_until REAL,
        pause_kind TEXT,
        reason TEXT,
        updated_at REAL NOT NULL
    );
    CREATE TABLE quota (
        service TEXT NOT NULL,
        day TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (service, day)
    );
    """,
    # Finding a file's outbox items (on every re-upload and deletion) without a full scan.
    "CREATE INDEX outbox_file ON outbox (file_id)",
    # Sent items now leave the outbox (Journal.outbox_sent); drop those kept before.
    "DELETE FROM outbox WHERE state = 'sent'",
    # `baidu_may_hold`: set when a push is marked sending (Baidu may hold the id from then on, even
    # if the push is never recorded), so a re-push says `modify` and a deletion withdraws it. Files
    # pushed before, or with a push tried already, may be held; a deleted file's push is never sent.
    """
    ALTER TABLE files ADD COLUMN baidu_may_hold INTEGER NOT NULL DEFAULT 0;
    UPDATE files SET baidu_may_hold = 1 WHERE pushed_at IS NOT NULL
        OR id IN (SELECT file_id FROM outbox WHERE action = 'push' AND attempts > 0);
    DELETE FROM outbox
        WHERE action = 'push' AND file_id IN (SELECT id FROM files WHERE state = 'deleted');
    """,
    # A daily quota learned from the service's "quota used up" answers (Baidu publishes none):
    # what it had taken that day when it said so (see `watchd.quota.DailyRoom`).
    "ALTER TABLE quota ADD COLUMN learned INTEGER",
)

# File states.
PENDING = "pending"
UPLOADING = "uploading"
UPLOADED = "uploaded"
DONE = "done"
FAILED = "failed"
DELETED = "deleted"
STATES = (PENDING, UPLOADING, UPLOADED, DONE, FAILED, DELETED)

# The kind of a pause (and of the work it defers) for a configured `daily_quota` used up, as
# opposed to "quota", the service's own answer: raising the setting lifts the first alone.
DAILY_QUOTA = "daily_quota"

# The error_kind of a tombstone `watchd forget` left (its file may still be there): kept for
# its Baidu id, never counted as a deleted file.
FORGOTTEN = "forgotten"

# Outbox states.
QUEUED = "queued"
SENDING = "sending"
HELD = "held"
REFRESH = "refresh"  # a push Baidu has, whose file's sidecar does not show it yet (see Outbox.outbox_sent)


@dataclass(frozen=True)
class UploadResult:
    """A finished upload, not yet recorded: where it went, the bytes sent and when."""

    host: str
    uploaded: Uploaded
    sha256: str
    when: str


@dataclass(frozen=True)
class FileRow:
    """One file as the journal knows it."""

    id: int
    path: str | None
    last_path: str
    root: str
    state: str
    size: int
    mtime_ns: int
    sha256: str | None
    baidu_id: str
    host: str | None
    remote_id: str | None
    link: str | None
    short_link: str | None
    resolution: str | None
    uploaded_size: int | None
    uploaded_at: str | None
    uploaded_sha256: str | None
    upload_count: int
    sidecar_path: str | None
    pushed_at: str | None
    missing_since: float | None
    delete_held: int
    error_kind: str | None
    reason: str | None
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    baidu_may_hold: int  # 1 once a push of `baidu_id` was marked sending, 0 again once withdrawn

    @classmethod
    def new(
        cls,
        file_id: int,
        path: str,
        root: str,
        state: str,
        size: int,
        mtime_ns: int,
        sha256: str | None,
        baidu_id: str,
        now: float,
    ) -> FileRow:
        """A row as `Journal.add` inserts it (the table's defaults for everything else)."""
        nothing = dict.fromkeys(
            ("host", "remote_id", "link", "short_link", "resolution", "uploaded_size", "uploaded_at",
             "uploaded_sha256", "sidecar_path", "pushed_at", "missing_since", "error_kind", "reason"),
        )  # fmt: skip
        return cls(
            id=file_id,
            path=path,
            last_path=path,
            root=root,
            state=state,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha256,
            baidu_id=baidu_id,
            upload_count=0,
            delete_held=0,
            attempts=0,
            baidu_may_hold=0,
            next_attempt_at=0.0,
            created_at=now,
            updated_at=now,
            **nothing,
        )

    def with_upload(self, upload: UploadResult) -> FileRow:
        """This row as `Journal.record_uploaded` leaves it (without reading it back)."""
        return replace(
            self,
            state=UPLOADED,
            host=upload.host,
            remote_id=upload.uploaded.remote_id,
            link=upload.uploaded.link,
            short_link=upload.uploaded.short_link,
            resolution=upload.uploaded.resolution,
            uploaded_size=upload.uploaded.size,
            uploaded_at=upload.when,
            sha256=upload.sha256,
            uploaded_sha256=upload.sha256,
            upload_count=self.upload_count + 1,
            error_kind=None,
            reason=None,
            attempts=0,
            next_attempt_at=0.0,
        )

    def uploaded(self) -> Uploaded | None:
        """The upload this row records, or None when the file was never uploaded."""
        if self.link is None or self.short_link is None:
            return None
        return Uploaded(
            remote_id=self.remote_id or "",
            link=self.link,
            short_link=self.short_link,
            size=self.uploaded_size or 0,
            resolution=self.resolution or "",
        )


@dataclass(frozen=True)
class OutboxRow:
    """One Baidu intent: push (with its JSON payload) or delete of `baidu_id`."""

    id: int
    file_id: int
    action: str
    baidu_id: str
    payload: dict[str, object] | None
    state: str
    attempts: int
    next_attempt_at: float
    reason: str | None


@dataclass(frozen=True)
class ServicePause:
    """A paused service: `kind` is "quota" or "daily_quota" (until `until`, the daily reset: the
    service said so, or the config's limit was reached), "outage" (until `until`, a backoff)
    or "configuration" (until a reload)."""

    name: str
    kind: str
    until: float | None
    reason: str


def new_baidu_id() -> str:
    """A fresh stable identity for a local file: 32 lowercase hex digits (letters and digits only)."""
    return uuid.uuid4().hex
