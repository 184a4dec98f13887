"""Faults as non-events: flaky networks, quotas, kill -9, signals, overflows and full disks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd import pipeline as pipeline_module
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine
from watchd.errors import PermanentFileError
from watchd.hosts.base import Uploaded, UploadRequest
from watchd.indexers.baidu import BaiduIndexer
from watchd.indexers.base import ItemResult, PushItem

FAST_RETRIES = """
retry:
  attempts: 3
  initial: 0.01
  maximum: 0.05
  requeue_initial: 0.3
  requeue_maximum: 1.0
"""


def pushed(path: Path) -> bool:
    sidecar = sidecar_of(path)
    return sidecar.exists() and "baidu" in json.loads(sidecar.read_text(encoding="utf-8"))


def make_config(tmp_path: Path, emulator: Emulator, extra: str = FAST_RETRIES) -> tuple[Path, Path]:
    folder = tmp_path / "pics"
    folder.mkdir(exist_ok=True)
    config = write_config(
        tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "state", extra=extra
    )
    return config, folder


def test_flaky_network_and_transient_codes_still_publish_everything(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, folder = make_config(tmp_path, emulator)
    emulator.set_faults(http_error_rate=0.3, transient_rate=0.1, drop_rate=0.1, seed=3)
    daemon = start_daemon(config)
    files = [folder / f"f{n}.png" for n in range(30)]
    for n, path in enumerate(files):
        path.write_bytes(png(n + 1, 4))
    wait_for(lambda: all(pushed(p) for p in files), timeout=60)
    faults = Counter(r.fault or r.code for r in emulator.requests() if r.fault or r.code)
    assert faults["http_error"] >= 5 and sum(faults.values()) >= 10, faults
    assert len(emulator.baidu_index()) == 30
    assert daemon.stop() == 0


def test_an_exhausted_quota_pauses_uploads_instead_of_hammering(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, folder = make_config(tmp_path, emulator)
    emulator.set_faults(imageban_quota=4)
    daemon = start_daemon(config)
    for n in range(12):
        (folder / f"q{n}.png").write_bytes(png(n + 1, 6))
    wait_for(lambda: any(r.code == "109" for r in emulator.requests()))
    time.sleep(3)
    uploads = [r for r in emulator.requests() if r.path == "/v1"]
    assert len(emulator.uploads()) == 4
    assert len(uploads) <= 4 + 4, "at most the requests already in flight after the quota answer"
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    pause = status["hosts"]["me"]["paused"]
    assert pause["kind"] == "quota" and pause["until"]
    assert status["queue"]["uploads"] == 8
    assert daemon.stop() == 0


def test_uploads_in_flight_never_exceed_concurrency_yet_fill_it(tmp_path: Path, emulator: Emulator) -> None:
    # The workers outnumber `concurrency` (bookkeeping overlaps uploads); the slots must not.
    config, folder = make_config(tmp_path, emulator, extra=FAST_RETRIES + "concurrency: 2\n")
    for n in range(12):
        (folder / f"s{n}.png").write_bytes(png(n + 1, 6))
    emulator.set_faults(latency=0.05)
    engine = Engine(load_settings(config), sleep=lambda _s: None)
    host = engine.pipeline.hosts["me"]
    send = host.upload
    lock = threading.Lock()
    in_flight, most = 0, 0

    def counted(request: UploadRequest) -> Uploaded:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            return send(request)
        finally:
            with lock:
                in_flight -= 1

    host.upload = counted  # type: ignore[method-assign]
    assert engine.sync() == 0
    assert len(emulator.uploads()) == 12
    assert most == 2


def test_the_configured_daily_quota_is_never_exceeded(tmp_path: Path, emulator: Emulator) -> None:
    config, folder = make_config(tmp_path, emulator)
    config.write_text(
        config.read_text().replace("type: imageban\n", "type: imageban\n    daily_quota: 3\n", 1)
    )
    for n in range(6):
        (folder / f"c{n}.png").write_bytes(png(n + 1, 6))
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 1  # deferred work is reported
    assert len([r for r in emulator.requests() if r.path == "/v1"]) == 3
    assert result.stderr.count("daily quota of 3 uploads used up") == 1  # said once, not per file
    assert run_cli("sync", "-c", str(config)).returncode == 1
    assert len([r for r in emulator.requests() if r.path == "/v1"]) == 3


def test_attempts_that_never_reached_the_host_do_not_use_up_its_quota(
    tmp_path: Path, emulator: Emulator
) -> None:
    config, folder = make_config(tmp_path, emulator)
    with socket.socket() as probe:  # a port nothing listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    reachable = config.read_text().replace("type: imageban\n", "type: imageban\n    daily_quota: 3\n", 1)
    reachable = "concurrency: 4\n" + reachable
    config.write_text(reachable.replace(emulator.imageban_url, dead_url))
    for n in range(5):
        (folder / f"c{n}.png").write_bytes(png(n + 1, 6))
    now = [time.time()]
    # Each retry waits 0.1 s, so while three sends hold the whole quota, failing, the other
    # two ask for a unit: they must wait for the units to come back, not pause for the day.
    assert Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: time.sleep(0.1)).sync() == 1
    config.write_text(reachable)  # the host is back; the retries are due an hour later
    now[0] += 3600
    assert Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None).sync() == 1
    assert len(emulator.uploads()) == 3  # the whole quota, none of it spent on refused connections


def test_uploads_the_host_refused_give_their_quota_units_back_and_the_pause_is_said_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    config, folder = make_config(tmp_path, emulator)
    good = "concurrency: 4\n" + config.read_text().replace(
        "type: imageban\n", "type: imageban\n    daily_quota: 3\n", 1
    )
    config.write_text(good.replace("demo-secret", "a-mistyped-key"))
    for n in range(5):
        (folder / f"k{n}.png").write_bytes(png(n + 1, 6))
    refused = run_cli("sync", "-c", str(config))
    assert refused.returncode == 1
    assert 1 <= len([r for r in emulator.requests() if r.code == "105"]) <= 4  # those already in flight
    assert refused.stderr.count("imageban:me paused") == 1, refused.stderr
    assert "check secret_key (or secret_key_file) of host 'me'" in refused.stderr
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["hosts"]["me"]["used_today"] == 0  # ImageBan stored nothing, so counted nothing
    config.write_text(good)  # the key fixed: the whole day's quota is there
    assert run_cli("sync", "-c", str(config)).returncode == 1  # two wait for tomorrow
    assert len(emulator.uploads()) == 3


def test_baidu_calls_and_items_refused_give_their_quota_units_back(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "state", baidu_quota=6
    )
    good = config.read_text()
    config.write_text(good.replace("demo-token", "a-mistyped-token"))
    for n in range(6):
        (folder / f"b{n}.png").write_bytes(png(n + 1, 6))
    assert Engine(load_settings(config), sleep=lambda _s: None).sync() == 1
    assert [c.errno for c in emulator.baidu_calls()] == [60001001]  # one call, then paused
    assert json.loads(run_cli("status", "-c", str(config), "--json").stdout)["baidu"]["submitted_today"] == 0

    config.write_text(good)
    refuse = "b2"  # Baidu refuses one item of the call: it stores nothing for it
    real_push = BaiduIndexer.push

    def push_refusing_one(self: BaiduIndexer, items: list[PushItem]) -> list[ItemResult]:
        results = real_push(self, [item for item in items if refuse not in item.title])
        refused = [
            ItemResult(i.id, PermanentFileError("refused", service="baidu"))
            for i in items
            if refuse in i.title
        ]
        return results + refused

    monkeypatch.setattr(BaiduIndexer, "push", push_refusing_one)
    assert Engine(load_settings(config), sleep=lambda _s: None).sync() == 1  # the refused item failed
    assert len(emulator.baidu_index()) == 5
    assert json.loads(run_cli("status", "-c", str(config), "--json").stdout)["baidu"]["submitted_today"] == 5


def test_a_failing_host_is_left_alone_until_its_backoff_ends_not_tried_file_by_file(
    tmp_path: Path, emulator: Emulator
) -> None:
    config, folder = make_config(tmp_path, emulator)
    for n in range(20):
        (folder / f"o{n}.png").write_bytes(png(n + 1, 6))
    emulator.set_faults(http_error_rate=1.0)  # every upload answered 5xx: the host is down
    now = [time.time()]
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    assert engine.sync() == 1
    uploads = [r for r in emulator.requests() if r.path == "/v1"]
    # The 2nd failure in a row pauses the host: the 4 uploads in flight, plus the one that took
    # the 1st one's slot, each with its 3 quick attempts (it was 20 x 3 = 60, file after file).
    assert len(uploads) <= (4 + 1) * 3
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["hosts"]["me"]["paused"]["kind"] == "outage"
    assert status["files"]["pending"] == 20 and status["files"]["failed"] == 0
    emulator.set_faults(http_error_rate=0.0)  # back; a new start (or reload) tries again at once,
    # also the files that failed before the host was taken to be down (their backoff is moot)
    assert Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None).sync() == 0
    assert len(emulator.uploads()) == 20


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_only_in_flight_work(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, folder = make_config(tmp_path, emulator)
    emulator.set_faults(latency=0.03)
    files = [folder / f"k{n:02d}.png" for n in range(40)]
    for n, path in enumerate(files):
        path.write_bytes(png(n + 1, 5))
    rng = random.Random(20261123)
    kills = 0
    for _ in range(8):
        daemon = start_daemon(config)
        time.sleep(rng.uniform(0.05, 0.6))
        daemon.stop(signal.SIGKILL)
        kills += 1
    daemon = start_daemon(config)
    wait_for(lambda: all(pushed(p) for p in files), timeout=60)
    assert daemon.stop() == 0

    per_image = Counter(u.sha256 for u in emulator.uploads())
    assert len(per_image) == 40
    duplicates = sum(n - 1 for n in per_image.values())
    assert duplicates <= kills * 4, per_image  # at most `concurrency` uploads in flight per kill
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".link.json")) == sorted(
        p.name + ".link.json" for p in files
    )
    assert not [p for p in folder.iterdir() if ".watchd-tmp-" in p.name]
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["files"]["done"] == 40 and status["queue"]["uploads"] == 0
    assert set(emulator.baidu_index()) == {
        json.loads(sidecar_of(p).read_text(encoding="utf-8"))["baidu"]["id"] for p in files
    }


def test_sigterm_under_load_finishes_in_flight_work_and_exits_0(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, folder = make_config(tmp_path, emulator)
    emulator.set_faults(latency=0.4)
    daemon = start_daemon(config)
    files = [folder / f"t{n}.png" for n in range(12)]
    for n, path in enumerate(files):
        path.write_bytes(png(n + 1, 8))
    wait_for(lambda: emulator.requests())
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    emulator.set_faults(latency=0.0)
    daemon = start_daemon(config)
    wait_for(lambda: all(sidecar_of(p).exists() for p in files))
    assert daemon.stop() == 0
    assert len(emulator.uploads()) == 12, "in-flight uploads finished before exit: no duplicates"


def test_sighup_with_a_broken_config_keeps_the_old_one_running(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, folder = make_config(tmp_path, emulator)
    good = config.read_text()
    daemon = start_daemon(config)
    config.write_text(good + "concurency: 8\n")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in daemon.log())
    assert "concurency" in daemon.log()
    (folder / "after-bad-reload.png").write_bytes(png(3, 3))
    wait_for(lambda: sidecar_of(folder / "after-bad-reload.png").exists())

    second = tmp_path / "second"
    second.mkdir()
    config.write_text(good.replace("folders:\n", f'folders:\n  - path: "{second}"\n'))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log())
    (second / "new-folder.png").write_bytes(png(4, 4))
    wait_for(lambda: sidecar_of(second / "new-folder.png").exists())
    assert "restart" not in daemon.log()

    config.write_text("concurrency: 2\n" + config.read_text())  # what a reload cannot apply
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "concurrency changed, which takes effect only at a restart" in daemon.log())
    assert daemon.stop() == 0


def test_a_queue_overflow_triggers_a_rescan(tmp_path: Path, emulator: Emulator) -> None:
    """watchd hears watchdog's overflow report and reconciles, finding what events missed."""
    import logging
    import threading

    config, folder = make_config(tmp_path, emulator)
    engine = Engine(load_settings(config))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    upkeep = engine.upkeep
    wait_for(lambda: upkeep.watcher is not None and upkeep.watcher.inotified)
    assert upkeep.watcher is not None
    upkeep.watcher.stop()  # from now on no event reaches the engine, as after a lost queue
    (folder / "missed.png").write_bytes(png(5, 5))
    time.sleep(0.3)
    assert not sidecar_of(folder / "missed.png").exists()
    upkeep.restart()  # a fresh watcher: it never saw the file being written
    time.sleep(0.3)
    assert not sidecar_of(folder / "missed.png").exists()
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    wait_for(lambda: sidecar_of(folder / "missed.png").exists())
    engine.stop()
    thread.join(timeout=20)


def test_an_injected_enospc_on_the_sidecar_is_retried_without_reuploading(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, folder = make_config(tmp_path, emulator)
    (folder / "disk.png").write_bytes(png(6, 6))
    real_write = pipeline_module.write_atomic
    failures = iter([True, True])

    def full_disk(path: Path, text: str) -> None:
        if next(failures, False):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, text)

    monkeypatch.setattr(pipeline_module, "write_atomic", full_disk)
    now = [time.time()]
    engine = Engine(load_settings(config), clock=lambda: now[0])
    assert engine.sync() == 1
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["files"]["uploaded"] == 1
    assert "No space left" in status["recent_failures"][0]["reason"]
    for _ in range(2):
        now[0] += 3600
        Engine(load_settings(config), clock=lambda: now[0]).sync()
    assert sidecar_of(folder / "disk.png").exists()
    assert len(emulator.uploads()) == 1


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> object:
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({result.stderr.decode().strip()}); "
            "the injected ENOSPC test covers this case"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_really_full_filesystem_delays_the_sidecar_and_loses_nothing(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    with small_filesystem(tmp_path / "small", "256k") as folder:
        config = write_config(
            tmp_path / "config.yaml",
            emulator,
            [{"path": folder}],
            state_dir=tmp_path / "state",
            extra=FAST_RETRIES,
        )
        daemon = start_daemon(config)
        image = folder / "full.png"
        data = png(20, 20, extra_bytes=100_000)
        filler = folder / "filler.bin"
        with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            out.write(b"\0" * (256 * 1024 - len(data) - 8192))
        image.write_bytes(data)
        with open(filler, "ab", buffering=0) as out, contextlib.suppress(OSError):
            while True:  # take every last block
                out.write(b"\0" * 512)
        wait_for(lambda: "No space left" in daemon.log() or "cannot write the sidecar" in daemon.log())
        assert image.read_bytes() == data, "the original is untouched"
        filler.unlink()
        wait_for(lambda: sidecar_of(image).exists())
        assert len(emulator.uploads()) == 1
        assert daemon.stop() == 0


def pushes(emulator: Emulator) -> list:
    return [c for c in emulator.baidu_calls() if c.endpoint == "pushPic"]


def test_a_sidecar_refresh_lost_to_a_full_disk_is_left_queued_and_done_by_the_next_start(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, folder = make_config(tmp_path, emulator)
    image = folder / "late.png"
    image.write_bytes(png(6, 6))
    real_write = pipeline_module.write_atomic

    def full_for_the_refresh(path: Path, text: str) -> None:
        if '"baidu"' in text:  # the rewrite after the push; the first sidecar fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, text)

    now = [time.time()]
    with monkeypatch.context() as patch:
        patch.setattr(pipeline_module, "write_atomic", full_for_the_refresh)
        assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 1  # reported as left to do
    assert len(pushes(emulator)) == 1 and not pushed(image)
    shown = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
    assert shown["baidu"]["sidecars_to_update"] == 1
    [waiting] = shown["sidecar_failures"]
    assert waiting["path"] == str(image) and "No space left on device" in waiting["reason"]
    assert "sidecar update waits" in run_cli("status", "-c", str(config)).stdout
    # Space is back, the refresh's backoff still runs (the clock stands): this start's
    # reconciliation rewrites the sidecar, with no second push and no upload.
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 0
    assert pushed(image)
    assert len(pushes(emulator)) == 1 and len(emulator.uploads()) == 1


@contextlib.contextmanager
def unwritable(folder: Path, how: str) -> Iterator[None]:
    """Make the small filesystem at `folder` refuse writes for the block: full, or read-only."""
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        return
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:  # take every last block
            out.write(b"\0" * 4096)
    try:
        yield
    finally:
        filler.unlink()


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_sidecar_the_push_could_not_update_is_caught_up_by_the_running_daemon_without_a_second_push(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, how: str
) -> None:
    """Full: the batcher retries the refresh with backoff until it fits. Read-only: so does it,
    and the folder's remount also makes the daemon reconcile it, which rewrites it too."""
    with small_filesystem(tmp_path / "small", "1m") as folder:
        config = write_config(
            tmp_path / "config.yaml",
            emulator,
            [{"path": folder}],
            state_dir=tmp_path / "state",
            extra=FAST_RETRIES,
        )
        emulator.set_faults(latency=1.0)  # time to take the disk away while the push is in flight
        daemon = start_daemon(config)
        image = folder / "late.png"
        image.write_bytes(png(7, 7))
        wait_for(lambda: sidecar_of(image).exists())
        with unwritable(folder, how):
            wait_for(lambda: pushes(emulator))
            wait_for(lambda: "could not update its sidecar" in daemon.log())
            time.sleep(2)  # a few retries while the disk stays unwritable
            assert not pushed(image)
        wait_for(lambda: pushed(image))
        assert daemon.log().count("could not update its sidecar") <= 8  # a backoff, not a hot loop
        assert len(pushes(emulator)) == 1 and len(emulator.uploads()) == 1
        assert daemon.stop() == 0


def test_a_full_disk_under_the_journal_stops_nothing_and_loses_nothing(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    # Large enough for SQLite's write-ahead log to grow to its checkpoint size once space is back.
    with small_filesystem(tmp_path / "state", "8m") as state:
        folder = tmp_path / "pics"
        folder.mkdir()
        config = write_config(
            tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=state, extra=FAST_RETRIES
        )
        daemon = start_daemon(config)
        (folder / "first.png").write_bytes(png(5, 5))
        wait_for(lambda: sidecar_of(folder / "first.png").exists())
        filler = state / "filler.bin"
        with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
        files = [folder / f"while-full-{n}.png" for n in range(40)]
        for n, path in enumerate(files):
            path.write_bytes(png(n + 10, 5, extra_bytes=2000))
        wait_for(lambda: "cannot write the journal" in daemon.log(), timeout=20)
        assert daemon.alive()
        filler.unlink()
        wait_for(lambda: all(sidecar_of(p).exists() for p in files), timeout=40)
        assert daemon.stop() == 0
        status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
        assert status["files"]["done"] == 41


def test_with_periodic_rescans_off_an_idle_daemon_sleeps(tmp_path: Path, emulator: Emulator) -> None:
    config, _folder = make_config(tmp_path, emulator, extra="rescan_interval: 0\n")
    engine = Engine(load_settings(config))
    engine._start(watch=True)
    try:
        engine._turn(until_idle=False)  # the start-up reconciliation; the timers are set
        assert engine._timeout() > 1.0  # a past rescan deadline made it wake every 5 ms
    finally:
        engine.stop()
        engine._shutdown()
