"""Stopping and reloading on time, against the real daemon and the emulator: one budget for a
stop, reloads that never wait on the network, `watchd sync` interrupted without repeating an
upload, and a loop that serves the watchdog and stop requests while it takes in a backlog."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Manager, StartDaemon, sidecar_of, wait_for, write_config
from tests.imagegen import png
from tests.test_resilience import pushed
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine


def count(state: Path, sql: str) -> int:
    """One number from the daemon's journal, read beside it (0 while it has none yet)."""
    if not (state / "journal.sqlite3").exists():
        return 0
    with contextlib.closing(sqlite3.connect(state / "journal.sqlite3")) as db:
        try:
            return int(db.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # created, its tables not yet
            return 0


def sending(state: Path) -> int:
    return count(state, "SELECT COUNT(*) FROM outbox WHERE state = 'sending'")


def uploading(state: Path) -> int:
    return count(state, "SELECT COUNT(*) FROM files WHERE state = 'uploading'")


def pushed_ids(emulator: Emulator) -> list[str]:
    """The id of every item of every pushPic call the emulator answered."""
    calls = [call for call in emulator.baidu_calls() if call.endpoint == "pushPic"]
    return [item["id"] for call in calls for item in call.items]


def slow_baidu_config(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path, Path]:
    """A config whose Baidu calls wait up to 60 s, and a linger of 1 s: the moment between a
    file's upload and its push, in which a test makes the emulator slow."""
    folder, state = tmp_path / "pics", tmp_path / "state"
    folder.mkdir()
    config = write_config(tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=state, linger=1.0)
    config.write_text(config.read_text().replace("  linger: 1.0\n", "  linger: 1.0\n  timeout: 60\n"))
    return config, folder, state


def push_in_flight(emulator: Emulator, path: Path, state: Path, latency: float) -> None:
    """Publish `path`, then have its push answered only after `latency` seconds."""
    path.write_bytes(png(3, 3))
    wait_for(lambda: sidecar_of(path).exists())
    emulator.set_faults(latency=latency)  # read by the push as it arrives, a linger later
    wait_for(lambda: sending(state) == 1)


@contextlib.contextmanager
def reloadable_engine_with_a_push_in_flight(
    tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture, latency: float
) -> Iterator[tuple[Engine, Path, float]]:
    """An engine running in a thread (so a test can reach into it across a reload), its first
    file's push at the emulator, answered `latency` s after the returned monotonic time, and
    the emulator quick again for what follows; stopped at the end."""
    config, folder, state = slow_baidu_config(tmp_path, emulator)
    engine = Engine(load_settings(config))
    daemon = threading.Thread(target=engine.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="watchd"):
        daemon.start()
        first = folder / "a.png"
        push_in_flight(emulator, first, state, latency=latency)
        at_the_emulator = time.monotonic()
        time.sleep(0.5)
        emulator.set_faults(latency=0)
        try:
            yield engine, first, at_the_emulator
        finally:
            engine.stop()
            daemon.join(timeout=30)


def test_sigterm_leaves_a_slow_baidu_call_behind_and_the_next_start_sends_it_again(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, folder, state = slow_baidu_config(tmp_path, emulator)
    daemon = start_daemon(config)
    published = folder / "a.png"
    push_in_flight(emulator, published, state, latency=25)
    asked = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - asked < 8, "a Baidu call in flight is not worth waiting for"
    log = daemon.log()
    assert "stopping: the 0 files in the upload workers' hands get up to 20 s" in log
    assert "a Baidu call in flight is left behind" in log
    assert sending(state) == 1, "left as it was: the next start sends it at once"

    emulator.set_faults(latency=0)
    daemon = start_daemon(config)
    wait_for(lambda: pushed(published))
    assert daemon.stop() == 0


def test_uploads_and_a_baidu_call_in_flight_share_one_stop_budget(
    tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    config, folder, state = slow_baidu_config(tmp_path, emulator)
    engine = Engine(load_settings(config), stop_timeout=4.0)
    codes: list[int] = []
    daemon = threading.Thread(target=lambda: codes.append(engine.run()), daemon=True)
    with caplog.at_level(logging.INFO, logger="watchd"):
        daemon.start()
        push_in_flight(emulator, folder / "a.png", state, latency=50)
        for name in ("b.png", "c.png"):
            (folder / name).write_bytes(png(4, len(name)))
        wait_for(lambda: uploading(state) == 2)
        asked = time.monotonic()
        engine.stop()
        daemon.join(timeout=30)
        took = time.monotonic() - asked
        emulator.stop()  # the calls left behind fail now, and say so here, not in another test
        wait_for(lambda: not [t for t in threading.enumerate() if t.name == "baidu" or "upload-" in t.name])
    assert codes == [0]
    # The uploads get the whole 4 s; before, the batcher then got another 4 s of its own.
    assert took < 6, took
    said = caplog.text
    assert "stopping: the 2 files in the upload workers' hands get up to 4 s to finish" in said
    assert "2 uploads still in flight at shutdown" in said


def test_a_reload_while_a_baidu_call_is_slow_does_not_stop_the_loop_or_send_anything_twice(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, manager: Manager
) -> None:
    config, folder, state = slow_baidu_config(tmp_path, emulator)
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000"})
    assert daemon.process is not None
    first = folder / "a.png"
    push_in_flight(emulator, first, state, latency=12)
    time.sleep(0.5)  # the push is at the emulator, which answers in 12 s
    emulator.set_faults(latency=0)  # everything after it goes at once

    daemon.process.send_signal(signal.SIGHUP)
    asked = time.monotonic()
    wait_for(lambda: manager.first("RELOADING=1", asked))
    reloading = manager.first("RELOADING=1", asked)
    assert reloading is not None
    wait_for(lambda: manager.first("READY=1", reloading), timeout=5)  # before: 12 s, the old call
    second = folder / "b.png"
    second.write_bytes(png(5, 5))
    wait_for(lambda: sidecar_of(second).exists(), timeout=5)
    manager.listen(3.0)
    # One ping every 0.5 s; before, none until the old call was over.
    assert len(manager.pings(reloading, reloading + 3.0)) >= 4, manager.messages

    wait_for(lambda: pushed(first) and pushed(second), timeout=30)
    assert daemon.stop() == 0
    items = pushed_ids(emulator)
    assert sorted(items) == sorted(set(items)) and len(items) == 2, items


def test_a_journal_error_in_the_new_batcher_never_resends_what_the_old_one_still_sends(
    tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    # After a journal error a batcher queues the items marked "sending" again: with the
    # batcher of the config before a reload still in its call, those were its items too,
    # and the new batcher sent them a second time.
    with reloadable_engine_with_a_push_in_flight(tmp_path, emulator, caplog, latency=8) as running:
        engine, first, at = running
        answered = at + 8.5  # the old batcher's call: at the emulator, answered in 8 s
        folder = first.parent
        engine.reload()
        wait_for(lambda: "configuration reloaded" in caplog.text)
        batcher = engine.batcher
        assert batcher is not None
        look = batcher._catch_up_sidecars
        failed: list[bool] = []

        def journal_error_once(now: float) -> float:
            if not failed:
                failed.append(True)
                raise sqlite3.OperationalError("disk I/O error")
            return look(now)

        batcher._catch_up_sidecars = journal_error_once  # type: ignore[method-assign]
        later = [folder / "b.png", folder / "c.png"]
        for n, path in enumerate(later):  # each push wakes the new batcher
            path.write_bytes(png(5, n + 5))
            wait_for(lambda path=path: sidecar_of(path).exists())  # type: ignore[misc]
        wait_for(lambda: all(pushed(p) for p in [first, *later]), timeout=30)
        time.sleep(max(0.0, answered - time.monotonic()))  # every push is answered, a second one too
    assert failed
    items = pushed_ids(emulator)
    assert len(items) == 3, items


def test_a_sidecar_the_old_batcher_updates_after_a_reload_never_lands_where_the_file_was(
    tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    # The old batcher's call ends after the reload; rewriting the sidecar to show it, it must
    # hold the same lock as a move of the file, or it writes the sidecar at the old path.
    # The push is at the emulator, which answers in 3 s.
    with reloadable_engine_with_a_push_in_flight(tmp_path, emulator, caplog, latency=3) as running:
        engine, first, _at = running
        folder = first.parent
        old = engine.pipeline
        write = old.write_sidecar
        writing, written = threading.Event(), threading.Event()

        def slow_write(*args: Any, **kwargs: Any) -> Path:  # the old batcher's, showing the push
            writing.set()
            time.sleep(1.5)
            try:
                return write(*args, **kwargs)
            finally:
                written.set()

        old.write_sidecar = slow_write  # type: ignore[method-assign]
        engine.reload()
        wait_for(lambda: "configuration reloaded" in caplog.text)
        assert writing.wait(timeout=10)
        moved = folder / "moved.png"
        first.rename(moved)
        assert written.wait(timeout=10)
        wait_for(lambda: pushed(moved))
        time.sleep(0.5)  # the move, if it waited for the sidecar, is done
    assert not sidecar_of(first).exists(), "no sidecar next to nothing"
    assert sorted(p.name for p in folder.iterdir()) == ["moved.png", "moved.png.link.json"]


def start_sync(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "watchd", "sync", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sync_lets_uploads_in_flight_finish_so_the_next_one_uploads_nothing_twice(
    tmp_path: Path, emulator: Emulator, sig: signal.Signals, code: int
) -> None:
    folder, state = tmp_path / "pics", tmp_path / "state"
    folder.mkdir()
    config = write_config(
        tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=state, extra="concurrency: 2\n"
    )
    files = [folder / f"s{n:02d}.png" for n in range(4)]  # one for each of the 2 × 2 upload workers
    for n, path in enumerate(files):
        path.write_bytes(png(n + 1, 4))
    emulator.set_faults(latency=2.0)
    sync = start_sync(config)
    wait_for(lambda: uploading(state) == 2)  # two more wait for a slot, read and ready to go
    sync.send_signal(sig)
    _out, err = sync.communicate(timeout=30)
    assert sync.returncode == code, err
    assert "Traceback" not in err
    assert f"sync stopped by {sig.name}" in err and "the next `watchd sync` or `watchd run` continues" in err
    assert "still queued (the next sync or run continues them)" in err and "for the reasons" not in err
    assert len(emulator.uploads()) == 2, "the uploads in flight finished, and no other one began"
    assert "4/4 files handled" not in err, "the two left queued were not handled"
    assert uploading(state) == 0, "both recorded"

    emulator.set_faults(latency=0)
    again = start_sync(config)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert all(sidecar_of(path).exists() for path in files)
    assert len(emulator.uploads()) == 4, "no upload twice"


def test_a_second_ctrl_c_stops_a_sync_at_once(tmp_path: Path, emulator: Emulator) -> None:
    folder, state = tmp_path / "pics", tmp_path / "state"
    folder.mkdir()
    config = write_config(tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=state)
    (folder / "slow.png").write_bytes(png(3, 3))
    emulator.set_faults(latency=30.0)
    sync = start_sync(config)
    wait_for(lambda: uploading(state) == 1)
    sync.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert sync.poll() is None, "the first Ctrl-C lets the upload in flight finish"
    sync.send_signal(signal.SIGINT)
    _out, err = sync.communicate(timeout=10)
    assert sync.returncode == 130
    assert "second SIGINT: stopping now" in err and "Traceback" not in err


def test_a_large_backlog_is_taken_in_between_watchdog_pings_and_a_stop_is_heard_at_once(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, manager: Manager
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    image = png(2, 2)
    for n in range(30_000):  # taken in over ~4 s here; before, in one turn of the loop
        (folder / f"b{n:05d}.png").write_bytes(image)
    config = write_config(tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    emulator.set_faults(imageban_quota=0)  # no uploads to wait for at the stop
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000"})
    assert daemon.process is not None
    wait_for(lambda: manager.first("READY=1"))
    ready = manager.first("READY=1")
    assert ready is not None
    manager.listen(2.0)
    pings = manager.pings(ready, ready + 2.0)
    gaps = [b - a for a, b in itertools.pairwise([ready, *pings])]
    assert len(pings) >= 3 and max(gaps) < 1.5, gaps  # one every 0.5 s

    asked = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    wait_for(lambda: manager.first("STOPPING=1"), timeout=30)
    stopping = manager.first("STOPPING=1")
    assert stopping is not None and stopping - asked < 1.0, stopping - asked
    assert daemon.stop() == 0


def test_a_reload_is_heard_at_once_during_a_large_intake(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    image = png(2, 2)
    for n in range(30_000):  # taken in over seconds, in chunks queued at once
        (folder / f"b{n:05d}.png").write_bytes(image)
    config = write_config(tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    emulator.set_faults(imageban_quota=0)  # no uploads to wait for at the stop
    daemon = start_daemon(config)
    assert daemon.process is not None
    wait_for(lambda: "reconciled" in daemon.log(), timeout=30)
    asked = time.monotonic()
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log(), timeout=30)
    heard = time.monotonic() - asked
    with sqlite3.connect(tmp_path / "s" / "journal.sqlite3") as db:
        taken_in = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert taken_in < 30_000, "the reload came after the whole intake"
    assert heard < 2.0, heard
    assert daemon.stop() == 0


def test_pings_stay_one_interval_apart_when_the_loop_wakes_just_before_one_is_due(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, manager: Manager
) -> None:
    # Uploads end every ~0.9 s, each waking the loop just before a ping is due (one a second):
    # it used to wait a whole interval more then, so pings came up to WATCHDOG_USEC apart.
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        [{"path": folder}],
        state_dir=tmp_path / "s",
        baidu=False,
        extra="concurrency: 1\n",
    )
    emulator.set_faults(latency=0.9)
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "2000000"})
    for n in range(10):
        (folder / f"p{n}.png").write_bytes(png(n + 1, 3))
    start = time.monotonic()
    manager.listen(7.0)
    pings = manager.pings(start, start + 7.0)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(emulator.uploads()) >= 5, "uploads ended one after another meanwhile"
    assert len(pings) >= 6 and max(gaps) < 1.4, gaps
    assert daemon.stop() == 0


def _reloaded(daemon: Any, config: Path, old: str, new: str) -> None:
    """Edit the config and send SIGHUP; wait until the daemon says it took it."""
    config.write_text(config.read_text().replace(old, new), encoding="utf-8")
    before = daemon.log().count("configuration reloaded")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("configuration reloaded") > before, timeout=20)


def test_a_daily_quota_raised_by_a_reload_lifts_its_pause(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s", baidu_quota=2
    )
    config.write_text(
        config.read_text().replace("type: imageban\n", "type: imageban\n    daily_quota: 2\n", 1)
    )
    daemon = start_daemon(config)
    for n in range(3):
        (folder / f"p{n}.png").write_bytes(png(10 + n, 10))
    wait_for(lambda: len(emulator.uploads()) == 2 and len(emulator.baidu_index()) == 2, timeout=20)
    wait_for(lambda: "daily quota of 2 uploads used up" in daemon.log())
    _reloaded(daemon, config, "daily_quota: 2", "daily_quota: 10")
    wait_for(lambda: len(emulator.uploads()) == 3 and len(emulator.baidu_index()) == 3, timeout=20)
    assert daemon.stop() == 0


def test_a_key_corrected_by_a_reload_while_uploads_with_the_old_one_are_in_flight_pauses_nothing(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """The answers to the uploads sent with the wrong key come after the reload: they must
    not pause the host the reload has just given a good key."""
    with Emulator(secret_keys=("sk-right",)) as emulator:
        folder = tmp_path / "pics"
        folder.mkdir()
        config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
        config.write_text(config.read_text().replace("${TEST_SECRET_KEY:-demo-secret}", "sk-wrong"))
        config.chmod(0o600)
        emulator.set_faults(latency=1.0)
        daemon = start_daemon(config)
        for n in range(6):
            (folder / f"p{n}.png").write_bytes(png(10 + n, 10))
        wait_for(lambda: uploading(tmp_path / "s") >= 2, timeout=20)
        _reloaded(daemon, config, "sk-wrong", "sk-right")
        # An upload is stored a second (the latency) before its answer and sidecar: wait for those.
        wait_for(lambda: all(sidecar_of(folder / f"p{n}.png").exists() for n in range(6)), timeout=30)
        assert len(emulator.uploads()) == 6
        assert daemon.stop() == 0


def _queued_titles(state: Path) -> list[str]:
    with sqlite3.connect(state / "journal.sqlite3") as db:
        rows = db.execute("SELECT payload FROM outbox WHERE action = 'push' AND state = 'queued' ORDER BY id")
        return [json.loads(payload)["title"] for (payload,) in rows]


def test_pushes_waiting_to_be_sent_take_the_rules_a_reload_or_a_rule_file_brings(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    state = tmp_path / "s"
    rules = {"title": "{stem} OLD TITLE"}
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder, "rules": rules}], state_dir=state)
    emulator.set_faults(baidu_quota=0)  # today's quota is used up: the pushes wait for tomorrow
    daemon = start_daemon(config)
    (folder / "a.png").write_bytes(png(10, 10))
    (folder / "sub" / "b.png").write_bytes(png(11, 10))
    wait_for(lambda: sorted(_queued_titles(state)) == ["a OLD TITLE", "b OLD TITLE"], timeout=20)
    _reloaded(daemon, config, "OLD TITLE", "NEW TITLE")
    assert sorted(_queued_titles(state)) == ["a NEW TITLE", "b NEW TITLE"]
    (folder / "sub" / ".watchd.yaml").write_text("baidu: false\n", encoding="utf-8")  # drafts now
    wait_for(lambda: _queued_titles(state) == ["a NEW TITLE"], timeout=20)
    assert daemon.stop() == 0
