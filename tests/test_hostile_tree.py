"""What someone who can write in a watched folder plants there must not lead watchd out of it,
hang it or fill its memory: a directory replaced by a symlink, links and FIFOs in a rule file's
or a temp file's place, link loops in a polled folder, control characters in YAML. Found by the
security audit; the real daemon and `watchd sync`, real files, the emulator on loopback."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd import intree
from watchd import sidecar as sidecar_module
from watchd.emulator import Emulator
from watchd.imagefile import load_image
from watchd.sidecar import write_atomic


def test_a_directory_replaced_by_a_symlink_leads_nothing_outside_the_folder(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "watch"
    (folder / "album").mkdir(parents=True)
    (folder / ".watchd.yaml").write_text('sidecar: {name: "{stem}", format: txt}\n')
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes").write_text("not watchd's\n")  # what the sidecar of notes.png is called
    (victim / "other.png").write_bytes(png(9, 9))
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    daemon = start_daemon(config)
    (folder / "album" / "notes.png").write_bytes(png(3, 3))
    wait_for(lambda: (folder / "album" / "notes").exists())
    wait_for(lambda: emulator.baidu_index())

    (folder / "album").rename(tmp_path / "away")  # the album leaves the folder...
    (folder / "album").symlink_to(victim)  # ...and a link to somewhere else takes its place
    (victim / "new.png").write_bytes(png(5, 5))
    wait_for(lambda: not emulator.baidu_index(), timeout=20)  # moved out: withdrawn
    assert daemon.stop() == 0
    assert (victim / "notes").read_text() == "not watchd's\n", "removed outside the folder"
    assert sorted(os.listdir(victim)) == ["new.png", "notes", "other.png"], "nothing written there"
    assert [upload.name for upload in emulator.uploads()] == ["notes.png"], "nothing uploaded from there"
    assert (tmp_path / "away" / "notes").exists()  # the sidecar went out with its album


@pytest.mark.parametrize("plant", ["fifo", "link", "huge", "nul"])
def test_a_planted_rule_file_is_a_reported_problem_that_blocks_nothing_else(
    tmp_path: Path, emulator: Emulator, plant: str
) -> None:
    folder = tmp_path / "watch"
    for sub in ("a_ok", "d", "z_ok"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / f"{sub}.png").write_bytes(png(len(sub) + 3, 4))
    rule_file = folder / "d" / ".watchd.yaml"
    if plant == "fifo":
        os.mkfifo(rule_file)  # reading it would wait for a writer for ever
    elif plant == "link":
        secret = tmp_path / "elsewhere.yaml"
        secret.write_text("title: the root password is hunter2\n")
        rule_file.symlink_to(secret)
    elif plant == "huge":
        with rule_file.open("wb") as f:
            f.truncate(2 * 1024**3)  # a 2 GB sparse file
    else:
        rule_file.write_bytes(b"tags: [a]\n\x00\n")  # PyYAML refuses it before parsing
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    result = run_cli("sync", "-c", str(config), timeout=60)
    assert result.returncode == 1 and "internal error" not in result.stderr
    assert (
        sidecar_of(folder / "a_ok" / "a_ok.png").exists()
        and sidecar_of(folder / "z_ok" / "z_ok.png").exists()
    )
    assert not sidecar_of(folder / "d" / "d.png").exists()
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    (failure,) = status["recent_failures"]
    assert str(rule_file) in failure["reason"] and "hunter2" not in json.dumps(status)
    assert all("hunter2" not in item["title"] for item in emulator.baidu_index().values())


def test_a_control_character_in_the_config_is_a_clear_error_not_a_traceback(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": tmp_path}], state_dir=tmp_path / "s")
    config.write_text(config.read_text() + "# a stray \x01\n")
    result = run_cli("check", "-c", str(config))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "bad YAML" in result.stderr and "#x0001" in result.stderr


def test_a_polled_folder_does_not_walk_directory_links(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "watch"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "loop").symlink_to(folder)  # walked, a loop without end
    (folder / "up").symlink_to(tmp_path)  # and one that leads to the folder's parent
    (folder / "out").symlink_to(outside)
    spec = {"path": folder, "poll": True, "poll_interval": 0.3}
    config = write_config(tmp_path / "c.yaml", emulator, [spec], state_dir=tmp_path / "s")
    daemon = start_daemon(config)
    (outside / "far.png").write_bytes(png(6, 6))
    (folder / "near.png").write_bytes(png(4, 4))
    wait_for(lambda: sidecar_of(folder / "near.png").exists())
    (folder / "later.png").write_bytes(png(5, 5))  # the poller goes on after its first look
    wait_for(lambda: sidecar_of(folder / "later.png").exists())
    assert daemon.stop() == 0
    assert sorted(upload.name for upload in emulator.uploads()) == ["later.png", "near.png"]
    assert os.listdir(outside) == ["far.png"]


def test_a_file_planted_at_a_temp_files_name_is_passed_over_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sidecar_module, "_temp_numbers", itertools.count())
    monkeypatch.setattr(sidecar_module.secrets, "token_hex", lambda _n: "guess")
    target = tmp_path / "cat.png.link.json"
    planted = tmp_path / f".cat.png.link.json.watchd-tmp-{os.getpid()}-0-guess"
    os.mkfifo(planted)  # opened for writing, it would block until someone reads
    write_atomic(target, "text\n")
    assert target.read_text() == "text\n" and planted.exists()


def _album_and_victim(tmp_path: Path) -> tuple[Path, Path, Callable[[], None]]:
    """A watched album, a directory outside, and what swaps the album for a link to it
    (the album itself is moved to `tmp_path / "away"`)."""
    album, victim = tmp_path / "w" / "album", tmp_path / "victim"
    album.mkdir(parents=True)
    victim.mkdir()

    def swap() -> None:
        album.rename(tmp_path / "away")
        album.symlink_to(victim)

    return album, victim, swap


def test_a_directory_swapped_for_a_symlink_midway_is_still_the_one_written_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No check-then-act: the directory is held by a descriptor from the start."""
    album, victim, swap = _album_and_victim(tmp_path)
    create_temp = sidecar_module._create_temp

    def create_then_swap(name: str, directory: int) -> tuple[int, str]:
        created = create_temp(name, directory)
        swap()  # between the temp file and its rename
        return created

    monkeypatch.setattr(sidecar_module, "_create_temp", create_then_swap)
    write_atomic(album / "cat.png.link.json", "text\n")
    assert os.listdir(victim) == []
    assert (tmp_path / "away" / "cat.png.link.json").read_text() == "text\n"


def test_an_image_is_read_from_its_directory_not_through_a_link_swapped_in_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    album, victim, swap = _album_and_victim(tmp_path)
    (album / "x.png").write_bytes(png(3, 3))
    (victim / "x.png").write_bytes(png(7, 7))
    real_directory = intree.real_directory

    @contextlib.contextmanager
    def held_then_swapped(path: str) -> Iterator[int]:
        with real_directory(path) as directory:
            swap()  # after the walk, before the open
            yield directory

    monkeypatch.setattr(intree, "real_directory", held_then_swapped)
    assert load_image(album / "x.png").info.width == 3  # the file it found, not the victim's
