"""Unmounted, not-yet-mounted and remounted folders are never read as emptied (real tmpfs mounts);
deletions held by the guard name the command, with its config, that confirms them."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd.config import load_settings
from watchd.departures import Departures, FolderAvailability
from watchd.emulator import Emulator
from watchd.engine import Engine
from watchd.guard import DeleteGuard
from watchd.journal import FileRow, Journal


class Share:
    """A tmpfs mounted on `path`, standing for a network share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = str(path)

    def mount(self, *names: str) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "none", self.root], check=True, capture_output=True)
        for name in names:
            (self.path / name).write_bytes(name.encode())

    def umount(self) -> None:
        subprocess.run(["umount", self.root], check=True, capture_output=True)


@pytest.fixture
def share(tmp_path: Path) -> Iterator[Share]:
    """An unmounted share (its empty mount point); whatever a test mounts is unmounted after it."""
    point = tmp_path / "share"
    point.mkdir()
    share = Share(point)
    try:
        share.mount()
        share.umount()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("mounting a tmpfs needs root")
    yield share
    while os.path.ismount(point):
        subprocess.run(["umount", "-l", share.root], check=False)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal.open(tmp_path / "state")
    yield journal
    journal.close()


def known(journal: Journal, share: Share, *names: str) -> list[FileRow]:
    return [journal.add(str(share.path / name), share.root, 1, 1, None) for name in names]


def unavailable_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "watchd.departures" and "unavailable" in r.msg
    ]


def test_an_unmounted_share_is_unavailable_even_when_files_appear_under_its_mount_point(
    share: Share, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    share.mount("a.png")
    known(journal, share, "a.png")
    available = FolderAvailability(journal)
    assert available(share.root)
    share.umount()
    (share.path / "stray.png").write_bytes(b"written to the parent filesystem meanwhile")
    assert not available(share.root) and not available(share.root)
    [line] = unavailable_lines(caplog)
    assert f"mounted at {share.root} that held it is no longer mounted" in line
    assert available.remounted() == set()

    share.mount("a.png")
    assert available(share.root)
    assert available.remounted() == {share.root}, "its watches must be renewed"
    assert available.remounted() == set()


def test_a_share_not_mounted_yet_at_start_is_unavailable_until_it_is(
    share: Share, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    share.mount("a.png", "b.png")
    known(journal, share, "a.png", "b.png")
    share.umount()
    available = FolderAvailability(journal)  # a new process: it never saw the share mounted
    assert not available(share.root)
    [line] = unavailable_lines(caplog)
    assert "empty although 2 files were there" in line and f"touch {share.root}/.watchd-emptied" in line
    share.mount()
    assert not available(share.root), "an empty share is not the one the files were on"
    share.umount()
    share.mount("a.png", "b.png")
    assert available(share.root)


def test_watchds_hidden_temp_files_in_a_bare_mount_point_do_not_make_it_look_mounted(
    share: Share, journal: Journal
) -> None:
    share.mount("a.png")
    known(journal, share, "a.png")
    share.umount()
    available = FolderAvailability(journal)
    (share.path / ".a.png.link.json.watchd-tmp-1-1").write_text("")
    assert not available(share.root)
    (share.path / "a.png.link.json").write_text("{}")  # left by a deleted image: on the share
    assert available(share.root)


def test_an_empty_folder_is_available_once_its_files_vanished_or_when_it_should_be_empty(
    share: Share, journal: Journal
) -> None:
    available = FolderAvailability(journal)
    assert available(share.root), "nothing known there: nothing to lose"
    rows = known(journal, share, "a.png")
    assert not available(share.root)
    journal.mark_missing(rows[0].id, 1.0)  # deleted while watched: it was seen to go
    assert available(share.root)
    journal.mark_missing(rows[0].id, None)
    (share.path / ".watchd-emptied").write_bytes(b"")  # what the log line tells a person who emptied it
    assert available(share.root)


def test_a_share_mounted_after_start_is_reported_for_new_watches(share: Share, journal: Journal) -> None:
    available = FolderAvailability(journal)
    assert available(share.root)
    share.mount("a.png")
    assert available(share.root)
    assert available.remounted() == {share.root}


def test_a_share_unmounted_and_mounted_again_between_two_checks_is_reported(
    share: Share, journal: Journal
) -> None:
    share.mount("a.png")
    available = FolderAvailability(journal)
    assert available(share.root) and available.remounted() == set()
    share.umount()
    share.mount("a.png")  # same device number, same inodes: stat() cannot tell
    assert available(share.root)
    assert available.remounted() == {share.root}
    assert available.remounted() == set()


def test_files_that_vanished_with_their_share_are_never_due_and_come_back_with_it(
    share: Share, journal: Journal
) -> None:
    share.mount("a.png", "b.png", "c.png")
    rows = known(journal, share, "a.png", "b.png", "c.png")
    available = FolderAvailability(journal)
    departures = Departures(journal, DeleteGuard(), available, grace=0.0, clock=lambda: 100.0, config=None)
    assert available(share.root)
    share.umount()
    departures.gone(rows)  # a reconciliation that raced the unmount
    assert departures.due(200.0, force=True, in_flight=()) == []
    share.mount("a.png", "b.png", "c.png")
    assert departures.due(200.0, force=True, in_flight=()) == []
    assert journal.missing(older_than=300.0) == []


def test_a_file_deleted_from_a_mounted_share_is_still_due(share: Share, journal: Journal) -> None:
    share.mount("a.png", "b.png")
    rows = known(journal, share, "a.png", "b.png")
    available = FolderAvailability(journal)
    departures = Departures(journal, DeleteGuard(), available, grace=0.0, clock=lambda: 100.0, config=None)
    assert available(share.root)
    for path in share.path.iterdir():
        path.unlink()
    departures.gone(rows)
    assert [row.id for row in departures.due(200.0, force=True, in_flight=())] == [r.id for r in rows]


def test_unavailable_is_logged_once_per_cause(
    share: Share, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # a warning: the journal knows no file there
    available = FolderAvailability(Journal.open(tmp_path / "state"))
    share.path.rmdir()
    assert not available(share.root) and not available(share.root)
    assert len(unavailable_lines(caplog)) == 1
    share.path.mkdir()
    assert available(share.root)
    share.path.rmdir()
    assert not available(share.root)
    assert len(unavailable_lines(caplog)) == 2


def test_a_sync_over_a_share_that_is_not_mounted_ends_and_withdraws_nothing(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "share"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "state")
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(png(10, 10 + len(emulator.uploads())))
        assert Engine(load_settings(config), sleep=lambda _s: None).sync() == 0
    journal = Journal.open(tmp_path / "state")
    row = journal.get(str(folder / "a.png"))
    assert row is not None
    journal.mark_missing(row.id, 1.0)  # seen to go by a daemon killed within the grace
    journal.close()
    os.rename(folder, tmp_path / "share-content")  # the share is not mounted: a bare mount point
    folder.mkdir()
    started = time.monotonic()
    Engine(load_settings(config), sleep=lambda _s: None).sync()
    assert time.monotonic() - started < 10  # it used to wait for the share for ever
    assert not [c for c in emulator.baidu_calls() if c.endpoint == "delPic"]


def test_held_deletions_are_to_be_confirmed_with_the_config_named(tmp_path: Path, emulator: Emulator) -> None:
    """Without -c, root confirming a system service's deletions would use a journal of its own."""
    folder = tmp_path / "pics"
    folder.mkdir()
    guard = "delete_guard:\n  max_files: 1\n  max_percent: 10\n"
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s", extra=guard
    )
    for n in range(4):
        (folder / f"h{n}.png").write_bytes(png(n + 2, 3))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    for n in range(3):
        (folder / f"h{n}.png").unlink()
    held = run_cli("sync", "-c", str(config))
    assert held.returncode == 1
    (logged,) = [line for line in held.stderr.splitlines() if "vanished at once" in line]
    assert f"run `watchd confirm-deletes -c {config}`; otherwise restore the files" in logged
    status = " ".join(run_cli("status", "-c", str(config)).stdout.split())  # as wrapped to any width
    assert f"run `watchd confirm-deletes -c {config}` if they are intended" in status


def test_an_image_replaced_by_a_directory_of_its_name_is_withdrawn(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    (folder / "cat.png").write_bytes(png(10, 10))
    (folder / "dog.png").write_bytes(png(11, 11))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert len(emulator.baidu_index()) == 2
    (folder / "cat.png").unlink()
    (folder / "cat.png").mkdir()  # a directory now has the name: the image is still gone
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert len(emulator.baidu_index()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["cat.png", "dog.png", "dog.png.link.json"]


def test_a_deleted_sub_folder_with_a_rule_file_is_withdrawn_without_a_warning_about_permissions(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "w"
    album = folder / "album"
    album.mkdir(parents=True)
    (album / ".watchd.yaml").write_text('title: "{stem} in my album"\n', encoding="utf-8")
    daemon = start_daemon(
        write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    )
    (album / "s.png").write_bytes(png(10, 10))
    wait_for(lambda: len(emulator.baidu_index()) == 1, timeout=20)
    assert sidecar_of(album / "s.png").exists()
    subprocess.run(["rm", "-rf", str(album)], check=True)
    wait_for(lambda: emulator.baidu_index() == {}, timeout=20)
    assert (
        "cannot read directory" not in daemon.log() and "WARNING" not in daemon.log().split("watching", 1)[1]
    )
    assert daemon.stop() == 0
