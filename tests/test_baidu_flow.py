"""Baidu submission and withdrawal end to end, against the emulator over loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd import engine as engine_module
from watchd import pipeline as pipeline_module
from watchd.batcher import BaiduBatcher
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine
from watchd.errors import TransientError
from watchd.indexers.baidu import BaiduIndexer
from watchd.indexers.base import ItemResult, PushItem
from watchd.journal import OutboxRow


def pushes(emulator: Emulator) -> list:
    return [c for c in emulator.baidu_calls() if c.endpoint == "pushPic"]


def deletes(emulator: Emulator) -> list:
    return [c for c in emulator.baidu_calls() if c.endpoint == "delPic"]


@pytest.fixture
def setup(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path, Path]:
    public = tmp_path / "public"
    private = tmp_path / "private"
    public.mkdir()
    private.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        [
            {
                "path": public,
                "rules": {"tags": ["a", "b"], "copyright": True, "title": "{stem} in high resolution"},
            },
            {"path": private, "rules": {"baidu": False}},
        ],
        state_dir=tmp_path / "state",
        linger=1.0,
    )
    return config, public, private


def test_45_images_are_pushed_once_each_in_batches_of_20_20_5(
    setup: tuple[Path, Path, Path], emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, public, private = setup
    daemon = start_daemon(config)
    for n in range(45):
        (public / f"img{n:02d}.png").write_bytes(png(n + 1, 7))
    for n in range(3):
        (private / f"private{n}.png").write_bytes(png(n + 1, 9))
    wait_for(lambda: sum(len(c.items) for c in pushes(emulator) if c.errno == 0) >= 45, timeout=30)
    time.sleep(1.5)
    calls = pushes(emulator)
    assert [len(c.items) for c in calls] == [20, 20, 5]
    items = [item for call in calls for item in call.items]
    links = {u.link for u in emulator.uploads() if u.name.startswith("img")}
    assert {item["objurl"] for item in items} == links
    assert len({item["id"] for item in items}) == 45
    assert all(item["tags"] == "a#b" and item["copyright"] == 1 for item in items)
    assert all(item["extra"]["modify"] == "0" for item in items)
    assert all(item["title"].endswith(" in high resolution") for item in items)
    sidecar = json.loads(sidecar_of(public / "img00.png").read_text(encoding="utf-8"))
    wait_for(lambda: "baidu" in json.loads(sidecar_of(public / "img44.png").read_text(encoding="utf-8")))
    sidecar = json.loads(sidecar_of(public / "img00.png").read_text(encoding="utf-8"))
    assert sidecar["baidu"]["id"] in {item["id"] for item in items}
    assert all(sidecar_of(private / f"private{n}.png").exists() for n in range(3))
    assert daemon.stop() == 0


def test_a_files_name_in_fromurl_is_percent_encoded_as_text_not_read_as_url_syntax(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "gallery"
    (folder / "new & old").mkdir(parents=True)
    rules = {"fromurl": "https://example.com/{relpath}?from=watchd"}
    config = write_config(
        tmp_path / "config.yaml", emulator, [{"path": folder, "rules": rules}], state_dir=tmp_path / "s"
    )
    (folder / "new & old" / "котик #1 50%20off.png").write_bytes(png(3, 3))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    (item,) = pushes(emulator)[0].items
    assert item["fromurl"] == (
        "https://example.com/new%20%26%20old/%D0%BA%D0%BE%D1%82%D0%B8%D0%BA%20%231%2050%2520off.png?from=watchd"
    )


def test_modify_rename_and_delete(
    setup: tuple[Path, Path, Path], emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, public, _private = setup
    daemon = start_daemon(config)
    original = public / "cat photo.png"
    original.write_bytes(png(10, 10))
    wait_for(lambda: pushes(emulator))
    first_id = pushes(emulator)[0].items[0]["id"]

    original.write_bytes(png(11, 10))  # content change
    wait_for(lambda: len(pushes(emulator)) == 2)
    modify = pushes(emulator)[1].items[0]
    assert modify["id"] == first_id and modify["extra"]["modify"] == "1"
    assert len(emulator.uploads()) == 2

    renamed = public / "sub" / "renamed cat.png"
    renamed.parent.mkdir()
    os.rename(original, renamed)
    wait_for(lambda: sidecar_of(renamed).exists())
    # The new sidecar is written before the move is committed and the old one removed.
    wait_for(lambda: not sidecar_of(original).exists())
    time.sleep(1.5)
    assert len(emulator.uploads()) == 2 and not deletes(emulator)

    renamed.unlink()
    wait_for(lambda: deletes(emulator))
    assert deletes(emulator)[0].items == [{"type": "id", "key": first_id}]
    wait_for(lambda: not sidecar_of(renamed).exists())
    assert daemon.stop() == 0


def test_deleting_12_withdraws_in_calls_of_10_and_2_also_while_stopped(
    setup: tuple[Path, Path, Path], emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, public, _private = setup
    files = [public / f"d{n}.png" for n in range(30)]
    for n, path in enumerate(files):
        path.write_bytes(png(n + 1, 3))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    daemon = start_daemon(config)
    for path in files[:12]:
        path.unlink()
    wait_for(lambda: sum(len(c.items) for c in deletes(emulator)) == 12)
    assert sorted(len(c.items) for c in deletes(emulator)) == [2, 10]
    assert not any(sidecar_of(p).exists() for p in files[:12])
    assert daemon.stop() == 0

    for path in files[12:15]:
        path.unlink()
    daemon = start_daemon(config)
    wait_for(lambda: sum(len(c.items) for c in deletes(emulator)) == 15)
    assert emulator.uploads().__len__() == 30
    assert daemon.stop() == 0


def test_a_vanished_root_withdraws_nothing(
    setup: tuple[Path, Path, Path], emulator: Emulator, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config, public, _private = setup
    for n in range(5):
        (public / f"v{n}.png").write_bytes(png(n + 2, 2))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    daemon = start_daemon(config)
    os.rename(public, tmp_path / "unmounted")
    time.sleep(3)
    assert daemon.stop() == 0
    daemon = start_daemon(config)  # starting with the root missing
    time.sleep(3)
    assert deletes(emulator) == []
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["folders"][0]["available"] is False
    os.rename(tmp_path / "unmounted", public)
    time.sleep(2)
    assert deletes(emulator) == []
    assert daemon.stop() == 0


def test_quota_pauses_baidu_until_the_reset_then_resumes(
    setup: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, _private = setup
    now = [1_800_000_000.0]
    emulator.set_faults(baidu_quota=3)
    for n in range(5):
        (public / f"q{n}.png").write_bytes(png(n + 1, 5))
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    assert engine.sync() == 1  # Baidu items are left queued behind the quota
    first_calls = len(pushes(emulator))
    assert any(c.errno == 301002 for c in pushes(emulator))
    (public / "q9.png").write_bytes(png(30, 5))
    now[0] += 3600
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    engine.sync()
    assert len(pushes(emulator)) == first_calls, "no Baidu call while the quota is used up"
    emulator.set_faults(baidu_quota=None)
    now[0] += 2 * 86400
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    assert engine.sync() == 0
    stored = emulator.baidu_index()
    assert len(stored) == 6
    # A push the quota refused stored nothing: sent again, it is a first submission, not a `modify`.
    assert {item["extra"]["modify"] for call in pushes(emulator) for item in call.items} == {"0"}


def test_baidus_unpublished_daily_quota_is_learned_from_its_refusals_and_used_to_the_last_unit(
    tmp_path: Path,
) -> None:
    now = [1_800_000_000.0]  # 12:00 in Shanghai
    folder = tmp_path / "public"
    folder.mkdir()
    with Emulator(clock=lambda: now[0]) as emulator:
        emulator.set_faults(baidu_quota=25)
        config = write_config(
            tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s"
        )

        def sync_day(first: int, count: int) -> list[tuple[int, int]]:
            """(items, errno) of the pushPic calls of one sync of `count` new images."""
            calls = len(pushes(emulator))
            for n in range(first, first + count):
                (folder / f"img{n:02d}.png").write_bytes(png(n + 1, 3))
            Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None).sync()
            return [(len(c.items), c.errno) for c in pushes(emulator)[calls:]]

        # Day 1: a call refused as over the quota is halved until the last unit is used.
        assert sync_day(0, 45) == [(20, 0), (20, 301002), (10, 301002), (5, 0), (2, 301002), (1, 301002)]
        assert len(emulator.baidu_index()) == 25
        status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
        assert status["baidu"]["learned_quota"] == 25 and status["baidu"]["daily_quota"] is None
        assert "(learned)" in run_cli("status", "-c", str(config)).stdout
        # Day 2: calls end on the learned quota; one item is tried past it, in case it grew.
        now[0] += 86400
        assert sync_day(45, 10) == [(20, 0), (5, 0), (1, 301002)]
        # Day 3: the quota grew to 30; what Baidu takes past 25 is learned again.
        now[0] += 86400
        emulator.set_faults(baidu_quota=30)
        taken_past_learned = [(20, 0), (5, 0), (1, 0)]  # 26 of 30: the quota is not known from here
        assert sync_day(55, 40) == [
            *taken_past_learned,
            (19, 301002),
            (9, 301002),
            (4, 0),
            (2, 301002),
            (1, 301002),
        ]
        status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
        assert status["baidu"]["learned_quota"] == 30 and len(emulator.baidu_index()) == 25 + 25 + 30


def test_one_refused_item_among_20_fails_alone_and_the_19_others_go_through(
    setup: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, _private = setup
    emulator.set_faults(reject_titles_containing="forbidden")
    for n in range(19):
        (public / f"fine{n:02d}.png").write_bytes(png(n + 1, 4))
    (public / "forbidden.png").write_bytes(png(40, 4))
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 1, "a failed submission fails the sync"
    assert "Baidu: 19 submitted, 0 withdrawn, 1 failed" in result.stderr
    stored = emulator.baidu_index()
    assert len(stored) == 19
    assert not any("forbidden" in item["title"] for item in stored.values())
    assert emulator.baidu_calls()[0].errno == 2 and len(emulator.baidu_calls()[0].items) == 20
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    (failure,) = status["baidu_failures"]
    assert failure["action"] == "push" and failure["reason"]
    assert "baidu" not in json.loads(sidecar_of(public / "forbidden.png").read_text(encoding="utf-8"))


def test_moves_while_stopped_are_moves_not_deletions(
    setup: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, _private = setup
    (public / "before.png").write_bytes(png(21, 21))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    baidu_id = json.loads(sidecar_of(public / "before.png").read_text(encoding="utf-8"))["baidu"]["id"]
    (public / "later").mkdir()
    os.rename(public / "before.png", public / "later" / "after.png")
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert len(emulator.uploads()) == 1 and deletes(emulator) == []
    assert not sidecar_of(public / "before.png").exists()
    moved = json.loads(sidecar_of(public / "later" / "after.png").read_text(encoding="utf-8"))
    assert moved["baidu"]["id"] == baidu_id and moved["name"] == "after.png"


def test_only_sidecars_that_show_baidu_are_rewritten_after_the_push(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_json, as_text = tmp_path / "json", tmp_path / "txt"
    as_json.mkdir()
    as_text.mkdir()
    for folder in (as_json, as_text):
        for n in range(3):
            (folder / f"img{n}.png").write_bytes(png(n + 1, 5))
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        [{"path": as_json}, {"path": as_text, "rules": {"sidecar": {"format": "txt"}}}],
        state_dir=tmp_path / "state",
    )
    writes: list[Path] = []
    real_write = pipeline_module.write_atomic

    def counting_write(path: Path, text: str) -> None:  # a spy: the real write still happens
        writes.append(path)
        real_write(path, text)

    monkeypatch.setattr(pipeline_module, "write_atomic", counting_write)
    assert Engine(load_settings(config)).sync() == 0
    assert sum(len(c.items) for c in pushes(emulator)) == 6
    per_folder = {folder: sum(1 for w in writes if w.parent == folder) for folder in (as_json, as_text)}
    assert per_folder == {as_json: 6, as_text: 3}  # json: written, then given baidu; txt: once
    assert "baidu" in json.loads(sidecar_of(as_json / "img0.png").read_text(encoding="utf-8"))


def _fifteen_images_and_a_baidu_quota_of_ten(tmp_path: Path, emulator: Emulator) -> Path:
    """A public folder holding 15 images, and its config, whose Baidu daily_quota is 10."""
    public = tmp_path / "public"
    public.mkdir()
    config = write_config(
        tmp_path / "config.yaml", emulator, [{"path": public}], state_dir=tmp_path / "state", baidu_quota=10
    )
    for n in range(15):
        (public / f"q{n:02d}.png").write_bytes(png(n + 1, 6))
    return config


def test_the_last_units_of_a_days_baidu_quota_are_used_and_the_rest_waits_for_the_reset(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = _fifteen_images_and_a_baidu_quota_of_ten(tmp_path, emulator)
    now = [1_800_000_000.0]
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    engine.sync()
    assert [len(c.items) for c in pushes(emulator)] == [10]  # not 0: a full 20 did not fit
    now[0] += 86400
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    assert engine.sync() == 0
    assert [len(c.items) for c in pushes(emulator)] == [10, 5]


def test_raising_a_used_up_baidu_daily_quota_sends_what_waited_for_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = _fifteen_images_and_a_baidu_quota_of_ten(tmp_path, emulator)
    assert run_cli("sync", "-c", str(config)).returncode == 1  # 5 left for tomorrow
    config.write_text(config.read_text().replace("daily_quota: 10", "daily_quota: 100"), encoding="utf-8")
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert [len(c.items) for c in pushes(emulator)] == [10, 5]
    assert len(emulator.baidu_index()) == 15


@pytest.fixture
def drained(tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """One Baidu folder, and a batcher that sends only when a sync drains it at its end, so a
    sync takes in every change before anything is sent."""
    monkeypatch.setattr(BaiduBatcher, "run_forever", lambda _self: None)
    public = tmp_path / "public"
    public.mkdir()
    return write_config(
        tmp_path / "config.yaml", emulator, [{"path": public}], state_dir=tmp_path / "state"
    ), public


def _killed_before_recording(
    _self: BaiduBatcher, _action: str, _rows: list[OutboxRow], _results: list[ItemResult]
) -> None:
    """As a kill -9 right after Baidu answered: the items stay "sending" in the journal."""


def test_a_file_deleted_after_its_push_reached_baidu_unrecorded_is_withdrawn(
    drained: tuple[Path, Path], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, public = drained
    gone = public / "gone.png"
    gone.write_bytes(png(4, 4))
    with monkeypatch.context() as patch:
        patch.setattr(BaiduBatcher, "_record", _killed_before_recording)
        Engine(load_settings(config)).sync()
    assert len(emulator.baidu_index()) == 1
    gone.unlink()  # while stopped: the restart requeues the push, then retires the file
    assert Engine(load_settings(config)).sync() == 0
    assert emulator.baidu_index() == {}
    assert [c.endpoint for c in emulator.baidu_calls()] == ["pushPic", "delPic"]


def test_a_push_in_flight_when_its_file_is_deleted_is_never_sent_again(
    drained: tuple[Path, Path], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, public = drained
    gone = public / "gone.png"
    gone.write_bytes(png(5, 5))
    now = [1_800_000_000.0]
    engine = Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None)
    real_push = BaiduIndexer.push

    def push_then_time_out(self: BaiduIndexer, items: list[PushItem]) -> list[ItemResult]:
        if gone.exists():  # the call reaches Baidu; meanwhile the original is deleted and retired
            real_push(self, items)
            gone.unlink()
            row = engine.journal.get(str(gone))
            assert row is not None
            engine.pipeline.retire(row)
        raise TransientError("timed out", service="baidu")

    with monkeypatch.context() as patch:
        patch.setattr(BaiduIndexer, "push", push_then_time_out)
        engine.sync()
    now[0] += 86_400  # any retry of the push would be due by now
    assert Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None).sync() == 0
    assert emulator.baidu_index() == {}
    assert [c.endpoint for c in emulator.baidu_calls()] == ["pushPic", "delPic"]


def test_a_change_after_a_push_reached_baidu_unrecorded_is_pushed_as_a_modification(
    drained: tuple[Path, Path], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, public = drained
    cat = public / "cat.png"
    cat.write_bytes(png(6, 6))
    with monkeypatch.context() as patch:
        patch.setattr(BaiduBatcher, "_record", _killed_before_recording)
        Engine(load_settings(config)).sync()
    cat.write_bytes(png(7, 6))  # changed while stopped: the restart re-uploads it
    assert Engine(load_settings(config)).sync() == 0
    assert [(c.items[0]["extra"]["modify"], c.errno) for c in pushes(emulator)] == [("0", 0), ("1", 0)]
    (stored,) = emulator.baidu_index().values()
    assert stored["objurl"] == emulator.uploads()[-1].link


# `watchd sync`, killed (SIGKILL, as by kill -9) the moment it starts to rewrite a sidecar to
# show the push Baidu has just accepted.
KILLED_AT_THE_REFRESH = """
import os, signal, sys
from watchd.cli import main
from watchd.pipeline import Pipeline

real_write_sidecar = Pipeline.write_sidecar

def write_sidecar(self, row, rules=None):
    if row.pushed_at is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write_sidecar(self, row, rules)

Pipeline.write_sidecar = write_sidecar
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_9_before_the_sidecar_shows_the_push_is_completed_at_the_next_start_without_a_second_push(
    setup: tuple[Path, Path, Path], emulator: Emulator, start_daemon: StartDaemon
) -> None:
    config, public, _private = setup
    image = public / "killed.png"
    image.write_bytes(png(8, 8))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_THE_REFRESH, "sync", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (push,) = pushes(emulator)
    assert "baidu" not in json.loads(sidecar_of(image).read_text(encoding="utf-8"))
    daemon = start_daemon(config)
    wait_for(lambda: "baidu" in json.loads(sidecar_of(image).read_text(encoding="utf-8")))
    assert daemon.stop() == 0
    assert pushes(emulator) == [push], "the push was recorded: it is not sent again"
    sidecar = json.loads(sidecar_of(image).read_text(encoding="utf-8"))
    assert sidecar["baidu"]["id"] == push.items[0]["id"]


def test_a_failing_baidu_is_left_alone_until_its_backoff_ends_not_tried_batch_by_batch(
    setup: tuple[Path, Path, Path], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, public, _private = setup
    for n in range(100):
        (public / f"b{n:03d}.png").write_bytes(png(n + 1, 5))
    calls: list[int] = []

    def down(self: BaiduIndexer, items: list[PushItem]) -> list[ItemResult]:
        calls.append(len(items))
        raise TransientError("HTTP 503 from Baidu", service="baidu")

    now = [1_800_000_000.0]
    with monkeypatch.context() as patch:
        patch.setattr(BaiduIndexer, "push", down)
        assert Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None).sync() == 1
    assert len(calls) == 2 * 3  # two batches with their quick retries, then Baidu is paused (was 5 x 3)
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["baidu"]["paused"]["kind"] == "outage" and status["baidu"]["queue_push"] == 100
    now[0] += 86_400
    assert Engine(load_settings(config), clock=lambda: now[0], sleep=lambda _s: None).sync() == 0
    assert sum(len(c.items) for c in pushes(emulator) if c.errno == 0) == 100


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_items_deferred_by_a_baidu_outage_are_sent_at_once_after_a_reload_or_restart_that_fixes_api_base(
    how: str, tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    state = tmp_path / "state"
    retry = "retry:\n  attempts: 1\n  requeue_initial: 120\n"  # a deferral lasts a minute at least
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=state, linger=1.0, extra=retry
    )
    good = config.read_text(encoding="utf-8")
    config.write_text(
        good.replace(emulator.baidu_url, f"http://127.0.0.1:{closed_port()}/x"), encoding="utf-8"
    )
    daemon = start_daemon(config)
    for n in range(3):
        (folder / f"d{n}.png").write_bytes(png(n + 2, 6))

    def deferred() -> int:
        with contextlib.closing(sqlite3.connect(state / "journal.sqlite3")) as db:
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM outbox "
                    "WHERE state = 'queued' AND attempts > 0 AND next_attempt_at > ?",
                    (time.time() + 30,),
                ).fetchone()[0]
            )

    wait_for(lambda: deferred() == 3, timeout=20)
    assert "items deferred" in daemon.log() and pushes(emulator) == []
    config.write_text(good, encoding="utf-8")  # api_base corrected
    if how == "reload":
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
    else:
        assert daemon.stop() == 0
        daemon = start_daemon(config)
    wait_for(lambda: sum(len(c.items) for c in pushes(emulator) if c.errno == 0) == 3, timeout=15)
    assert daemon.stop() == 0


def test_refused_submissions_name_their_files_and_are_retried_one_by_one(
    setup: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, _private = setup
    emulator.set_faults(reject_titles_containing="forbidden")
    for n in range(22):
        (public / f"forbidden{n:02d}.png").write_bytes(png(n + 1, 6))
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 1
    assert f"Baidu push of {public / 'forbidden00.png'} (id " in result.stderr  # the log names the file
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert len(status["baidu_failures"]) == 20 and status["baidu_failures_total"] == 22
    assert {f["path"] for f in status["baidu_failures"]} < {str(p) for p in public.glob("*.png")}
    public_folder = status["folders"][0]
    assert public_folder["files"]["done"] == 22 and public_folder["baidu_failed"] == 22
    human = run_cli("status", "-c", str(config)).stdout
    assert str(public / "forbidden21.png") in human and "… and 2 more Baidu failures (22 in all)" in human

    emulator.set_faults(reject_titles_containing=None)
    retried = run_cli("retry", "-c", str(config), str(public / "forbidden03.png"))
    assert retried.returncode == 0 and "1 queued again" in retried.stdout, retried.stderr
    run_cli("sync", "-c", str(config))
    assert [item["title"] for item in emulator.baidu_index().values()] == ["forbidden03 in high resolution"]
    assert pushes(emulator)[-1].items[0]["extra"]["modify"] == "0", "Baidu stored nothing of it before"
    assert json.loads(run_cli("status", "-c", str(config), "--json").stdout)["baidu_failures_total"] == 21


def test_forgetting_a_submitted_file_withdraws_its_old_baidu_entry(
    setup: tuple[Path, Path, Path], emulator: Emulator
) -> None:
    config, public, _private = setup
    (public / "again.png").write_bytes(png(3, 3))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    (old_id,) = emulator.baidu_index()
    result = run_cli("forget", "-c", str(config), str(public / "again.png"))
    assert result.returncode == 0 and old_id in result.stdout, result.stderr
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert [call.items for call in deletes(emulator)] == [[{"type": "id", "key": old_id}]]
    (new_id,) = emulator.baidu_index()  # uploaded and pushed again, as a new file
    assert new_id != old_id
    assert json.loads(sidecar_of(public / "again.png").read_text(encoding="utf-8"))["baidu"]["id"] == new_id


def test_forget_refuses_to_orphan_an_entry_the_rules_keep_unless_forced(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "kept"
    folder.mkdir()
    folders = [{"path": folder, "rules": {"delete": False}}]
    config = write_config(tmp_path / "c.yaml", emulator, folders, state_dir=tmp_path / "s")
    (folder / "k.png").write_bytes(png(4, 4))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    refused = run_cli("forget", "-c", str(config), str(folder / "k.png"))
    assert refused.returncode == 1
    assert "delete: false" in refused.stderr and "--force" in refused.stderr
    forced = run_cli("forget", "-c", str(config), "--force", str(folder / "k.png"))
    assert forced.returncode == 0 and "forgotten" in forced.stdout
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert deletes(emulator) == [] and len(emulator.baidu_index()) == 2  # as the user chose


def test_a_batcher_that_cannot_write_the_journal_says_so_once_without_a_traceback(
    setup: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _public, _private = setup
    engine = Engine(load_settings(config))
    batcher = engine.batcher
    assert batcher is not None
    looks = []

    def full_disk(*, force: bool) -> float:
        looks.append(force)
        if len(looks) == 3:
            batcher.stop()
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(batcher, "flush", full_disk)
    monkeypatch.setattr(batcher._wake, "wait", lambda timeout: True)  # no 30 s naps here
    with caplog.at_level(logging.ERROR, logger="watchd.batcher"):
        batcher.run_forever()
    assert len(looks) == 3
    said = [r for r in caplog.records if r.name == "watchd.batcher"]
    assert [r.getMessage() for r in said] == [
        "Baidu work waits for the journal, which cannot be written (database or disk is full); "
        "trying every 30 s"
    ]
    assert said[0].exc_info is None
    engine.journal.close()


class _DrainsAtOnce(threading.Thread):
    """As on a loaded machine: the drain's thread runs to its end before the loop that started
    it looks again (the rescan it caused still waits in the queue). Other threads as ever."""

    def start(self) -> None:
        super().start()
        if self.name == "baidu-drain":
            self.join()


def test_a_file_found_while_sync_drains_baidu_is_pushed_before_sync_ends(
    setup: tuple[Path, Path, Path], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, public, _private = setup
    monkeypatch.setattr(engine_module.threading, "Thread", _DrainsAtOnce)
    (public / "first.png").write_bytes(png(10, 10))
    engine = Engine(load_settings(config))
    real_drain = BaiduBatcher.drain

    def drain_and_find_one_more(batcher: BaiduBatcher) -> None:
        monkeypatch.setattr(BaiduBatcher, "drain", real_drain)
        (public / "late.png").write_bytes(png(11, 11))
        engine.upkeep.rescan_all()  # found while the first drain runs: uploaded, then pushed
        real_drain(batcher)

    monkeypatch.setattr(BaiduBatcher, "drain", drain_and_find_one_more)
    assert engine.sync() == 0
    assert sorted(item["title"].split(" ")[0] for call in pushes(emulator) for item in call.items) == [
        "first",
        "late",
    ]


def _configs_with_and_without_baidu(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path, Path]:
    """A folder, and two configs of it sharing one journal: with the `baidu:` section, and without."""
    public = tmp_path / "public"
    public.mkdir()
    state = tmp_path / "state"
    with_baidu = write_config(tmp_path / "with.yaml", emulator, [{"path": public}], state_dir=state)
    without = write_config(
        tmp_path / "without.yaml", emulator, [{"path": public}], state_dir=state, baidu=False
    )
    return public, with_baidu, without


def test_a_file_deleted_while_baidu_was_out_of_the_config_is_withdrawn_once_it_is_back(
    tmp_path: Path, emulator: Emulator
) -> None:
    public, with_baidu, without = _configs_with_and_without_baidu(tmp_path, emulator)
    (public / "gone.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(with_baidu)).returncode == 0
    assert len(emulator.baidu_index()) == 1
    (public / "gone.png").unlink()
    assert run_cli("sync", "-c", str(without)).returncode == 0  # nothing it can do is left undone
    assert len(emulator.baidu_index()) == 1
    assert run_cli("sync", "-c", str(with_baidu)).returncode == 0
    assert emulator.baidu_index() == {}


def test_retry_submits_a_file_published_while_baidu_was_out_of_the_config(
    tmp_path: Path, emulator: Emulator
) -> None:
    public, with_baidu, without = _configs_with_and_without_baidu(tmp_path, emulator)
    (public / "meanwhile.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(without)).returncode == 0
    assert run_cli("sync", "-c", str(with_baidu)).returncode == 0
    assert emulator.baidu_index() == {}, "not submitted on its own: the section was out on purpose"
    retried = run_cli("retry", "-c", str(with_baidu), str(public / "meanwhile.png"))
    assert retried.returncode == 0 and "queued for its first Baidu submission" in retried.stdout
    assert run_cli("sync", "-c", str(with_baidu)).returncode == 0
    (item_id,) = emulator.baidu_index()
    assert [c.items[0]["extra"]["modify"] for c in pushes(emulator)] == ["0"]
    assert (
        json.loads(sidecar_of(public / "meanwhile.png").read_text(encoding="utf-8"))["baidu"]["id"] == item_id
    )
    again = run_cli("retry", "-c", str(with_baidu), str(public / "meanwhile.png"))
    assert again.returncode == 1 and "nothing queued" in again.stderr  # submitted now: nothing to do
    assert len(emulator.uploads()) == 1  # never uploaded twice
