"""The journal's sidecar refreshes: a push Baidu has whose sidecar does not show it yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchd.hosts.base import Uploaded
from watchd.journal import FileRow, Journal, OutboxRow, UploadResult

UPLOAD = UploadResult(
    "me", Uploaded("r1", "https://i/1.png", "https://s/1", 123, "8x8"), "ab" * 32, "2026-11-23T10:00:00Z"
)
WHEN = "2026-11-23T10:00:01Z"


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / "state")


def _sent_with_a_refresh(journal: Journal) -> tuple[FileRow, OutboxRow]:
    """A published file whose push Baidu accepted, recorded with its sidecar still to refresh."""
    row = journal.add("/w/a.png", "/w", 10, 20, None)
    journal.record_published(row.id, UPLOAD, "/w/a.png.link.json", {"id": row.baidu_id, "title": "a"})
    (push,) = journal.due_outbox("push", now=1e12, limit=20)
    journal.mark_sending([push.id])
    journal.outbox_sent([push], WHEN, {push.id})
    return row, push


def test_a_refresh_outlives_its_push_until_the_sidecar_shows_it(journal: Journal) -> None:
    row, push = _sent_with_a_refresh(journal)
    assert journal.get_by_id(row.id).pushed_at == WHEN  # type: ignore[union-attr]
    assert journal.outbox_depth("push") == 0 and journal.due_outbox("push", now=1e12, limit=20) == []
    assert journal.outbox_depth() == 1  # `sync` reports it as left to do
    assert journal.stale_sidecars("/w") == {"/w/a.png"} and journal.stale_sidecars("/other") == set()
    (refresh,) = journal.due_refreshes(now=0.0, limit=10)  # due at once: a crash leaves it to the next start
    assert (refresh.id, refresh.payload, refresh.attempts) == (push.id, None, 0)

    journal.refresh_later([(refresh.id, "No space left on device", 500.0)])
    assert journal.due_refreshes(now=499.0, limit=10) == [] and journal.next_refresh_time() == 500.0
    (again,) = journal.due_refreshes(now=500.0, limit=10)
    assert (again.attempts, again.reason) == (1, "No space left on device")  # its backoff grows

    journal.sidecars_refreshed([again.id])
    assert journal.next_refresh_time() is None and journal.outbox_depth() == 0


def test_a_deleted_files_refresh_goes_with_its_sidecar(journal: Journal) -> None:
    row, _push = _sent_with_a_refresh(journal)
    journal.tombstone(row.id, withdraw=True)
    assert journal.due_refreshes(now=1e12, limit=10) == []
    (delete,) = journal.due_outbox("delete", now=1e12, limit=10)
    assert delete.baidu_id == row.baidu_id


def test_a_sidecar_rewritten_from_its_row_settles_its_refresh(journal: Journal) -> None:
    row, _push = _sent_with_a_refresh(journal)
    journal.sidecar_refreshed(row.id)
    assert journal.due_refreshes(now=1e12, limit=10) == [] and journal.stale_sidecars("/w") == set()
