"""Watched folders that are replaced, deleted and re-created, or partly unreadable, found in
review: the real daemon, real inotify on real directories, the emulator on loopback."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, StartDaemon, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd.config import load_settings
from watchd.departures import FolderAvailability
from watchd.emulator import Emulator
from watchd.journal import Journal
from watchd.upkeep import ROOT_CHECK_INTERVAL, FolderUpkeep
from watchd.watcher import Fact, FolderBack, Rescan

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


def _watched(tmp_path: Path, emulator: Emulator, extra: str = "") -> tuple[Path, Path, Path]:
    """A watched folder `w`, the state directory and the config."""
    folder = tmp_path / "w"
    folder.mkdir()
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=state, extra=extra)
    return folder, state, config


def _published(folder: Path, *names: str) -> None:
    wait_for(lambda: all(sidecar_of(folder / name).exists() for name in names), timeout=20)


def test_a_folder_swapped_for_another_directory_is_watched_and_reconciled(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, _state, config = _watched(tmp_path, emulator)
    daemon = start_daemon(config)
    (folder / "a.png").write_bytes(png(10, 10))
    _published(folder, "a.png")
    replacement = tmp_path / "w.new"
    replacement.mkdir()
    (replacement / "b.png").write_bytes(png(11, 11))  # already there: only a reconciliation finds it
    os.rename(folder, tmp_path / "w.old")
    os.rename(replacement, folder)
    _published(folder, "b.png")
    (folder / "c.png").write_bytes(png(12, 12))  # only a watch on the new directory hears it
    _published(folder, "c.png")
    assert "is another directory now" in daemon.log()
    assert daemon.stop() == 0


def test_a_folder_deleted_and_recreated_is_watched_again(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, _state, config = _watched(tmp_path, emulator)
    daemon = start_daemon(config)
    (folder / "a.png").write_bytes(png(10, 10))
    _published(folder, "a.png")
    shutil.rmtree(folder)
    folder.mkdir()
    wait_for(lambda: "is available again" in daemon.log())
    (folder / "b.png").write_bytes(png(11, 11))
    _published(folder, "b.png")
    assert "restore or remount it" not in daemon.log()
    assert daemon.stop() == 0


def test_a_folder_configured_before_it_exists_is_a_warning_once_and_watched_when_created(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "disk" / "photos"
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "state")
    daemon = start_daemon(config)
    log = daemon.log()
    assert f"watched folder {folder} is unavailable: it does not exist; it is watched within" in log
    assert log.count(str(folder)) == 1 and "ERROR" not in log
    folder.mkdir(parents=True)
    wait_for(lambda: f"watched folder {folder} is available again" in daemon.log(), timeout=30)
    (folder / "a.png").write_bytes(png(10, 10))
    _published(folder, "a.png")
    assert daemon.stop() == 0


def test_deletions_held_while_a_folder_was_swapped_are_cancelled_when_it_is_swapped_back(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    guard = "delete_guard:\n  max_files: 1\n  max_percent: 10\n"
    folder, state, config = _watched(tmp_path, emulator, extra=guard)
    daemon = start_daemon(config)
    for n, name in enumerate(("a.png", "b.png", "c.png")):
        (folder / name).write_bytes(png(10 + n, 10))
    _published(folder, "a.png", "b.png", "c.png")
    os.rename(folder, tmp_path / "w.orig")
    folder.mkdir()
    (folder / "other.png").write_bytes(png(20, 20))  # not empty: the folder is available
    wait_for(lambda: held(state) == 3, timeout=20)
    os.rename(folder, tmp_path / "w.other")
    os.rename(tmp_path / "w.orig", folder)
    wait_for(lambda: held(state) == 0, timeout=20)
    wait_for(lambda: [c.endpoint for c in emulator.baidu_calls()].count("delPic") == 1, timeout=20)
    withdrawn = [item for c in emulator.baidu_calls() if c.endpoint == "delPic" for item in c.items]
    assert len(withdrawn) == 1  # other.png, gone with the folder swapped out; a, b, c are back
    with sqlite3.connect(state / "journal.sqlite3") as db:
        vanished = db.execute("SELECT path FROM files WHERE missing_since IS NOT NULL").fetchall()
    assert vanished == []
    assert daemon.stop() == 0


def held(state: Path) -> int:
    with sqlite3.connect(state / "journal.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM files WHERE delete_held = 1").fetchone()[0])


class _NobodyDaemon(Daemon):
    """`watchd run` as the user nobody: as root, nothing can be made unreadable to oneself."""

    def start(self) -> Daemon:
        assert SETPRIV is not None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        as_nobody = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable]
        self.process = subprocess.Popen(
            [*as_nobody, "-m", "watchd", "run", "-c", str(self.config), "--log-format", "json"],
            stdout=self._log,
            stderr=self._log,
            env=self.env,
        )
        wait_for(lambda: "watching" in self.log(), timeout=20)
        return self


@pytest.fixture
def nobodys_dir() -> Iterator[Path]:
    """A directory the user nobody owns and can reach (pytest's tmp_path is root's alone)."""
    if os.geteuid() != 0 or SETPRIV is None:
        pytest.skip("needs root and setpriv(1), to run watchd as a user that some files are unreadable to")
    probe = [
        SETPRIV,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        sys.executable,
        "-c",
        "import watchd",
    ]
    if (
        subprocess.run(probe, capture_output=True, check=False).returncode != 0
    ):  # e.g. a checkout in a 0700 dir
        pytest.skip(f"the user nobody cannot run {sys.executable} with watchd from this checkout")
    base = Path(tempfile.mkdtemp(prefix="watchd-nobody-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_directory_and_a_file_unreadable_at_start_are_taken_in_once_their_permissions_are_fixed(
    nobodys_dir: Path, emulator: Emulator
) -> None:
    folder, _state, config = _watched(nobodys_dir, emulator)
    (folder / "sub").mkdir()
    (folder / "sub" / "a.png").write_bytes(png(10, 10))
    (folder / "noread.png").write_bytes(png(11, 11))
    for path in (nobodys_dir, *nobodys_dir.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    (folder / "noread.png").chmod(0o000)
    (folder / "sub").chmod(0o000)
    daemon = _NobodyDaemon(config, nobodys_dir / "daemon.log", {"HOME": str(nobodys_dir)}).start()
    try:
        wait_for(lambda: f"cannot read directory {folder / 'sub'}" in daemon.log())
        wait_for(lambda: "taken in again once they are fixed" in daemon.log())
        (folder / "sub").chmod(0o755)
        (folder / "noread.png").chmod(0o644)
        _published(folder, "noread.png", "sub/a.png")
        (folder / "sub" / "new.png").write_bytes(png(12, 12))  # heard only if sub is watched now
        _published(folder, "sub/new.png")
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.stop()


def test_a_file_whose_permissions_are_fixed_between_two_syncs_is_taken_in_by_the_second(
    nobodys_dir: Path, emulator: Emulator
) -> None:
    """A chmod changes neither size nor mtime, so reconciliation looks at such files again."""
    folder, _state, config = _watched(nobodys_dir, emulator)
    (folder / "noread.png").write_bytes(png(11, 11))
    (folder / "still.png").write_bytes(png(12, 12))
    for path in (nobodys_dir, *nobodys_dir.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    (folder / "noread.png").chmod(0o000)
    (folder / "still.png").chmod(0o000)
    assert SETPRIV is not None
    sync = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable]
    sync += ["-m", "watchd", "sync", "-c", str(config)]
    env = {**os.environ, "HOME": str(nobodys_dir)}
    first = subprocess.run(sync, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 1 and "sync: 0 published, 2 failed" in first.stderr, first.stderr
    assert f"run `watchd retry {folder / 'still.png'} -c {config}`" in first.stderr  # as it can be pasted
    (folder / "noread.png").chmod(0o644)
    second = subprocess.run(sync, capture_output=True, text=True, env=env, check=False)
    assert second.returncode == 0 and "sync: 1 published, 0 failed" in second.stderr, second.stderr
    assert sidecar_of(folder / "noread.png").exists() and not sidecar_of(folder / "still.png").exists()
    assert [u.name for u in emulator.uploads()] == ["noread.png"]


def test_renewing_the_watches_for_one_folder_reconciles_the_others(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Renewing stops every folder's watches for a moment; what the other folders saw then is
    found by reconciling them (the swapped folder itself comes back as FolderBack)."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": one}, {"path": two}], state_dir=tmp_path / "state"
    )
    facts: list[Fact] = []
    now = [1000.0]
    journal = Journal.open(tmp_path / "state")
    upkeep = FolderUpkeep(load_settings(config), FolderAvailability(journal), facts.append, lambda: now[0])
    upkeep.restart()
    try:
        upkeep.tick(now[0])
        facts.clear()
        os.rename(one, tmp_path / "one.old")
        one.mkdir()
        now[0] += ROOT_CHECK_INTERVAL
        upkeep.tick(now[0])
        assert FolderBack(str(one)) in facts
        assert Rescan(str(two)) in facts
    finally:
        upkeep.stop()
        journal.close()
