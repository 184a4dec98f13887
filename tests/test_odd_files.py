"""Files that once stopped the daemon or sent it spinning, found in review: names that are not
valid UTF-8, symlinks, files deleted while queued, and sidecar names that cannot be made.
The real daemon or `Engine.sync`, real files, the emulator on loopback."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import gif, png
from tests.test_moves import DIE_AFTER_RECORDING_A_MOVE, start_patched
from watchd import pipeline as pipeline_module
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine
from watchd.journal import Journal
from watchd.logs import SecretFilter
from watchd.pipeline import Intake


def _folder_and_config(tmp_path: Path, emulator: Emulator, **rules: object) -> tuple[Path, Path]:
    folder = tmp_path / "w"
    folder.mkdir(parents=True)
    entry: dict[str, object] = {"path": folder}
    if rules:
        entry["rules"] = rules
    return folder, write_config(tmp_path / "c.yaml", emulator, [entry], state_dir=tmp_path / "state")


def _stem_named_sidecars(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path]:
    """A folder whose sidecars are named `{stem}.txt`: cat.png and cat.gif would share cat.txt."""
    return _folder_and_config(tmp_path, emulator, sidecar={"name": "{stem}.txt", "format": "txt"})


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning_by_the_daemon_and_by_sync(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    with open(latin1, "wb") as out:
        out.write(png(10, 10))
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "caf\ufffd.png" in result.stderr and "not valid UTF-8" in result.stderr
    daemon = start_daemon(config)
    with open(os.path.join(os.fsencode(folder), b"ni\xf1o.png"), "wb") as out:
        out.write(png(11, 11))
    (folder / "ok.png").write_bytes(png(12, 12))
    wait_for(lambda: sidecar_of(folder / "ok.png").exists())
    wait_for(lambda: "ni\ufffdo.png" in daemon.log())
    assert daemon.alive() and [u.name for u in emulator.uploads()] == ["ok.png"]
    assert daemon.stop() == 0


def test_symlinks_are_not_followed_whether_scanned_or_seen_arriving(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(10, 10))
    folder, config = _folder_and_config(tmp_path, emulator)
    (folder / "before.png").symlink_to(outside / "secret.png")
    daemon = start_daemon(config)
    (folder / "after.png").symlink_to(outside / "secret.png")
    (folder / "real.png").write_bytes(png(12, 12))
    wait_for(lambda: sidecar_of(folder / "real.png").exists())
    time.sleep(2.5)  # past the 1 s settle time of a file seen created but never closed
    assert [u.name for u in emulator.uploads()] == ["real.png"]
    assert daemon.stop() == 0


def test_a_file_deleted_while_queued_ends_the_sync_instead_of_spinning(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    for n in range(3):
        (folder / f"f{n}.png").write_bytes(png(n + 1, 5))
    engine = Engine(load_settings(config), sleep=lambda _s: None)
    real_process = engine.pipeline.process
    processed: list[int] = []

    def delete_first(file_id: int) -> str:  # the user deletes f0.png after it was queued
        processed.append(file_id)
        (folder / "f0.png").unlink(missing_ok=True)
        return real_process(file_id)

    engine.pipeline.process = delete_first  # type: ignore[method-assign]
    assert engine.sync() in (0, 1)
    assert len(processed) < 10  # once per file, not tens of thousands of times
    assert sorted(u.name for u in emulator.uploads()) == ["f1.png", "f2.png"]


def test_a_sidecar_name_that_cannot_be_made_fails_the_file_not_the_daemon(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator, sidecar={"name": "{stem}", "format": "txt"})
    daemon = start_daemon(config)
    (folder / "cat.png.png").write_bytes(png(10, 10))  # its sidecar would be named cat.png: refused
    status = lambda: json.loads(run_cli("status", "-c", str(config), "--json").stdout)  # noqa: E731
    failure = wait_for(lambda: next(iter(status()["recent_failures"]), None))
    assert failure["state"] == "failed" and "names an image (cat.png)" in failure["reason"]
    (folder / "more").mkdir()
    (folder / "more" / "cow.png").write_bytes(png(12, 12))
    os.rename(folder / "cat.png.png", folder / "more" / "cat.png.png")  # a move must not kill it either
    time.sleep(1.0)
    assert daemon.alive()
    assert daemon.stop() == 0


def test_two_images_never_share_a_sidecar_and_a_deletion_keeps_the_others(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder, config = _stem_named_sidecars(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    link = (folder / "cat.txt").read_text(encoding="utf-8")
    (folder / "cat.gif").write_bytes(gif(11, 11))  # {stem}.txt names cat.txt again
    assert run_cli("sync", "-c", str(config)).returncode == 1
    assert (folder / "cat.txt").read_text(encoding="utf-8") == link  # cat.png's link, untouched
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    (failure,) = status["recent_failures"]
    assert (
        failure["path"] == str(folder / "cat.gif") and "already the sidecar of cat.png" in failure["reason"]
    )
    (folder / "cat.gif").unlink()
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert (folder / "cat.txt").read_text(encoding="utf-8") == link  # not removed with cat.gif


def test_two_files_naming_one_sidecar_at_once_publish_one_and_the_other_retried_is_not_uploaded_again(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Taken in together, both are uploaded at once; one of them gets cat.txt."""
    folder, config = _stem_named_sidecars(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    (folder / "cat.gif").write_bytes(gif(11, 11))
    assert run_cli("sync", "-c", str(config)).returncode == 1
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    (failure,) = status["recent_failures"]
    loser = Path(failure["path"])
    winner = folder / ("cat.png" if loser.name == "cat.gif" else "cat.gif")
    assert f"already the sidecar of {winner.name}" in failure["reason"]
    links = {u.name: u.link for u in emulator.uploads()}
    assert (folder / "cat.txt").read_text(encoding="utf-8").strip() == links[winner.name]
    winner.unlink()  # the way out the failure's reason shows: cat.txt is free now
    assert run_cli("retry", "-c", str(config), str(loser)).returncode == 0
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert (folder / "cat.txt").read_text(encoding="utf-8").strip() == links[loser.name]
    assert len(emulator.uploads()) == 2  # the retry wrote its sidecar, it did not upload it again


def test_a_name_too_long_for_its_sidecar_is_refused_before_its_upload_and_a_rename_publishes_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    long = folder / ("L" * 251 + ".png")  # 255 bytes: its .link.json sidecar could not be named
    long.write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(config)).returncode == 1
    (failure,) = json.loads(run_cli("status", "-c", str(config), "--json").stdout)["recent_failures"]
    assert "sidecar's name would be over 255 bytes" in failure["reason"]
    assert emulator.uploads() == []  # found before the upload, which could not have been used
    os.rename(long, folder / "short.png")
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert sidecar_of(folder / "short.png").exists() and len(emulator.uploads()) == 1


def test_a_file_that_failed_after_its_upload_is_published_by_a_rename_without_a_second_upload(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder, config = _stem_named_sidecars(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    daemon = start_daemon(config)
    (folder / "cat.gif").write_bytes(gif(11, 11))  # uploaded, then failed: cat.txt is cat.png's
    status = lambda: json.loads(run_cli("status", "-c", str(config), "--json").stdout)  # noqa: E731
    wait_for(lambda: status()["recent_failures"])
    os.rename(folder / "cat.gif", folder / "kitten.gif")
    wait_for(lambda: (folder / "kitten.txt").exists())
    assert (folder / "kitten.txt").read_text(encoding="utf-8").strip() == emulator.uploads()[1].link
    assert len(emulator.uploads()) == 2 and status()["recent_failures"] == []
    assert daemon.stop() == 0


def test_relpath_and_links_are_refused_in_sidecar_names_at_config_time(
    tmp_path: Path, emulator: Emulator
) -> None:
    for template in ("{relpath}.link.json", "{link}.txt"):
        _folder, config = _folder_and_config(tmp_path / template[1:5], emulator, sidecar={"name": template})
        result = run_cli("check", "-c", str(config))
        assert result.returncode != 0 and "sidecar.name" in result.stderr + result.stdout


def test_sync_says_so_when_baidu_items_are_left_queued(tmp_path: Path, emulator: Emulator) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    emulator.set_faults(baidu_quota=0)
    assert Engine(load_settings(config), sleep=lambda _s: None).sync() == 1


def test_a_sidecar_that_cannot_be_removed_does_not_stop_the_deletion(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    assert Engine(load_settings(config), sleep=lambda _s: None).sync() == 0
    (folder / "cat.png").unlink()

    def refuse(path: Path) -> None:  # e.g. a read-only directory
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pipeline_module, "remove_sidecar", refuse)
    engine = Engine(load_settings(config), sleep=lambda _s: None)
    assert engine.sync() == 0
    assert [c.endpoint for c in emulator.baidu_calls()] == ["pushPic", "delPic"]


def test_a_file_deleted_while_it_is_being_inspected_is_let_go(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    real_inspect = pipeline_module.inspect_image

    def deleted_first(path: Path, *args: object) -> object:
        path.unlink()
        return real_inspect(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_module, "inspect_image", deleted_first)
    engine = Engine(load_settings(config), sleep=lambda _s: None)
    assert engine.pipeline.intake(str(folder / "cat.png"), settled=True, row=None) is Intake.IGNORED


def test_an_internal_errors_reason_is_redacted_and_never_a_repr(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    redacting = logging.NullHandler()  # what setup_logging installs, without its global effects
    redacting.addFilter(SecretFilter(["s3cret-key-value"]))
    logging.getLogger().addHandler(redacting)
    request.addfinalizer(lambda: logging.getLogger().removeHandler(redacting))
    engine = Engine(load_settings(config), sleep=lambda _s: None)

    def broken(file_id: int) -> str:
        raise UnicodeEncodeError("ascii", "Bearer s3cret-key-value\xa0", 23, 24, "ordinal not in range")

    monkeypatch.setattr(engine.pipeline, "process", broken)
    engine.sync()
    reason = Journal.open(tmp_path / "state").get(str(folder / "cat.png"))
    assert reason is not None and reason.reason is not None
    assert reason.reason.startswith("internal error: UnicodeEncodeError") and "s3cret" not in reason.reason


def test_a_sidecar_name_can_never_overwrite_an_image(tmp_path: Path, emulator: Emulator) -> None:
    for n, template in enumerate(("{stem}.jpg", "{stem}.PNG", "{id}.webp", "{name}", "old_{stem}.{ext}")):
        _folder, config = _folder_and_config(tmp_path / str(n), emulator, sidecar={"name": template})
        result = run_cli("check", "-c", str(config))
        assert result.returncode != 0 and "must not end in an image suffix" in result.stdout + result.stderr
    bare_stem = {"name": "{stem}", "format": "txt"}
    folder, config = _folder_and_config(tmp_path / "stem", emulator, sidecar=bare_stem)
    (folder / "cat.png").write_bytes(png(10, 10))
    (folder / "cat.png.png").write_bytes(png(11, 11))  # its "{stem}" sidecar would be cat.png
    Engine(load_settings(config), sleep=lambda _s: None).sync()
    assert (folder / "cat.png").read_bytes() == png(10, 10)
    failed = Journal.open(tmp_path / "stem" / "state").get(str(folder / "cat.png.png"))
    assert failed is not None and failed.state == "failed" and "names an image" in (failed.reason or "")


@pytest.mark.parametrize("seen_by", ["an event", "the start-up scan"])
def test_a_firefox_download_is_published_without_reporting_its_empty_placeholder(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, seen_by: str
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    if seen_by == "an event":
        daemon = start_daemon(config)
    image = png(10, 10)
    (folder / "x.png").write_bytes(b"")  # Firefox's placeholder, next to the download
    with open(folder / "x.png.part", "wb") as part:
        part.write(image[:100])
        part.flush()
        if seen_by == "the start-up scan":
            daemon = start_daemon(config)
        time.sleep(2.5)  # a slow download: longer than the 1 s settle time
        part.write(image[100:])
    os.rename(folder / "x.png.part", folder / "x.png")
    wait_for(lambda: sidecar_of(folder / "x.png").exists())
    assert "is empty" not in daemon.log()
    assert json.loads(run_cli("status", "-c", str(config), "--json").stdout)["recent_failures"] == []
    assert daemon.stop() == 0


def test_a_long_name_gets_its_sidecar_and_one_too_long_for_a_sidecar_fails_unsent(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder, config = _folder_and_config(tmp_path, emulator)
    fits = folder / ("f" * 230 + ".png")  # its sidecar fits in 255 bytes; its temp name would not
    too_long = folder / ("t" * 246 + ".png")  # no sidecar name fits
    fits.write_bytes(png(3, 3))
    too_long.write_bytes(png(4, 4))
    now = [time.time()]
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 1
    assert sidecar_of(fits).exists() and len(emulator.uploads()) == 1
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    (failure,) = status["recent_failures"]
    assert "longer than a file name may be: shorten the file's name" in failure["reason"]
    now[0] += 3600  # failed for good, not retried later (and never uploaded)
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 0
    assert len(emulator.uploads()) == 1


def test_a_kill_right_after_a_failed_file_is_renamed_still_publishes_it_under_its_new_name(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    """The rename and the sidecar retry it calls for are one transaction."""
    folder, config = _stem_named_sidecars(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    (folder / "cat.gif").write_bytes(gif(11, 11))  # uploaded, then failed: cat.txt is cat.png's
    assert run_cli("sync", "-c", str(config)).returncode == 1
    daemon = start_patched(tmp_path, start_daemon, config, DIE_AFTER_RECORDING_A_MOVE)
    assert daemon.process is not None
    os.rename(folder / "cat.gif", folder / "kitten.gif")
    assert daemon.process.wait(timeout=20) == 137
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert (folder / "kitten.txt").read_text(encoding="utf-8").strip() == emulator.uploads()[1].link
    assert len(emulator.uploads()) == 2


def test_a_file_moved_onto_a_sidecar_name_already_taken_keeps_no_sidecar_of_its_old_name(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder, config = _stem_named_sidecars(tmp_path, emulator)
    (folder / "cat.png").write_bytes(png(10, 10))
    (folder / "dog.gif").write_bytes(gif(11, 11))
    now = [time.time()]
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 0
    os.rename(folder / "dog.gif", folder / "cat.gif")  # while stopped: cat.txt is cat.png's
    Engine(load_settings(config), clock=lambda: now[0]).sync()
    now[0] += 60  # its sidecar is tried again, and fails for good
    assert Engine(load_settings(config), clock=lambda: now[0]).sync() == 1
    assert sorted(p.name for p in folder.iterdir()) == ["cat.gif", "cat.png", "cat.txt"]  # no dog.txt
    (failure,) = json.loads(run_cli("status", "-c", str(config), "--json").stdout)["recent_failures"]
    assert (
        failure["path"] == str(folder / "cat.gif") and "already the sidecar of cat.png" in failure["reason"]
    )
    assert len(emulator.uploads()) == 2
