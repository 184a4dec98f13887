"""The journal's operations on a real SQLite file: what each leaves behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from watchd import journal as j
from watchd.hosts.base import Uploaded
from watchd.journal import Journal, UploadResult
from watchd.quota import QuotaGate, day_key

UPLOAD = UploadResult(
    "me", Uploaded("r1", "https://i/1.png", "https://s/1", 123, "8x8"), "ab" * 32, "2026-11-23T10:00:00Z"
)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / "state")


def test_add_returns_the_row_as_stored(journal: Journal) -> None:
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    assert row == journal.get_by_id(row.id)


def test_with_upload_is_the_row_record_uploaded_leaves(journal: Journal) -> None:
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    journal.claim_upload(row.id, UPLOAD.sha256)
    journal.record_uploaded(row.id, UPLOAD)
    stored = journal.get_by_id(row.id)
    assert stored is not None
    assert row.with_upload(UPLOAD) == stored.__class__(**{**vars(stored), "updated_at": row.updated_at})


def test_record_published_is_upload_sidecar_and_push_in_one(journal: Journal) -> None:
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    journal.claim_upload(row.id, UPLOAD.sha256)
    journal.record_published(row.id, UPLOAD, "/w/a.png.link.json", {"id": row.baidu_id, "title": "a"})
    stored = journal.get_by_id(row.id)
    assert stored is not None
    assert (stored.state, stored.link, stored.sidecar_path) == (
        j.DONE,
        "https://i/1.png",
        "/w/a.png.link.json",
    )
    (push,) = journal.due_outbox("push", now=1e12, limit=20)
    assert (push.file_id, push.baidu_id, push.payload) == (
        row.id,
        row.baidu_id,
        {"id": row.baidu_id, "title": "a"},
    )


def test_vanished_files_are_found_and_forgotten_when_they_return(journal: Journal) -> None:
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    assert journal.missing(older_than=1e12) == [] and not journal.has_missing_of_size(10)
    journal.mark_missing(row.id, 5.0)
    assert [r.id for r in journal.missing(older_than=1e12)] == [row.id]
    assert journal.has_missing_of_size(10) and not journal.has_missing_of_size(11)
    journal.mark_missing(row.id, None)
    assert journal.missing(older_than=1e12) == [] and not journal.has_missing_of_size(10)


def test_a_second_journal_sees_vanished_files_the_first_recorded(tmp_path: Path) -> None:
    first = Journal.open(tmp_path)
    row = first.add("/w/a.png", "/w", 10, 20, None)
    first.mark_missing(row.id, 5.0)
    assert Journal.open(tmp_path).has_missing_of_size(10)


def test_pauses_follow_pause_and_resume(journal: Journal) -> None:
    assert journal.pauses() == []
    journal.pause("baidu", "quota", 99.0, "used up")
    assert [(p.name, p.kind, p.until) for p in journal.pauses()] == [("baidu", "quota", 99.0)]
    journal.resume("baidu")
    assert journal.pauses() == []


def test_outbox_items_are_found_by_file_through_an_index(journal: Journal) -> None:
    plan = journal._db.execute("EXPLAIN QUERY PLAN DELETE FROM outbox WHERE file_id = 1").fetchall()
    assert any("outbox_file" in str(step) for step in plan), plan


def test_a_journal_of_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / j.JOURNAL_NAME
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {j.MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    db.close()
    assert Journal.open(tmp_path).schema_version == len(j.MIGRATIONS) > 1


def test_quota_reservations_are_counted_with_the_claim(journal: Journal) -> None:
    now = 1_800_000_000.0
    gate = QuotaGate(journal, "imageban:me", 2, "Europe/Moscow", lambda: now)
    rows = [journal.add(f"/w/{n}.png", "/w", 1, 1, None) for n in range(3)]
    for row in rows[:2]:
        reservation = gate.reserve()
        assert reservation == ("imageban:me", day_key("Europe/Moscow", now))
        journal.claim_upload(row.id, "ab" * 32, reservation)
    assert gate.reserve() is None
    assert gate.used_today() == 2
    # A new gate (a restart) starts from what the journal counted.
    assert QuotaGate(journal, "imageban:me", 3, "Europe/Moscow", lambda: now).reserve() is not None
    assert QuotaGate(journal, "imageban:me", 2, "Europe/Moscow", lambda: now).reserve() is None
    # The next day starts from zero.
    assert QuotaGate(journal, "imageban:me", 2, "Europe/Moscow", lambda: now + 86_400).reserve() is not None


def test_a_batch_commits_once_at_its_end(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    other = Journal.open(tmp_path)  # another connection sees only what is committed
    with journal.batch():
        first = journal.add("/w/a.png", "/w", 1, 1, None)
        journal.add("/w/b.png", "/w", 1, 1, None)
        assert journal.get("/w/b.png") is not None  # the batch reads its own writes
        assert other.get_by_id(first.id) is None
    assert other.get("/w/a.png") is not None and other.get("/w/b.png") is not None


def test_a_failed_batch_records_nothing(journal: Journal) -> None:
    with pytest.raises(RuntimeError), journal.batch():
        journal.add("/w/a.png", "/w", 1, 1, None)
        raise RuntimeError("disk trouble")
    assert journal.get("/w/a.png") is None
    journal.add("/w/b.png", "/w", 1, 1, None)  # and the journal goes on
    assert journal.get("/w/b.png") is not None


def test_a_sent_push_leaves_the_outbox(journal: Journal) -> None:
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    journal.record_published(row.id, UPLOAD, "/w/a.png.link.json", {"id": row.baidu_id, "title": "a" * 500})
    (push,) = journal.due_outbox("push", now=1e12, limit=20)
    journal.mark_sending([push.id])
    journal.outbox_sent([push], "2026-11-23T10:00:01Z")
    assert journal._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert journal.get_by_id(row.id).pushed_at == "2026-11-23T10:00:01Z"  # type: ignore[union-attr]
