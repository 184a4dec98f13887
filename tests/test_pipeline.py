"""The core pipeline end to end: the real daemon process, real inotify, the emulator on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import gif, jpeg, png
from watchd import pipeline as pipeline_module
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine

NAMES = [
    "sunset.png",
    "with space.jpg",
    "кошка.png",
    "猫咪.gif",
    "sub/deeper/日落 photo.jpeg",
    "sub/мост.jpg",
    "a.png",
    "UPPER.PNG",
    "dots.in.name.gif",
    "sub/x-y_z.png",
    "émile.jpg",
    "tab\tname.png",
    "quote'name.gif",
    "long" + "n" * 120 + ".png",
    "sub/1.jpg",
]


def image_bytes(name: str, n: int) -> bytes:
    suffix = Path(name).suffix.lower()
    if suffix == ".gif":
        return gif(3 + n, 2 + n)
    if suffix in (".jpg", ".jpeg"):
        return jpeg(4 + n, 3 + n)
    return png(5 + n, 4 + n)


def drop(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def status(config: Path) -> dict:
    result = run_cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def two_folders(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path, Path]:
    public = tmp_path / "public"
    guest = tmp_path / "guest"
    public.mkdir()
    guest.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        [
            {"path": public, "rules": {"album": "srXiv43", "tags": ["a", "b"]}},
            {"path": guest, "rules": {"host": "guest", "baidu": False, "sidecar": {"format": "json"}}},
        ],
        state_dir=tmp_path / "state",
    )
    return config, public, guest


def test_thirty_images_each_uploaded_once_with_the_folders_auth_and_album(
    two_folders: tuple[Path, Path, Path],
    emulator: Emulator,
    start_daemon: StartDaemon,
) -> None:
    config, public, guest = two_folders
    daemon = start_daemon(config)
    expected: dict[str, tuple[Path, str]] = {}
    for n, name in enumerate(NAMES * 2):
        folder = public if n < len(NAMES) else guest
        data = image_bytes(name, n)
        path = folder / name
        drop(path, data)
        expected[hashlib.sha256(data).hexdigest()] = (path, "account" if folder == public else "guest")
    assert len(expected) == 30

    wait_for(lambda: all(sidecar_of(p).exists() for p, _ in expected.values()), timeout=30)
    uploads = emulator.uploads()
    assert sorted(u.sha256 for u in uploads) == sorted(expected), "exactly one upload per image"
    for upload in uploads:
        path, auth = expected[upload.sha256]
        assert upload.auth == auth
        assert upload.album == ("srXiv43" if auth == "account" else None)
        assert upload.name == path.name
        sidecar = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
        assert sidecar["link"] == upload.link
        assert sidecar["short_link"] == upload.short_link
        assert sidecar["sha256"] == upload.sha256
        assert sidecar["size"] == path.stat().st_size
        assert httpx.get(upload.link).content == path.read_bytes()
    assert daemon.stop() == 0


def test_restart_uploads_nothing_again_and_picks_up_files_added_while_stopped(
    two_folders: tuple[Path, Path, Path],
    emulator: Emulator,
    start_daemon: StartDaemon,
) -> None:
    config, public, _guest = two_folders
    first = [public / f"first-{n}.png" for n in range(5)]
    for n, path in enumerate(first):
        drop(path, png(10 + n, 10))
    daemon = start_daemon(config)
    wait_for(lambda: all(sidecar_of(p).exists() for p in first))
    assert daemon.stop() == 0
    assert len(emulator.uploads()) == 5

    later = [public / "later" / f"later-{n}.gif" for n in range(3)]
    for n, path in enumerate(later):
        drop(path, gif(20 + n, 5))
    os.utime(first[0])  # a touch changes mtime, not content: no re-upload
    daemon = start_daemon(config)
    wait_for(lambda: all(sidecar_of(p).exists() for p in later))
    time.sleep(1.0)
    assert len(emulator.uploads()) == 8
    assert daemon.stop() == 0


def test_bad_inputs_are_recorded_with_reasons_and_do_not_stop_good_images(
    two_folders: tuple[Path, Path, Path],
    emulator: Emulator,
    start_daemon: StartDaemon,
) -> None:
    config, public, _guest = two_folders
    daemon = start_daemon(config)
    drop(public / "empty.png", b"")
    drop(public / "notes.jpg", b"these are my notes, not a picture\n" * 10)
    drop(public / "huge.png", png(8, 8, extra_bytes=11 * 1024 * 1024))
    drop(public / "truncated.png", png(64, 64, extra_bytes=5000)[:-200])
    drop(public / "secret.png", png(9, 9))
    os.chmod(public / "secret.png", 0)
    drop(public / "good.png", png(12, 12))

    wait_for(lambda: sidecar_of(public / "good.png").exists(), timeout=20)

    def reasons() -> dict[str, str]:
        failures = status(config)["recent_failures"]
        return {Path(f["path"]).name: f["reason"] for f in failures if f["state"] == "failed"}

    expected_reason_words = {
        "empty.png": "empty",
        "notes.jpg": "not",
        "huge.png": "10 MB",
        "truncated.png": "truncated",
    }
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        expected_reason_words["secret.png"] = "cannot read"
    found = wait_for(lambda: (r := reasons()) and set(expected_reason_words) <= set(r) and r, timeout=20)
    for name, word in expected_reason_words.items():
        assert word.lower() in found[name].lower(), (name, found[name])
    uploaded_names = {u.name for u in emulator.uploads()}
    assert "good.png" in uploaded_names
    assert not uploaded_names & set(expected_reason_words)
    assert daemon.alive()
    drop(public / "after.png", png(13, 13))
    wait_for(lambda: sidecar_of(public / "after.png").exists())
    assert daemon.stop() == 0


def test_a_file_written_slowly_in_chunks_is_uploaded_once_with_its_final_bytes(
    two_folders: tuple[Path, Path, Path],
    emulator: Emulator,
    start_daemon: StartDaemon,
) -> None:
    config, public, _guest = two_folders
    daemon = start_daemon(config)
    data = png(200, 100, extra_bytes=3 * 1024 * 1024)
    chunks = [data[i : i + len(data) // 12 + 1] for i in range(0, len(data), len(data) // 12 + 1)]
    target = public / "slow.png"
    with open(target, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
            time.sleep(3.0 / len(chunks))
    appended = public / "appended.png"
    for chunk in chunks:  # a writer that reopens the file for every chunk
        with open(appended, "ab") as out:
            out.write(chunk)
        time.sleep(3.0 / len(chunks))
    wait_for(lambda: sidecar_of(target).exists() and sidecar_of(appended).exists(), timeout=20)
    time.sleep(1.5)
    uploads = emulator.uploads()
    assert [u.sha256 for u in uploads] == [hashlib.sha256(data).hexdigest()] * 2
    assert daemon.stop() == 0


def test_files_arriving_by_rename_or_moved_in_are_uploaded(
    two_folders: tuple[Path, Path, Path],
    emulator: Emulator,
    tmp_path: Path,
    start_daemon: StartDaemon,
) -> None:
    config, public, _guest = two_folders
    daemon = start_daemon(config)
    temp = public / ".x.png.part"
    temp.write_bytes(png(30, 30))
    os.rename(temp, public / "x.png")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg(40, 30))
    shutil.move(outside, public / "moved-in.jpg")
    wait_for(lambda: sidecar_of(public / "x.png").exists() and sidecar_of(public / "moved-in.jpg").exists())
    assert sorted(u.name for u in emulator.uploads()) == ["moved-in.jpg", "x.png"]
    assert not (public / ".x.png.part.link.json").exists()
    assert daemon.stop(signal.SIGINT) == 0


def test_sync_does_one_pass_and_reports_failures_in_its_exit_code(
    two_folders: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, guest = two_folders
    drop(public / "one.png", png(3, 3))
    drop(guest / "two.gif", gif(3, 3))
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert sidecar_of(public / "one.png").exists() and sidecar_of(guest / "two.gif").exists()
    assert "2 published" in result.stderr
    drop(public / "broken.png", b"\x89PNG\r\n\x1a\n not really")
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 1
    assert len(emulator.uploads()) == 2


def test_reconciliation_restores_lost_sidecars_and_clears_stale_temp_files(
    two_folders: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, _guest = two_folders
    drop(public / "keep.png", png(6, 6))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    before = sidecar_of(public / "keep.png").read_text(encoding="utf-8")
    sidecar_of(public / "keep.png").unlink()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    stale = public / f".keep.png.link.json.watchd-tmp-{dead_pid}-abc123"
    stale.write_text("{half a sidecar")
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert sidecar_of(public / "keep.png").read_text(encoding="utf-8") == before
    assert not stale.exists()
    assert len(emulator.uploads()) == 1


def test_a_broken_rule_file_fails_its_files_until_it_is_fixed(
    two_folders: tuple[Path, Path, Path], emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, public, _guest = two_folders
    (public / "albums").mkdir()
    rule_file = public / "albums" / ".watchd.yaml"
    rule_file.write_text("album: [not, a, string\n", encoding="utf-8")
    daemon = start_daemon(config)
    drop(public / "albums" / "held.png", png(7, 7))
    drop(public / "elsewhere.png", png(8, 8))
    wait_for(lambda: sidecar_of(public / "elsewhere.png").exists())
    failures = wait_for(lambda: status(config)["recent_failures"])
    assert ".watchd.yaml" in failures[0]["reason"] and failures[0]["path"].endswith("held.png")
    rule_file.write_text("album: fixed01\n", encoding="utf-8")
    wait_for(lambda: sidecar_of(public / "albums" / "held.png").exists())
    assert [u.album for u in emulator.uploads() if u.name == "held.png"] == ["fixed01"]
    assert daemon.alive() and daemon.stop() == 0


def test_a_bug_after_the_upload_does_not_upload_again(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "cat.png").write_bytes(png(9, 9))
    config = write_config(tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    now = [time.time()]

    def broken_render(*_args: object) -> str:
        raise RuntimeError("a bug in a sidecar renderer")

    monkeypatch.setattr(pipeline_module, "render_sidecar", broken_render)
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 1
    assert len(emulator.uploads()) == 1 and not sidecar_of(folder / "cat.png").exists()
    monkeypatch.undo()
    now[0] += 61  # the internal error is retried after 60 s
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 0
    assert len(emulator.uploads()) == 1  # the sidecar was written from the recorded upload
    assert json.loads(sidecar_of(folder / "cat.png").read_text())["link"] == emulator.uploads()[0].link


def test_images_the_rules_exclude_are_not_counted_as_new_at_each_reconciliation(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    rules = {"exclude": ["IMG_*"]}
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder, "rules": rules}], state_dir=tmp_path / "s"
    )
    (folder / "IMG_0001.png").write_bytes(png(10, 10))
    (folder / "IMG_0002.png").write_bytes(png(11, 10))
    (folder / "keep.png").write_bytes(png(12, 10))
    first = run_cli("sync", "-c", str(config))
    assert first.returncode == 0 and "1 new or changed files" in first.stderr, first.stderr
    second = run_cli("sync", "-c", str(config))
    assert second.returncode == 0 and "0 new or changed files" in second.stderr, second.stderr
    assert [u.name for u in emulator.uploads()] == ["keep.png"]
