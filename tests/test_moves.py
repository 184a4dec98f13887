"""Renames and moves that once went wrong: the real daemon, real inotify, the emulator.

Each test reproduces a bug found in review: a rename while the upload is in flight, a
rename over another published file, a move into a hidden directory (a desktop Trash), a
broken rule file touching a published file, and a rule file saved by rename.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import gif, png
from watchd import engine as engine_module
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine


def _watched(tmp_path: Path, emulator: Emulator, *names: str) -> tuple[list[Path], Path, Path]:
    """Watched folders `names` under `tmp_path`, the state directory, and their config."""
    folders = [tmp_path / name for name in names]
    for folder in folders:
        folder.mkdir()
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": f} for f in folders], state_dir=state)
    return folders, state, config


def states(state_dir: Path) -> dict[str | None, str]:
    """path → state of every journal row (deleted rows under None)."""
    with sqlite3.connect(state_dir / "journal.sqlite3") as db:
        return dict(db.execute("SELECT path, state FROM files ORDER BY id").fetchall())


def baidu_id(state_dir: Path, path: Path) -> str:
    with sqlite3.connect(state_dir / "journal.sqlite3") as db:
        return str(db.execute("SELECT baidu_id FROM files WHERE path = ?", (str(path),)).fetchone()[0])


def baidu_calls(emulator: Emulator) -> list[tuple[str, list[str]]]:
    return [
        (c.endpoint, [i.get("id") or i.get("key") for i in c.items])
        for c in emulator.baidu_calls()
        if c.errno == 0
    ]


def _pushes(emulator: Emulator) -> list[tuple[str, str]]:
    """(title, modify) of every item pushed successfully, in order."""
    return [
        (item["title"], item["extra"]["modify"])
        for call in emulator.baidu_calls()
        if call.endpoint == "pushPic" and call.errno == 0
        for item in call.items
    ]


def _renamed_while_its_push_waits(
    emulator: Emulator, start_daemon: StartDaemon, config: Path, src: Path, dest: Path
) -> None:
    """Publish `src` with today's Baidu quota used up, so that its push waits for tomorrow,
    and rename it `dest` meanwhile."""
    emulator.set_faults(baidu_quota=0)
    start_daemon(config)
    src.write_bytes(png(10, 10))
    wait_for(lambda: any(c.errno == 301002 for c in emulator.baidu_calls()), timeout=20)
    os.rename(src, dest)
    wait_for(lambda: sidecar_of(dest).exists(), timeout=20)


def _pushes_in_the_outbox(state: Path) -> list[tuple[str, str | None]]:
    """(state, title) of every push in the journal's outbox (no title: a sent one, kept as a refresh)."""
    with sqlite3.connect(state / "journal.sqlite3") as db:
        rows = db.execute("SELECT state, payload FROM outbox WHERE action = 'push' ORDER BY id").fetchall()
    return [(state, json.loads(payload)["title"] if payload else None) for state, payload in rows]


def test_a_rename_while_the_upload_is_in_flight_moves_the_sidecar_with_it(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    daemon = start_daemon(config)
    emulator.set_faults(latency=1.5)
    (folder / "Screenshot.png").write_bytes(png(10, 10))
    wait_for(lambda: states(state).get(str(folder / "Screenshot.png")) == "uploading", timeout=10)
    os.rename(folder / "Screenshot.png", folder / "cat.png")
    listing = lambda: sorted(p.name for p in folder.iterdir())  # noqa: E731
    wait_for(lambda: listing() == ["cat.png", "cat.png.link.json"], timeout=20)
    assert len(emulator.uploads()) == 1
    (folder / "cat.png").unlink()
    wait_for(lambda: not any(folder.iterdir()), timeout=20)  # its sidecar goes with it
    assert daemon.stop() == 0


def test_renaming_a_file_over_a_published_one_retires_the_replaced_one_without_a_reupload(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    daemon = start_daemon(config)
    (folder / "a.png").write_bytes(png(10, 10))
    (folder / "b.png").write_bytes(png(11, 11))
    wait_for(lambda: len(emulator.baidu_index()) == 2, timeout=20)
    a_id, b_id = (baidu_id(state, folder / name) for name in ("a.png", "b.png"))
    os.rename(folder / "a.png", folder / "b.png")
    wait_for(lambda: ("delPic", [b_id]) in baidu_calls(emulator), timeout=20)
    assert len(emulator.uploads()) == 2  # a's content was not uploaded again as b
    assert "cannot write the journal" not in daemon.log()
    assert baidu_id(state, folder / "b.png") == a_id and set(emulator.baidu_index()) == {a_id}
    a_link = next(u.link for u in emulator.uploads() if u.name == "a.png")
    wait_for(lambda: a_link in sidecar_of(folder / "b.png").read_text(encoding="utf-8"))
    assert daemon.stop() == 0


def test_moving_a_file_into_a_hidden_directory_is_a_deletion(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "w")
    trash = folder / ".Trash-1000" / "files"
    trash.mkdir(parents=True)
    daemon = start_daemon(config)
    (folder / "cat.png").write_bytes(png(10, 10))
    wait_for(lambda: any(endpoint == "pushPic" for endpoint, _ in baidu_calls(emulator)), timeout=20)
    os.rename(folder / "cat.png", trash / "cat.png")
    wait_for(lambda: any(endpoint == "delPic" for endpoint, _ in baidu_calls(emulator)), timeout=20)
    assert sorted(p.name for p in trash.iterdir()) == ["cat.png"]  # no sidecar written into the Trash
    assert not sidecar_of(folder / "cat.png").exists()
    assert daemon.stop() == 0


def test_a_broken_rule_file_does_not_fail_or_forget_a_published_file(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    daemon = start_daemon(config)
    (folder / "cat.png").write_bytes(png(10, 10))
    wait_for(lambda: any(endpoint == "pushPic" for endpoint, _ in baidu_calls(emulator)), timeout=20)
    (folder / ".watchd.yaml").write_text("tagz: [x]\n", encoding="utf-8")  # a typo
    (folder / "cat.png").write_bytes(png(20, 20))  # new content while the rules are broken
    wait_for(lambda: states(state).get(str(folder / "cat.png")) == "failed", timeout=20)
    (folder / ".watchd.yaml").write_text("tags: [x]\n", encoding="utf-8")  # fixed
    wait_for(
        lambda: len(emulator.uploads()) == 2 and states(state)[str(folder / "cat.png")] == "done", timeout=20
    )
    wait_for(lambda: len([c for c in baidu_calls(emulator) if c[0] == "pushPic"]) == 2, timeout=20)
    pushed = [ids[0] for endpoint, ids in baidu_calls(emulator) if endpoint == "pushPic"]
    assert pushed[0] == pushed[1]  # the same Baidu id, pushed again (modify), never orphaned
    assert len(emulator.baidu_index()) == 1
    assert daemon.stop() == 0


def test_a_rule_file_saved_by_rename_retakes_the_files_it_had_failed(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    (folder / ".watchd.yaml").write_text("tagz: [x]\n", encoding="utf-8")
    daemon = start_daemon(config)
    (folder / "cat.png").write_bytes(png(10, 10))
    wait_for(lambda: states(state).get(str(folder / "cat.png")) == "failed", timeout=20)
    saved = folder / ".watchd.yaml.swp"
    saved.write_text("tags: [x]\n", encoding="utf-8")
    os.rename(saved, folder / ".watchd.yaml")  # how many editors save
    wait_for(lambda: sidecar_of(folder / "cat.png").exists(), timeout=20)
    assert daemon.stop() == 0


def test_a_move_between_two_watched_folders_is_a_move_not_a_second_upload(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (first, second), state, config = _watched(tmp_path, emulator, "a", "b")
    daemon = start_daemon(config)
    (first / "cat.png").write_bytes(png(10, 10))
    wait_for(lambda: len(emulator.baidu_index()) == 1, timeout=20)
    os.rename(first / "cat.png", second / "cat.png")
    wait_for(lambda: sidecar_of(second / "cat.png").exists(), timeout=20)
    wait_for(lambda: not sidecar_of(first / "cat.png").exists(), timeout=20)
    assert len(emulator.uploads()) == 1
    assert [endpoint for endpoint, _ids in baidu_calls(emulator)] == ["pushPic"]  # nothing withdrawn
    assert states(state) == {str(second / "cat.png"): "done"}
    assert daemon.stop() == 0


def test_files_a_rule_file_stops_excluding_are_published_without_a_restart(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "w")
    (folder / ".watchd.yaml").write_text("exclude: ['*.gif']\n", encoding="utf-8")
    daemon = start_daemon(config)
    (folder / "a.gif").write_bytes(gif(10, 10))
    (folder / "b.png").write_bytes(png(10, 10))
    wait_for(lambda: sidecar_of(folder / "b.png").exists(), timeout=20)
    assert not sidecar_of(folder / "a.gif").exists()
    (folder / ".watchd.yaml").write_text("tags: [x]\n", encoding="utf-8")
    wait_for(lambda: sidecar_of(folder / "a.gif").exists(), timeout=20)
    assert daemon.stop() == 0


def _uploading(tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, name: str) -> tuple[Path, Path]:
    """A daemon whose upload of `name` is in flight (the emulator answers after 2 s)."""
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    start_daemon(config)
    emulator.set_faults(latency=2.0)
    (folder / name).write_bytes(png(10, 10))
    wait_for(lambda: states(state).get(str(folder / name)) == "uploading", timeout=10)
    return folder, state


def test_renamed_twice_while_uploading_is_one_upload_with_its_sidecar_at_the_last_name(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, _state = _uploading(tmp_path, emulator, start_daemon, "a.png")
    os.rename(folder / "a.png", folder / "b.png")
    time.sleep(0.3)
    os.rename(folder / "b.png", folder / "c.png")
    emulator.set_faults(latency=0.0)
    wait_for(lambda: sorted(p.name for p in folder.iterdir()) == ["c.png", "c.png.link.json"], timeout=20)
    time.sleep(0.5)
    assert len(emulator.uploads()) == 1 and len(emulator.baidu_index()) == 1


def test_renamed_then_deleted_while_uploading_is_withdrawn(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, state = _uploading(tmp_path, emulator, start_daemon, "a.png")
    os.rename(folder / "a.png", folder / "b.png")
    time.sleep(0.3)
    (folder / "b.png").unlink()
    emulator.set_faults(latency=0.0)
    wait_for(lambda: list(states(state).values()) == ["deleted"], timeout=20)
    wait_for(lambda: not any(folder.iterdir()) and emulator.baidu_index() == {}, timeout=20)


def test_renaming_over_a_file_whose_upload_is_in_flight_waits_for_it(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    start_daemon(config)
    (folder / "a.png").write_bytes(png(10, 10))
    (folder / "b.png").write_bytes(png(11, 11))
    wait_for(lambda: len(emulator.baidu_index()) == 2, timeout=20)
    a_id, b_id = (baidu_id(state, folder / name) for name in ("a.png", "b.png"))
    emulator.set_faults(latency=2.0)
    (folder / "b.png").write_bytes(png(12, 12))  # b is re-uploaded...
    wait_for(lambda: states(state).get(str(folder / "b.png")) == "uploading", timeout=10)
    os.rename(folder / "a.png", folder / "b.png")  # ...when a is renamed over it
    emulator.set_faults(latency=0.0)
    wait_for(lambda: set(emulator.baidu_index()) == {a_id}, timeout=20)
    a_link = next(u.link for u in emulator.uploads() if u.name == "a.png")
    wait_for(lambda: a_link in sidecar_of(folder / "b.png").read_text(encoding="utf-8"))
    assert b_id not in emulator.baidu_index()


def test_a_move_to_another_watched_folder_while_uploading_leaves_no_sidecar_behind(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (first, second), state, config = _watched(tmp_path, emulator, "a", "b")
    start_daemon(config)
    emulator.set_faults(latency=2.0)
    (first / "x.png").write_bytes(png(10, 10))
    wait_for(lambda: states(state).get(str(first / "x.png")) == "uploading", timeout=10)
    os.rename(first / "x.png", second / "x.png")
    emulator.set_faults(latency=0.0)
    wait_for(lambda: sorted(p.name for p in second.iterdir()) == ["x.png", "x.png.link.json"], timeout=20)
    wait_for(lambda: not any(first.iterdir()), timeout=20)
    assert len(emulator.uploads()) == 1


def start_patched(tmp_path: Path, start_daemon: StartDaemon, config: Path, patch: str) -> Daemon:
    """`watchd run` with `patch` (Python source) run first, as `sitecustomize`: a fault at an
    exact moment of the real daemon."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(patch)
    return start_daemon(config, env={"PYTHONPATH": str(hook)})


DIE_AFTER_RECORDING_A_MOVE = """
import json
import os
from watchd.journal import Journal

record_move = Journal.move

def record_then_die(self, *args, **kwargs):
    record_move(self, *args, **kwargs)
    os._exit(137)  # as a kill -9 the instant the move is committed

Journal.move = record_then_die
"""


def test_a_kill_right_after_a_move_is_recorded_leaves_no_sidecar_behind(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "w")
    (folder / "a.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    daemon = start_patched(tmp_path, start_daemon, config, DIE_AFTER_RECORDING_A_MOVE)
    os.rename(folder / "a.png", folder / "b.png")  # seen by inotify: recorded, then killed
    assert daemon.stop(signal.SIGCONT) == 137  # SIGCONT: a no-op, only the wait
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["b.png", "b.png.link.json"]
    assert len(emulator.uploads()) == 1


SLOW_TO_RECORD_A_PUSH = """
import time
from watchd.journal import Journal

record_sent = Journal.outbox_sent

def wait_then_record(self, *args, **kwargs):
    time.sleep(1.0)  # the sidecars already say `baidu`; the journal does not yet
    record_sent(self, *args, **kwargs)

Journal.outbox_sent = wait_then_record
"""


def test_a_rename_while_a_push_is_being_recorded_keeps_baidu_in_the_moved_sidecar(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "w")
    start_patched(tmp_path, start_daemon, config, SLOW_TO_RECORD_A_PUSH)
    (folder / "a.png").write_bytes(png(10, 10))
    wait_for(lambda: "baidu" in sidecar_text(folder / "a.png"), timeout=20)
    os.rename(folder / "a.png", folder / "b.png")
    wait_for(lambda: sorted(p.name for p in folder.iterdir()) == ["b.png", "b.png.link.json"], timeout=20)
    assert "baidu" in sidecar_text(folder / "b.png")


def sidecar_text(path: Path) -> str:
    try:
        return sidecar_of(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def test_a_move_found_by_a_rescan_while_a_push_is_being_recorded_does_not_deadlock(
    tmp_path: Path, emulator: Emulator
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "w")
    engine = Engine(load_settings(config))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        (folder / "a.png").write_bytes(png(10, 10))
        wait_for(lambda: "baidu" in sidecar_text(folder / "a.png"), timeout=20)
        watcher = engine.upkeep.watcher
        assert watcher is not None
        watcher.stop()  # from here on only rescans see the folder
        record_sent = engine.journal.outbox_sent

        def wait_then_record(*args: Any, **kwargs: Any) -> None:
            time.sleep(1.0)  # holding the sidecars of this push, not yet the journal
            record_sent(*args, **kwargs)

        engine.journal.outbox_sent = wait_then_record  # type: ignore[method-assign]
        (folder / "c.png").write_bytes(png(11, 11))
        engine.upkeep.rescan_all()
        wait_for(lambda: "baidu" in sidecar_text(folder / "c.png"), timeout=20)
        os.rename(folder / "a.png", folder / "e.png")  # unseen: the rescan pairs it as a move
        engine.upkeep.rescan_all()
        wait_for(lambda: sidecar_of(folder / "e.png").exists(), timeout=10)
    finally:
        engine.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert sorted(p.name for p in folder.iterdir()) == [
        "c.png",
        "c.png.link.json",
        "e.png",
        "e.png.link.json",
    ]


def _drafts_and_public(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path, Path, Path]:
    """A `baidu: false` drafts folder and a public one, as config.example.yaml suggests."""
    drafts, public = tmp_path / "drafts", tmp_path / "public"
    drafts.mkdir()
    public.mkdir()
    state = tmp_path / "state"
    folders = [{"path": drafts, "rules": {"baidu": False}}, {"path": public}]
    return drafts, public, state, write_config(tmp_path / "c.yaml", emulator, folders, state_dir=state)


def test_a_draft_moved_to_a_public_folder_is_submitted_to_baidu_without_a_reupload(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    drafts, public, _state, config = _drafts_and_public(tmp_path, emulator)
    daemon = start_daemon(config)
    (drafts / "cat.png").write_bytes(png(10, 10))
    wait_for(lambda: sidecar_of(drafts / "cat.png").exists(), timeout=20)
    os.rename(drafts / "cat.png", public / "cat.png")
    wait_for(lambda: len(emulator.baidu_index()) == 1, timeout=20)
    wait_for(lambda: "baidu" in json.loads(sidecar_of(public / "cat.png").read_text(encoding="utf-8")))
    assert len(emulator.uploads()) == 1 and not any(drafts.iterdir())
    os.rename(public / "cat.png", drafts / "cat.png")  # back to drafts: Baidu keeps it...
    wait_for(lambda: sidecar_of(drafts / "cat.png").exists(), timeout=20)
    (drafts / "cat.png").unlink()  # ...until the original is deleted, even from a `baidu: false` folder
    wait_for(lambda: emulator.baidu_index() == {}, timeout=20)
    assert daemon.stop() == 0


def test_a_file_moved_to_drafts_before_its_push_went_out_is_not_submitted(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    drafts, public, state, config = _drafts_and_public(tmp_path, emulator)
    _renamed_while_its_push_waits(emulator, start_daemon, config, public / "cat.png", drafts / "cat.png")
    assert _pushes_in_the_outbox(state) == []


def test_a_file_rewritten_while_its_first_upload_runs_leaves_baidu_with_the_new_image(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    """Every answer takes 2 s and a push lingers 1 s, so the first push is in flight when the
    rewritten file's push is queued: that one must say `modify`, or Baidu keeps the old image."""
    folder = tmp_path / "w"
    folder.mkdir()
    state = tmp_path / "state"
    start_daemon(write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=state, linger=1.0))
    emulator.set_faults(latency=2.0)
    (folder / "a.png").write_bytes(png(10, 10))
    wait_for(lambda: states(state).get(str(folder / "a.png")) == "uploading", timeout=10)
    (folder / "a.png").write_bytes(png(20, 20))
    wait_for(lambda: len(emulator.uploads()) == 2, timeout=30)
    new_link = emulator.uploads()[1].link
    wait_for(lambda: new_link in sidecar_of(folder / "a.png").read_text(encoding="utf-8"), timeout=30)
    wait_for(lambda: [i.get("objurl") for i in emulator.baidu_index().values()] == [new_link], timeout=30)
    pushes = [
        (c.items[0]["extra"]["modify"], c.errno) for c in emulator.baidu_calls() if c.endpoint == "pushPic"
    ]
    assert pushes in ([("0", 0)], [("0", 0), ("1", 0)]), pushes


def test_a_file_renamed_over_a_published_one_while_stopped_is_not_uploaded_again(
    tmp_path: Path, emulator: Emulator
) -> None:
    (first, second), state, config = _watched(tmp_path, emulator, "a", "b")
    (first / "x.png").write_bytes(png(10, 10))
    (second / "y.png").write_bytes(png(11, 11))
    assert Engine(load_settings(config)).sync() == 0
    x_id = baidu_id(state, first / "x.png")
    x_link = next(u.link for u in emulator.uploads() if u.name == "x.png")
    os.rename(first / "x.png", second / "y.png")  # while watchd is not running
    assert Engine(load_settings(config)).sync() == 0
    assert len(emulator.uploads()) == 2  # x is carried over to its new name, y is deleted
    assert set(emulator.baidu_index()) == {x_id}
    assert x_link in sidecar_of(second / "y.png").read_text(encoding="utf-8")
    assert not any(first.iterdir())


def test_files_renamed_while_stopped_are_moves_however_long_the_reconciliation_takes(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    for n in range(4):
        (folder / f"p{n}.png").write_bytes(png(10 + n, 10))
    assert Engine(load_settings(config)).sync() == 0
    ids = {n: baidu_id(state, folder / f"p{n}.png") for n in (0, 1)}
    for n in (0, 1):  # while watchd is not running
        os.rename(folder / f"p{n}.png", folder / f"renamed{n}.png")
    # One fact a turn: the walk's turn ends before the files it found are taken in, as a walk
    # of many files (or of many sidecars to restore) overruns a turn's 0.2 s.
    monkeypatch.setattr(engine_module, "TURN_BUDGET", 0.0)
    assert Engine(load_settings(config)).sync() == 0
    assert len(emulator.uploads()) == 4
    # no delPic: the renamed files are re-submitted under their new names, nothing is withdrawn
    assert [(endpoint, sorted(pushed)) for endpoint, pushed in baidu_calls(emulator)][1:] == [
        ("pushPic", sorted(ids.values()))
    ]
    assert [i["title"] for i in emulator.baidu_index().values()].count("renamed0 - w") == 1
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("renamed")) == [
        "renamed0.png",
        "renamed0.png.link.json",
        "renamed1.png",
        "renamed1.png.link.json",
    ]
    assert not sidecar_of(folder / "p0.png").exists()
    assert {n: baidu_id(state, folder / f"renamed{n}.png") for n in (0, 1)} == ids


DIE_AFTER_RECORDING_A_PUSH = """
import os
from watchd.journal import Journal

record_sent = Journal.outbox_sent

def record_then_die(self, *args, **kwargs):
    record_sent(self, *args, **kwargs)
    os._exit(137)  # as a kill -9 before the sidecars are rewritten to show the push

Journal.outbox_sent = record_then_die
"""


def test_a_file_renamed_after_a_kill_left_its_sidecar_to_show_its_push_is_finished_by_the_move(
    tmp_path: Path, emulator: Emulator
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "w")
    (folder / "a.png").write_bytes(png(10, 10))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_AFTER_RECORDING_A_PUSH)
    assert run_cli("sync", "-c", str(config), env={"PYTHONPATH": str(hook)}).returncode == 137
    assert "baidu" not in sidecar_text(folder / "a.png")
    os.rename(folder / "a.png", folder / "b.png")  # while watchd is not running
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "could not update its sidecar" not in result.stderr  # a.png moved, as reconciliation finds
    assert sorted(p.name for p in folder.iterdir()) == ["b.png", "b.png.link.json"]
    assert "baidu" in sidecar_text(folder / "b.png")
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["baidu"]["sidecars_to_update"] == 0
    assert len(emulator.uploads()) == 1
    assert [endpoint for endpoint, _ids in baidu_calls(emulator)] == ["pushPic", "pushPic"]  # then as "b"
    assert _pushes(emulator) == [("a - w image", "0"), ("b - w image", "1")]


def test_a_published_file_renamed_is_found_in_baidu_by_its_new_name(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), _state, config = _watched(tmp_path, emulator, "harbour")
    daemon = start_daemon(config)
    (folder / "IMG_0412.png").write_bytes(png(10, 10))
    wait_for(lambda: _pushes(emulator) == [("IMG_0412 - harbour", "0")], timeout=20)
    os.rename(folder / "IMG_0412.png", folder / "harbour at dawn.png")
    wait_for(lambda: [i["title"] for i in emulator.baidu_index().values()] == ["harbour at dawn"], timeout=20)
    assert _pushes(emulator) == [("IMG_0412 - harbour", "0"), ("harbour at dawn", "1")]
    assert len(emulator.uploads()) == 1
    assert daemon.stop() == 0


def test_a_move_that_leaves_the_baidu_item_as_it_was_sends_nothing_to_baidu(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    """The title here names no file, so a rename changes nothing Baidu holds."""
    folder = tmp_path / "w"
    folder.mkdir()
    rules = {"title": "Photo archive of the harbour"}
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder, "rules": rules}], state_dir=tmp_path / "s"
    )
    start_daemon(config)
    (folder / "a.png").write_bytes(png(10, 10))
    wait_for(lambda: len(emulator.baidu_index()) == 1, timeout=20)
    os.rename(folder / "a.png", folder / "b.png")
    wait_for(lambda: sidecar_of(folder / "b.png").exists(), timeout=20)
    (folder / "c.png").write_bytes(png(11, 11))  # its push would carry a re-submission of b along
    wait_for(lambda: len(emulator.baidu_index()) == 2, timeout=20)
    assert [modify for _title, modify in _pushes(emulator)] == ["0", "0"]


def test_a_file_renamed_while_its_push_waits_for_the_quota_goes_to_baidu_under_its_new_name(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    (folder,), state, config = _watched(tmp_path, emulator, "w")
    _renamed_while_its_push_waits(
        emulator, start_daemon, config, folder / "IMG_0412.png", folder / "harbour at dawn.png"
    )
    assert _pushes_in_the_outbox(state) == [("queued", "harbour at dawn")]


def test_a_directory_moved_to_another_watched_folder_is_moved_not_uploaded_again(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    """Each folder's watch reports its half: the directory arriving in one may come before
    its files are seen gone from the other, and must wait for it."""
    (first, second), state, config = _watched(tmp_path, emulator, "a", "b")
    daemon = start_daemon(config)
    (first / "album").mkdir()
    for n in range(3):
        (first / "album" / f"p{n}.png").write_bytes(png(10 + n, 10))
    wait_for(lambda: len(emulator.baidu_index()) == 3, timeout=20)
    ids = {baidu_id(state, first / "album" / f"p{n}.png") for n in range(3)}
    os.rename(first / "album", second / "album")
    wait_for(lambda: all(sidecar_of(second / "album" / f"p{n}.png").exists() for n in range(3)), timeout=20)
    wait_for(
        lambda: states(state) == {str(second / "album" / f"p{n}.png"): "done" for n in range(3)}, timeout=20
    )
    assert len(emulator.uploads()) == 3 and set(emulator.baidu_index()) == ids
    assert not any(first.iterdir())
    assert "delPic" not in [endpoint for endpoint, _ids in baidu_calls(emulator)]
    assert daemon.stop() == 0
