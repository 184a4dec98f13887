"""The journal's operations on a real SQLite file: what each leaves behind."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from watchd import journal as j
from watchd.hosts.base import Uploaded
from watchd.journal import FileRow, Journal, OutboxRow, UploadResult
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


def test_with_the_quota_held_by_sends_in_flight_the_day_is_over_only_once_they_spent_it(
    journal: Journal,
) -> None:
    gate = QuotaGate(journal, "imageban:me", 1, "Europe/Moscow", lambda: 1_800_000_000.0)

    def send(sending: threading.Event, go: threading.Event, reached: bool) -> None:
        with gate.hold() as reservation:
            assert reservation is not None
            sending.set()
            go.wait(5)
            if not reached:
                gate.give_back(reservation)

    outcomes: list[bool] = []
    for reached in (False, True):  # an attempt that never got through, then one that did
        sending, go = threading.Event(), threading.Event()
        sender = threading.Thread(target=send, args=(sending, go, reached))
        sender.start()
        sending.wait(5)
        with gate.hold() as second:
            assert second is None  # the unit is out
        waiter = threading.Thread(target=lambda: outcomes.append(gate.wait_for_room()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # waits for the send in flight instead of deciding now
        go.set()
        sender.join(5)
        waiter.join(5)
    assert outcomes == [True, False]  # room once the unit came back; none once it was spent


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


def _queued_push(journal: Journal) -> tuple[FileRow, OutboxRow]:
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    journal.record_published(row.id, UPLOAD, "/w/a.png.link.json", {"id": row.baidu_id, "title": "a"})
    (push,) = journal.due_outbox("push", now=1e12, limit=20)
    return row, push


@pytest.mark.parametrize("outcome", ["transient", "permanent", "crash"])
def test_a_push_in_flight_when_its_file_is_deleted_never_returns_and_its_withdrawal_stays(
    journal: Journal, outcome: str
) -> None:
    row, push = _queued_push(journal)
    assert journal.mark_sending([push.id]) == ([push.id], set())
    journal.tombstone(row.id, withdraw=True)  # while the pushPic call is in flight
    if outcome == "transient":
        journal.outbox_retry([push.id], "timed out", 0.0)
    elif outcome == "permanent":
        journal.outbox_failed(push, "refused")
    else:
        journal.recover()  # kill -9 during the call, then a restart
    journal.retry_failed()  # `watchd retry` must not bring it back either
    assert journal.due_outbox("push", now=1e12, limit=20) == []
    assert journal.outbox_depth("push") == 0 and journal.outbox_failures() == []
    (delete,) = journal.due_outbox("delete", now=1e12, limit=10)
    assert delete.baidu_id == row.baidu_id


def test_a_push_cancelled_after_it_was_picked_is_not_marked_sending(journal: Journal) -> None:
    row, push = _queued_push(journal)
    journal.tombstone(row.id, withdraw=True)  # between the batcher's due_outbox and mark_sending
    assert journal.mark_sending([push.id]) == ([], set())
    assert journal.outbox_depth() == 0  # never sent, so nothing to withdraw


def test_baidu_may_hold_an_id_from_the_moment_its_push_is_marked_sending(journal: Journal) -> None:
    row, push = _queued_push(journal)
    assert journal.get_by_id(row.id).baidu_may_hold == 0  # type: ignore[union-attr]
    journal.mark_sending([push.id])
    journal.recover()  # the push reached Baidu, then kill -9 before its answer was recorded
    stored = journal.get_by_id(row.id)
    assert stored is not None and stored.pushed_at is None and stored.baidu_may_hold == 1
    journal.tombstone(row.id, withdraw=True)  # the queued push is cancelled, the id still withdrawn
    (delete,) = journal.due_outbox("delete", now=1e12, limit=10)
    assert journal.outbox_depth("push") == 0 and delete.baidu_id == row.baidu_id
    journal.mark_sending([delete.id])
    journal.outbox_sent([delete], "2026-11-23T10:00:02Z")
    assert journal.get_by_id(row.id).baidu_may_hold == 0  # type: ignore[union-attr]


def test_a_refused_push_leaves_its_file_held_by_baidu_only_if_another_push_may_have_reached_it(
    journal: Journal,
) -> None:
    row, first = _queued_push(journal)
    journal.mark_sending([first.id])
    journal.pushes_refused([first.id])  # answered "quota used up": Baidu stored nothing
    assert journal.get_by_id(row.id).baidu_may_hold == 0  # type: ignore[union-attr]
    journal.outbox_retry([first.id], "quota", 0.0)
    journal.mark_sending([first.id])  # sent again; a reload's second batcher sends a newer push
    journal.record_published(row.id, UPLOAD, "/w/a.png.link.json", {"id": row.baidu_id, "title": "b"})
    (second,) = journal.due_outbox("push", now=1e12, limit=20)
    journal.mark_sending([second.id])
    journal.pushes_refused([first.id])  # the first is refused, but the second may be stored
    assert journal.get_by_id(row.id).baidu_may_hold == 1  # type: ignore[union-attr]


def test_a_push_queued_while_the_files_first_push_is_in_flight_is_sent_as_a_modification(
    journal: Journal,
) -> None:
    row, first = _queued_push(journal)  # the first upload's push...
    assert journal.mark_sending([first.id]) == ([first.id], set())
    journal.record_published(row.id, UPLOAD, "/w/a.png.link.json", {"id": row.baidu_id, "title": "b"})
    (second,) = journal.due_outbox(
        "push", now=1e12, limit=20
    )  # ...and the rewritten file's, queued meanwhile
    assert journal.mark_sending([second.id]) == ([second.id], {second.id})


def test_a_move_with_a_push_updates_the_one_not_sent_yet_and_follows_the_one_on_its_way(
    journal: Journal,
) -> None:
    row, push = _queued_push(journal)
    journal.outbox_retry([push.id], "timed out", time.time() + 60)  # backing off
    journal.move(row.id, "/w/b.png", "/w", "/w/b.png.link.json", {"id": row.baidu_id, "title": "b"})
    assert journal.push_queued(row.id) and not journal.due_outbox("push", now=time.time(), limit=20)
    (updated,) = journal.due_outbox("push", now=1e12, limit=20)  # the same item, its backoff kept
    assert (updated.id, updated.payload) == (push.id, {"id": row.baidu_id, "title": "b"})
    journal.mark_sending([push.id])
    journal.move(row.id, "/w/c.png", "/w", "/w/c.png.link.json", {"id": row.baidu_id, "title": "c"})
    (follower,) = journal.due_outbox("push", now=1e12, limit=20)
    assert follower.id != push.id and follower.payload == {"id": row.baidu_id, "title": "c"}
    journal.outbox_sent([push], "2026-11-23T10:00:01Z")
    assert journal.push_queued(row.id)  # the follower still is
    moved = journal.get_by_id(row.id)
    assert moved is not None and moved.path == "/w/c.png"


@pytest.mark.parametrize("outcome", ["transient", "permanent", "crash"])
def test_a_push_whose_call_fails_after_a_newer_push_was_queued_is_dropped_not_sent_again(
    journal: Journal, outcome: str
) -> None:
    """Sent again after the newer one, it would leave Baidu with the old title or image."""
    row, first = _queued_push(journal)
    journal.mark_sending([first.id])
    journal.move(row.id, "/w/b.png", "/w", "/w/b.png.link.json", {"id": row.baidu_id, "title": "b"})
    if outcome == "transient":
        journal.outbox_retry([first.id], "timed out", 0.0)
    elif outcome == "permanent":
        journal.outbox_failed(first, "bad item")
    else:
        journal.requeue_sending()
    (left,) = journal.due_outbox("push", now=1e12, limit=20)
    assert left.id != first.id and left.payload == {"id": row.baidu_id, "title": "b"}
    assert journal.outbox_failures() == []


def test_migration_4_marks_what_baidu_may_hold_and_drops_pushes_of_deleted_files(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / j.JOURNAL_NAME)
    db.executescript(f"BEGIN; {'; '.join(j.MIGRATIONS[:3])}; PRAGMA user_version = 3; COMMIT;")
    files = [("pushed", "2026-01-01T00:00:00Z", 0), ("tried", None, 1), ("fresh", None, 0), ("gone", None, 0)]
    for n, (name, pushed_at, attempts) in enumerate(files, start=1):
        db.execute(
            "INSERT INTO files (id, path, last_path, root, state, baidu_id, pushed_at, created_at, "
            "updated_at) VALUES (?, ?, ?, '/w', ?, ?, ?, 0, 0)",
            (n, f"/w/{name}", f"/w/{name}", j.DELETED if name == "gone" else j.DONE, name, pushed_at),
        )
        db.execute(
            "INSERT INTO outbox (file_id, action, baidu_id, state, attempts, created_at, updated_at) "
            "VALUES (?, 'push', ?, ?, ?, 0, 0)",
            (n, name, j.QUEUED, attempts),
        )
    db.commit()
    db.close()
    journal = Journal.open(tmp_path)
    held = {row.baidu_id: row.baidu_may_hold for row in map(journal.get_by_id, range(1, 5)) if row}
    assert held == {"pushed": 1, "tried": 1, "fresh": 0, "gone": 0}
    assert {row.baidu_id for row in journal.due_outbox("push", now=1e12, limit=20)} == {
        "pushed",
        "tried",
        "fresh",
    }


def test_a_retried_sidecar_step_counts_its_attempts_so_its_backoff_grows(journal: Journal) -> None:
    row = journal.add("/w/a.png", "/w", 10, 1, None)
    journal.record_retry(row.id, j.UPLOADED, "disk", "disk full", 5.0)
    journal.record_retry(row.id, j.UPLOADED, "disk", "disk full", 9.0)
    assert (stored := journal.get_by_id(row.id)) is not None and stored.attempts == 2
    journal.record_retry(row.id, j.PENDING, "transient", "timeout", 12.0)  # counted when claimed
    assert (stored := journal.get_by_id(row.id)) is not None and stored.attempts == 2


def test_forgetting_a_file_baidu_may_hold_keeps_a_tombstone_and_withdraws_its_id(journal: Journal) -> None:
    row, push = _queued_push(journal)
    journal.mark_sending([push.id])
    journal.outbox_sent([push], "2026-11-23T10:00:01Z")
    journal.forget(row.id, withdraw=True)
    assert journal.get("/w/a.png") is None  # seen again, it is a new file with a new Baidu id
    tombstone = journal.get_by_id(row.id)
    assert tombstone is not None and (tombstone.state, tombstone.last_path) == (j.DELETED, "/w/a.png")
    (delete,) = journal.due_outbox("delete", now=1e12, limit=10)
    assert delete.baidu_id == row.baidu_id
    assert journal.add("/w/a.png", "/w", 10, 20, None).baidu_id != row.baidu_id


def test_forgetting_a_file_never_sent_to_baidu_drops_every_trace(journal: Journal) -> None:
    row, _push = _queued_push(journal)  # queued, never marked sending: Baidu cannot hold it
    journal.forget(row.id, withdraw=True)
    assert journal.get_by_id(row.id) is None and journal.outbox_depth() == 0


def test_retry_file_queues_only_that_files_failed_baidu_items(journal: Journal) -> None:
    rows = []
    for name in ("a", "b"):
        row = journal.add(f"/w/{name}.png", "/w", 10, 20, None)
        journal.record_published(row.id, UPLOAD, f"/w/{name}.png.link.json", {"id": row.baidu_id})
        rows.append(row)
    for push in journal.due_outbox("push", now=1e12, limit=20):
        journal.mark_sending([push.id])
        journal.outbox_failed(push, "refused")
    assert journal.retry_file(rows[0].id) == 1
    assert [p.file_id for p in journal.due_outbox("push", now=1e12, limit=20)] == [rows[0].id]
    assert [f.file_id for f in journal.outbox_failures()] == [rows[1].id]
    assert journal.retry_file(rows[0].id) == 0  # nothing of it has failed any more


def test_retry_rebuilds_a_push_that_failed_local_validation_and_resends_failed_withdrawals(
    journal: Journal,
) -> None:
    local = journal.add("/w/a.png", "/w", 10, 20, None)
    journal.record_published(local.id, UPLOAD, "/w/a.png.link.json", None, push_error="title too long")
    gone = journal.add("/w/b.png", "/w", 1, 1, None)
    journal.record_published(gone.id, UPLOAD, "/w/b.png.link.json", {"id": gone.baidu_id})
    (push,) = journal.due_outbox("push", now=1e12, limit=20)
    journal.mark_sending([push.id])
    journal.outbox_sent([push], "2026-11-23T10:00:01Z")
    journal.tombstone(gone.id, withdraw=True)
    (delete,) = journal.due_outbox("delete", now=1e12, limit=10)
    journal.mark_sending([delete.id])
    journal.outbox_failed(delete, "refused")
    assert journal.retry_failed() == 2
    assert journal.get_by_id(local.id).state == j.UPLOADED  # type: ignore[union-attr]
    assert [d.baidu_id for d in journal.due_outbox("delete", now=1e12, limit=10)] == [gone.baidu_id]


def test_an_outage_release_makes_baidu_items_waiting_out_a_backoff_due_but_not_failed_ones_or_refreshes(
    journal: Journal,
) -> None:
    """A new configuration tries Baidu again at once: items deferred after failed calls carry
    no kind, so releasing an outage releases them; what no configuration fixes keeps waiting."""
    for name in ("deferred", "refused", "refresh"):
        row = journal.add(f"/w/{name}.png", "/w", 10, 20, None)
        journal.record_published(row.id, UPLOAD, f"/w/{name}.png.link.json", {"id": row.baidu_id})
    pushes = journal.due_outbox("push", now=1e12, limit=20)
    deferred, refused, refresh = pushes
    journal.mark_sending([push.id for push in pushes])
    journal.outbox_retry([deferred.id], "connection refused", 1e12)
    journal.outbox_failed(refused, "title refused")
    journal.outbox_sent([refresh], "2026-11-23T10:00:01Z", refresh={refresh.id})
    journal.refresh_later([(refresh.id, "disk full", 1e12)])
    assert journal.due_outbox("push", now=1e9, limit=20) == []
    journal.release_deferred("outage")
    assert [push.id for push in journal.due_outbox("push", now=1e9, limit=20)] == [deferred.id]
    assert [row.id for row in journal.outbox_failures()] == [refused.id]
    assert journal.due_refreshes(1e9, 20) == [] and journal.next_refresh_time() == 1e12
