"""The watcher's pure parts and its fallbacks: filesystem detection, event translation, polling."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from watchdog.events import (
    DirAttribEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
)
from watchdog.observers.inotify import InotifyObserver

from tests.conftest import wait_for
from watchd import watcher
from watchd.watcher import (
    Arrived,
    Changed,
    DirArrived,
    DirChanged,
    DirGone,
    Fact,
    Finished,
    FolderWatcher,
    Gone,
    Moved,
    Rescan,
    WatchSpec,
    filesystem_type,
    translate,
)

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/nas rw,relatime shared:20 - nfs4 nas:/export rw
41 22 0:36 / /mnt/smb\\040share rw - cifs //host/share rw
42 22 0:37 / /home/me/gdrive rw - fuse.rclone gdrive: rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/srv/photos", "ext4"),
        ("/mnt/nas/photos/2026", "nfs4"),
        ("/mnt/smb share/x", "cifs"),
        ("/home/me/gdrive/pics", "fuse.rclone"),
        ("/mnt/nasty", "ext4"),
    ],
)
def test_the_filesystem_of_a_path_comes_from_the_longest_mount_point(
    tmp_path: Path, path: str, fstype: str
) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert filesystem_type(Path(path), str(mountinfo)) == fstype


@pytest.mark.parametrize(
    ("event", "fact"),
    [
        (FileClosedEvent("/w/a.png"), Finished("/w/a.png")),
        (FileCreatedEvent("/w/a.png"), Changed("/w/a.png")),
        (FileDeletedEvent("/w/a.png"), Gone("/w/a.png")),
        (FileMovedEvent("/w/.a.part", "/w/a.png"), Moved("/w/.a.part", "/w/a.png")),
        (FileMovedEvent("", "/w/in.png"), Arrived("/w/in.png")),
        (FileMovedEvent("/w/out.png", ""), Gone("/w/out.png")),
        (DirMovedEvent("", "/w/sub"), DirArrived("/w/sub")),
        (DirMovedEvent("/w/sub", ""), DirGone("/w/sub")),
        (DirDeletedEvent("/w/sub"), DirGone("/w/sub")),
        (DirMovedEvent("/w/a", "/w/b"), None),
        (FileAttribEvent("/w/a.png"), Changed("/w/a.png")),
        (DirAttribEvent("/w/sub"), DirChanged("/w/sub")),
    ],
)
def test_events_become_facts(event: object, fact: Fact | None) -> None:
    assert translate(event) == fact  # type: ignore[arg-type]


def test_an_exhausted_inotify_watch_limit_falls_back_to_polling_with_the_sysctl_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_watches_left(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyObserver, "schedule", no_watches_left)
    facts: list[Fact] = []
    folder_watcher = FolderWatcher([WatchSpec(tmp_path, True, poll_interval=0.2)], facts.append)
    with caplog.at_level(logging.ERROR):
        folder_watcher.start()
    try:
        assert folder_watcher.polled == [tmp_path]
        assert "fs.inotify.max_user_watches=" in caplog.text
        (tmp_path / "polled.png").write_bytes(b"x")
        wait_for(lambda: Changed(str(tmp_path / "polled.png")) in facts, timeout=5)
    finally:
        folder_watcher.stop()


def test_network_filesystems_are_polled_automatically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher, "filesystem_type", lambda _path: "nfs4")
    folder_watcher = FolderWatcher([WatchSpec(tmp_path, True)], lambda _fact: None)
    folder_watcher.start()
    try:
        assert folder_watcher.polled == [tmp_path] and folder_watcher.inotified == []
    finally:
        folder_watcher.stop()


def test_a_missing_folder_is_unavailable_not_an_error(tmp_path: Path) -> None:
    folder_watcher = FolderWatcher([WatchSpec(tmp_path / "gone", True)], lambda _fact: None)
    folder_watcher.start()
    folder_watcher.stop()
    assert folder_watcher.unavailable == [tmp_path / "gone"]


def test_a_folder_that_vanishes_while_its_watch_is_added_is_unavailable_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swapped_meanwhile(*_args: object, **_kwargs: object) -> None:  # `mv w w.old && mv w.new w`
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(InotifyObserver, "schedule", swapped_meanwhile)
    folder_watcher = FolderWatcher([WatchSpec(tmp_path, True)], lambda _fact: None)
    folder_watcher.start()
    folder_watcher.stop()
    assert folder_watcher.unavailable == [tmp_path]


def test_a_storm_of_overflows_asks_for_one_rescan(tmp_path: Path) -> None:
    facts: list[Fact] = []
    folder_watcher = FolderWatcher([WatchSpec(tmp_path, True)], facts.append)
    folder_watcher.start()
    try:
        for _ in range(5):
            logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; events lost")
    finally:
        folder_watcher.stop()
    assert facts.count(Rescan(str(tmp_path))) == 1


def test_a_chmod_is_heard(tmp_path: Path) -> None:
    """A chmod may make an unreadable file or directory readable."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(b"x")
    facts: list[Fact] = []
    folder_watcher = FolderWatcher([WatchSpec(tmp_path, True)], facts.append)
    folder_watcher.start()
    try:
        os.chmod(tmp_path / "a.png", 0o600)
        os.chmod(tmp_path / "sub", 0o700)
        wait_for(
            lambda: Changed(str(tmp_path / "a.png")) in facts and DirChanged(str(tmp_path / "sub")) in facts
        )
    finally:
        folder_watcher.stop()
