"""The mass-delete guard: bursts of deletions are held until a person confirms them."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd.emulator import Emulator
from watchd.guard import DeleteGuard
from watchd.journal import Journal


def test_the_guard_holds_only_bursts_over_both_caps(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    rows = [journal.add(f"/w/{n}.png", "/w", 1, 1, None) for n in range(200)]
    now = [1000.0]
    guard = DeleteGuard(max_files=50, max_percent=20, window=600, clock=lambda: now[0])
    allowed, held = guard.admit(rows[:40], lambda _root: 200)
    assert (len(allowed), len(held)) == (40, 0)
    allowed, held = guard.admit(rows[40:60], lambda _root: 200)  # 60 in the window: > 50 and 30 %
    assert (len(allowed), len(held)) == (0, 20)
    allowed, held = guard.admit(rows[40:60], lambda _root: 10_000)  # 60 of 10,000 is 0.6 %
    assert (len(allowed), len(held)) == (20, 0)
    now[0] += 601  # the window has passed
    allowed, held = guard.admit(rows[60:100], lambda _root: 200)
    assert (len(allowed), len(held)) == (40, 0)


def published_then_mostly_deleted(
    tmp_path: Path, emulator: Emulator, total: int, deleted: int
) -> tuple[Path, list[Path]]:
    """A folder of `total` published images of which `deleted` vanish; returns (config, files)."""
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    files = [folder / f"m{n:03d}.png" for n in range(total)]
    for n, path in enumerate(files):
        path.write_bytes(png(n + 1, 2))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    for path in files[:deleted]:
        path.unlink()
    held = run_cli("sync", "-c", str(config))
    assert held.returncode == 1, "deletions waiting for a person are work not done"
    assert f"; {deleted} deletions held" in held.stderr
    assert f"run `watchd confirm-deletes -c {config}`" in held.stderr
    assert not [c for c in emulator.baidu_calls() if c.endpoint == "delPic"]
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["queue"]["held_deletes"] == deleted
    return config, files


def test_a_mass_deletion_is_held_until_confirmed(tmp_path: Path, emulator: Emulator) -> None:
    config, files = published_then_mostly_deleted(tmp_path, emulator, 100, 60)
    human = run_cli("status", "-c", str(config)).stdout
    assert "confirm-deletes" in human

    result = run_cli("confirm-deletes", "-c", str(config))
    assert result.returncode == 0 and "60" in result.stdout
    assert run_cli("sync", "-c", str(config)).returncode == 0
    deletes = [c for c in emulator.baidu_calls() if c.endpoint == "delPic"]
    assert [len(c.items) for c in deletes] == [10] * 6
    assert not any(sidecar_of(p).exists() for p in files[:60])
    assert all(sidecar_of(p).exists() for p in files[60:])


def test_raising_the_cap_releases_held_deletions(tmp_path: Path, emulator: Emulator) -> None:
    config, _files = published_then_mostly_deleted(tmp_path, emulator, 80, 55)
    config.write_text(config.read_text() + "delete_guard:\n  max_files: 100\n")
    assert run_cli("sync", "-c", str(config)).returncode == 0
    deletes = [c for c in emulator.baidu_calls() if c.endpoint == "delPic"]
    assert sum(len(c.items) for c in deletes) == 55


def test_a_reload_does_not_reset_the_guards_window(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    state = tmp_path / "state"
    guard = "delete_guard:\n  max_files: 5\n  max_percent: 20\n"
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=state, extra=guard)
    daemon = start_daemon(config)
    for n in range(12):
        (folder / f"i{n}.png").write_bytes(png(10 + n, 10))
    wait_for(lambda: len(emulator.baidu_index()) == 12, timeout=30)
    withdrawn = lambda: sum(len(c.items) for c in emulator.baidu_calls() if c.endpoint == "delPic")  # noqa: E731
    for n in range(4):
        (folder / f"i{n}.png").unlink()
    wait_for(lambda: withdrawn() == 4, timeout=20)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log())
    for n in range(4, 8):
        (folder / f"i{n}.png").unlink()
    journal = Journal.open(state)
    wait_for(lambda: journal.held_deletes() == 4, timeout=20)  # 8 in the window: over the cap of 5
    assert withdrawn() == 4
    journal.close()
    assert daemon.stop() == 0
