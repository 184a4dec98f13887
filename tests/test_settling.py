"""The settler on real files with a hand-turned clock: a file is taken in only once it has
stopped changing for `settle` seconds."""

from __future__ import annotations

import os
import time
from pathlib import Path

from watchd.settling import DOWNLOAD_PATIENCE, Settler


def _seen_changing(tmp_path: Path) -> tuple[Settler, Path]:
    """A settler (settle 2 s, its clock at 100) that has seen a fresh 10-byte file change."""
    settler = Settler(2.0, lambda: 100.0)
    image = tmp_path / "a.png"
    image.write_bytes(b"x" * 10)
    settler.changed(str(image))
    return settler, image


def test_a_file_that_stays_still_settles_after_the_settle_time(tmp_path: Path) -> None:
    settler, image = _seen_changing(tmp_path)
    assert settler and settler.deadlines() == [102.0]
    assert settler.settled(101.9) == []
    assert settler.settled(102.0) == [str(image)]
    assert not settler and settler.settled(200.0) == []


def test_a_file_still_growing_waits_another_settle_time(tmp_path: Path) -> None:
    settler, image = _seen_changing(tmp_path)
    image.write_bytes(b"x" * 20)
    assert settler.settled(102.0) == []
    assert settler.deadlines() == [104.0]
    assert settler.settled(104.0) == [str(image)]


def test_a_touched_file_of_the_same_size_is_still_changing(tmp_path: Path) -> None:
    settler, image = _seen_changing(tmp_path)
    info = image.stat()
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    assert settler.settled(102.0) == []


def test_vanished_and_forgotten_files_are_dropped(tmp_path: Path) -> None:
    settler, gone = _seen_changing(tmp_path)
    forgotten = tmp_path / "forgotten.png"
    forgotten.write_bytes(b"x")
    settler.changed(str(forgotten))
    gone.unlink()
    settler.forget(str(forgotten))
    assert settler.settled(102.0) == []
    assert not settler
    settler.changed(str(gone))  # a change reported for a file already gone is not kept
    assert not settler


def test_an_empty_file_waits_while_a_download_into_it_is_in_progress(tmp_path: Path) -> None:
    """Firefox creates x.png empty next to x.png.part and renames the .part over it at the end."""
    settler = Settler(2.0, lambda: 100.0)
    placeholder = tmp_path / "x.png"
    placeholder.write_bytes(b"")
    (tmp_path / "x.png.part").write_bytes(b"half an image")
    settler.changed(str(placeholder))
    assert settler.settled(102.0) == []
    assert settler.deadlines() == [104.0]
    (tmp_path / "x.png.part").unlink()  # the download was cancelled: the empty file is reported
    assert settler.settled(104.0) == [str(placeholder)]


def test_a_download_left_unwritten_for_long_holds_its_empty_file_back_no_more(tmp_path: Path) -> None:
    """A .part left by a crashed or long-paused download: `watchd sync` must not wait for it."""
    settler = Settler(2.0, lambda: 100.0)
    placeholder = tmp_path / "x.png"
    placeholder.write_bytes(b"")
    part = tmp_path / "x.png.part"
    part.write_bytes(b"half an image")
    written = time.time() - DOWNLOAD_PATIENCE - 1
    os.utime(part, (written, written))
    settler.changed(str(placeholder))
    assert settler.settled(102.0) == [str(placeholder)]
