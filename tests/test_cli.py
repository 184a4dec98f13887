"""The command line as a user meets it: `check` messages, `status --json`, `retry`, `forget`."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, wait_for, write_config
from tests.imagegen import png
from tests.test_resilience import small_filesystem
from watchd.cli import main
from watchd.emulator import Emulator


def test_check_prints_the_effective_rules_per_folder(tmp_path: Path, emulator: Emulator) -> None:
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / ".watchd.yaml").write_text("tags: [cats]\ncopyright: true\n", encoding="utf-8")
    config = write_config(
        tmp_path / "c.yaml",
        emulator,
        [{"path": folder, "rules": {"album": "srXiv43"}}],
        state_dir=tmp_path / "s",
    )
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert str(folder) in result.stdout
    assert "srXiv43" in result.stdout
    assert "cats" in result.stdout
    assert "demo-secret" not in result.stdout + result.stderr


def test_check_never_shows_a_login_written_into_an_api_url(tmp_path: Path, emulator: Emulator) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    with_login = emulator.imageban_url.replace("http://", "http://gate:pa55word-9f2@")
    config.write_text(config.read_text().replace(emulator.imageban_url, with_login, 1), encoding="utf-8")
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert emulator.imageban_url in result.stdout
    assert "pa55word-9f2" not in result.stdout + result.stderr and "gate:" not in result.stdout


def test_check_names_an_unknown_key_with_its_line(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": tmp_path, "rules": {"titel": "x"}}], state_dir=tmp_path / "s"
    )
    result = run_cli("check", "-c", str(config))
    assert result.returncode != 0
    assert "titel" in result.stderr
    assert "c.yaml:" in result.stderr
    assert "title" in result.stderr  # the suggestion


def test_check_names_a_missing_environment_variable(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": tmp_path}], state_dir=tmp_path / "s")
    config.write_text(config.read_text().replace("${TEST_APP_TOKEN:-demo-token}", "${WATCHD_TEST_NOPE}"))
    result = run_cli("check", "-c", str(config))
    assert result.returncode != 0
    assert "WATCHD_TEST_NOPE" in result.stderr


def test_check_reports_bad_yaml_with_its_position(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("state_dir: /tmp\nhosts:\n  me: [unclosed\n", encoding="utf-8")
    result = run_cli("check", "-c", str(config))
    assert result.returncode != 0
    assert "c.yaml:" in result.stderr
    assert "line" in result.stderr.lower() or ":3" in result.stderr or ":4" in result.stderr


def test_check_with_a_broken_rule_file_prints_the_report_and_fails(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pics"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / ".watchd.yaml").write_text('titel: "{stem} x"\n', encoding="utf-8")
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    assert main(["check", "-c", str(config)]) == 2
    out, err = capsys.readouterr()
    assert f"folder {folder}" in out and "BROKEN, files below are not uploaded" in out  # the whole report
    assert "config OK" not in out
    assert f"{folder / 'a' / '.watchd.yaml'}:1: titel: unknown key" in err


def test_check_fails_where_baidu_is_turned_on_without_a_baidu_section(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    rule_file = folder / "sub" / ".watchd.yaml"
    rule_file.write_text("baidu: true\n", encoding="utf-8")
    config = write_config(
        tmp_path / "c.yaml",
        emulator,
        [{"path": folder, "rules": {"baidu": True}}],
        state_dir=tmp_path / "s",
        baidu=False,
    )
    line = config.read_text().splitlines().index('    rules: {"baidu": true}') + 1
    assert main(["check", "-c", str(config)]) == 2
    out, err = capsys.readouterr()
    assert f"folder {folder}" in out and "config OK" not in out  # the whole report, then the problems
    assert f"{config}:{line}: folders[0].rules.baidu: is true, but this file has no baidu: section" in err
    assert f"{rule_file}:1: baidu: is true, but {config} has no baidu: section" in err
    assert err.count("add one with app_id and app_token") == 2
    rule_file.write_text("baidu: false\n", encoding="utf-8")
    config.write_text(config.read_text().replace('{"baidu": true}', '{"baidu": false}'), encoding="utf-8")
    assert main(["check", "-c", str(config)]) == 0


def test_the_daemon_warns_of_baidu_turned_on_without_a_baidu_section_at_start_and_reload(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "c.yaml",
        emulator,
        [{"path": folder, "rules": {"baidu": True}}],
        state_dir=tmp_path / "s",
        baidu=False,
    )
    daemon = start_daemon(config)

    def warnings() -> list[str]:
        lines = [json.loads(line) for line in daemon.log().splitlines() if "rules.baidu: is true" in line]
        assert all(line["level"] == "warning" for line in lines)
        return [line["msg"] for line in lines]

    assert len(warnings()) == 1
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log())
    assert len(warnings()) == 2
    assert daemon.stop() == 0


def test_emulator_that_cannot_listen_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["emulator", "--port", port]) == 2
    assert capsys.readouterr().err == (
        f"watchd: emulator: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "pick another --port, or stop what listens there\n"
    )
    assert main(["emulator", "--port", "0", "--host", "no.such.host.invalid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("watchd: emulator: cannot listen on no.such.host.invalid:0: ")
    assert err.count("\n") == 1
    assert "pass --host a name or address of this machine" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["emulator", "--port", "99999"])
    assert exit_info.value.code == 2
    assert "argument --port: '99999' is not a port: use a number from 0 to 65535" in capsys.readouterr().err


def test_demo_in_a_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_bytes(b"")
    assert main(["demo", "--dir", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == (
        f"watchd: demo: cannot watch {tmp_path / 'afile'}: it exists and is not a folder; "
        "pass --dir a folder to watch (it is created if missing)\n"
    )


def test_every_argument_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["forget", "--help"])
    assert "files to drop, as they are or were on disk" in capsys.readouterr().out


def _synced_one_good_one_bad(tmp_path: Path, emulator: Emulator) -> tuple[Path, Path]:
    """A folder with ok.png published and bad.png (not an image) failed by one `sync`, and its config."""
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    (folder / "bad.png").write_bytes(b"nope")
    (folder / "ok.png").write_bytes(png(4, 4))
    assert run_cli("sync", "-c", str(config)).returncode == 1
    return folder, config


def test_status_calls_an_empty_folder_whose_files_the_journal_knows_unavailable(
    tmp_path: Path, emulator: Emulator
) -> None:
    """As the daemon does: the empty mount point of an unmounted share is not the folder."""
    folder = tmp_path / "share"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    (folder / "ok.png").write_bytes(png(4, 4))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    for entry in folder.iterdir():  # the share's content gone from view, as when unmounted
        entry.unlink()
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["folders"][0]["available"] is False


def test_status_json_retry_and_forget(tmp_path: Path, emulator: Emulator) -> None:
    folder, config = _synced_one_good_one_bad(tmp_path, emulator)
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["files"]["failed"] == 1 and status["files"]["done"] == 1
    assert status["folders"][0]["available"] is True
    assert status["hosts"]["me"]["auth"] == "account"
    assert status["hosts"]["me"]["used_today"] == 1
    assert status["baidu"]["submitted_today"] == 1
    assert [f["path"] for f in status["recent_failures"]] == [str(folder / "bad.png")]
    assert "demo-secret" not in json.dumps(status) and "demo-token" not in json.dumps(status)

    (folder / "bad.png").write_bytes(png(5, 5))
    result = run_cli("retry", "-c", str(config), str(folder / "bad.png"))
    assert result.returncode == 0 and "1 queued again" in result.stdout
    assert run_cli("sync", "-c", str(config)).returncode == 0
    assert (folder / "bad.png.link.json").exists()

    result = run_cli("forget", "-c", str(config), str(folder / "ok.png"))
    assert result.returncode == 0
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["files"]["done"] == 1 and status["files"]["deleted"] == 0  # forgotten, not deleted
    assert run_cli("sync", "-c", str(config)).returncode == 0  # ok.png is published again, as new
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert (status["files"]["done"], status["files"]["deleted"]) == (2, 0)
    assert status["folders"][0]["files"]["deleted"] == 0
    human = run_cli("status", "-c", str(config))
    assert human.returncode == 0 and str(folder) in human.stdout
    assert human.stdout.count("0 (all hosts)") == 1  # two hosts share one upload queue: shown once


def test_sync_off_a_terminal_prints_plain_progress_and_a_summary(tmp_path: Path, emulator: Emulator) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    for n in range(3):
        (folder / f"p{n}.png").write_bytes(png(n + 1, 2))
    result = run_cli("sync", "-c", str(config), "--log-level", "warning")
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("sync:")]
    assert lines[-2].startswith("sync: 3/3 files handled (")
    assert lines[-1] == (
        "sync: 3 published, 0 failed, 0 still queued (retry later or paused service); "
        "Baidu: 3 submitted, 0 withdrawn, 0 failed"
    )
    assert "\x1b[" not in result.stderr  # no colours or bars off a terminal


def test_status_json_has_a_stable_schema(tmp_path: Path, emulator: Emulator) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    result = run_cli("status", "-c", str(config), "--json")
    assert result.returncode == 1 and "has not run" in result.stderr
    assert not (tmp_path / "s").exists(), "status creates nothing"
    empty = json.loads(result.stdout)  # a script reading it before the first run still gets the schema
    assert empty["journal"] is None and set(empty["files"].values()) == {0}
    assert empty["queue"] == {"uploads": 0, "baidu": 0, "held_deletes": 0}
    assert run_cli("sync", "-c", str(config)).returncode == 0
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before == ["journal.sqlite3", "watchd.lock"]
    assert status["schema"] == empty["schema"] == 1
    assert set(empty) == set(status)
    assert set(status) == {
        "schema",
        "journal",
        "files",
        "queue",
        "folders",
        "hosts",
        "baidu",
        "paused",
        "recent_failures",
        "baidu_failures",
        "baidu_failures_total",
        "sidecar_failures",
        "unwatched",
    }
    assert status["unwatched"] == []
    assert set(status["files"]) == {"pending", "uploading", "uploaded", "done", "failed", "deleted"}
    assert set(status["queue"]) == {"uploads", "baidu", "held_deletes"}
    assert set(status["hosts"]["guest"]) == {"auth", "used_today", "daily_quota", "resets_at", "paused"}
    assert status["hosts"]["guest"]["daily_quota"] == 1000 and status["hosts"]["me"]["daily_quota"] == 1500
    assert set(status["baidu"]) == {
        "submitted_today",
        "daily_quota",
        "learned_quota",
        "resets_at",
        "queue_push",
        "queue_delete",
        "sidecars_to_update",
        "paused",
    }


def test_a_second_watchd_on_the_same_state_refuses_to_start(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    daemon = start_daemon(config)
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 2
    assert f"pid {daemon.process.pid}" in result.stderr and "already working" in result.stderr
    assert daemon.stop() == 0
    assert run_cli("sync", "-c", str(config)).returncode == 0


def test_an_unusable_state_dir_gets_a_clear_message(tmp_path: Path, emulator: Emulator) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the state directory should be")
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": tmp_path}], state_dir=tmp_path / "not-a-dir" / "state"
    )
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 2
    assert "cannot open the journal in" in result.stderr and "state_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_on_a_journal_it_cannot_read_says_so_without_a_traceback(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    state = tmp_path / "s"
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=state)
    assert run_cli("sync", "-c", str(config)).returncode == 0
    (state / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    for command in (["status"], ["status", "--json"], ["retry", "--failed"], ["confirm-deletes"]):
        result = run_cli(*command, "-c", str(config))
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "journal" in result.stderr


def test_forget_finds_a_file_through_a_symlinked_folder(tmp_path: Path, emulator: Emulator) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    folders = [{"path": tmp_path / "link"}]
    config = write_config(tmp_path / "c.yaml", emulator, folders, state_dir=tmp_path / "s")
    (real / "a.png").write_bytes(png(10, 10))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    result = run_cli("forget", "-c", str(config), str(tmp_path / "link" / "a.png"))
    assert result.returncode == 0 and "forgotten" in result.stdout, result.stderr


def test_status_shows_paths_with_brackets_as_they_are(tmp_path: Path, emulator: Emulator) -> None:
    folder = tmp_path / "[final] shots"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    (folder / "[holiday] beach.png").write_bytes(b"not an image at all")
    run_cli("sync", "-c", str(config))
    result = run_cli("status", "-c", str(config))
    assert "[final] shots" in result.stdout and "[holiday] beach.png" in result.stdout, result.stdout


def test_control_characters_in_a_file_name_reach_neither_the_log_nor_the_status_table(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Whoever can drop a file in a watched folder must not drive the admin's terminal."""
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    (folder / "esc\x1b[31mred\x1b[0m\nline.png").write_bytes(b"not an image at all")
    synced = run_cli("sync", "-c", str(config))
    table = run_cli("status", "-c", str(config), env={"COLUMNS": "400"}).stdout
    for output in (synced.stderr, table):
        assert "\x1b" not in output and "esc\\x1b[31mred\\x1b[0m\\nline.png" in output, output


def test_commands_that_only_read_the_journal_need_no_secrets(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")
    monkeypatch.setenv("TEST_SECRET_KEY", "key-from-the-service-environment")
    assert run_cli("sync", "-c", str(config)).returncode == 0
    config.write_text(
        config.read_text().replace("${TEST_SECRET_KEY:-demo-secret}", "${WATCHD_TEST_UNSET_KEY}"),
        encoding="utf-8",
    )
    monkeypatch.delenv("TEST_SECRET_KEY")  # as for `watchd status` outside the unit's EnvironmentFile
    assert run_cli("check", "-c", str(config)).returncode != 0  # the daemon does need it
    for command in (["status"], ["status", "--json"], ["retry", "--failed"], ["confirm-deletes"]):
        result = run_cli(*command, "-c", str(config))
        assert result.returncode == 0, (command, result.stderr)


def test_retry_says_why_a_named_file_was_not_queued(tmp_path: Path, emulator: Emulator) -> None:
    folder, config = _synced_one_good_one_bad(tmp_path, emulator)
    result = run_cli("retry", "-c", str(config), str(folder / "bad.png"), str(folder / "ok.png"), "/nope.png")
    assert result.returncode == 1, "a named file was not queued"
    assert "1 queued again" in result.stdout
    assert f"{folder / 'ok.png'}: nothing queued: not failed: it is done" in result.stderr
    assert "/nope.png: nothing queued: not in the journal" in result.stderr
    assert str(folder / "bad.png") not in result.stderr
    both = run_cli("retry", "-c", str(config), "--failed", str(folder / "bad.png"))
    assert both.returncode == 2 and "not both" in both.stderr


def test_sync_fails_and_says_so_when_a_watched_folder_is_unavailable(
    tmp_path: Path, emulator: Emulator
) -> None:
    here, missing = tmp_path / "here", tmp_path / "not-mounted"
    here.mkdir()
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": here}, {"path": missing}], state_dir=tmp_path / "s"
    )
    (here / "a.png").write_bytes(png(4, 4))
    result = run_cli("sync", "-c", str(config), "--log-level", "warning")
    assert result.returncode == 1
    assert "sync: 1 published, 0 failed" in result.stderr
    assert "; 1 watched folder unavailable" in result.stderr
    assert f"sync: watched folder {missing} is unavailable" in result.stderr
    missing.mkdir()
    assert run_cli("sync", "-c", str(config)).returncode == 0


def test_sync_whose_journal_disk_is_full_says_so_instead_of_a_traceback(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    with small_filesystem(tmp_path / "state", "1m") as state:
        config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=state)
        emulator.set_faults(http_error_rate=1.0)  # a first sync leaves an outage pause, which a start lifts
        (folder / "a.png").write_bytes(png(10, 10))
        (folder / "b.png").write_bytes(png(11, 10))
        assert run_cli("sync", "-c", str(config)).returncode == 1
        emulator.set_faults(http_error_rate=0.0)
        # Held open here, its WAL files stay: the next start opens the journal, then cannot write it.
        with contextlib.closing(sqlite3.connect(state / "journal.sqlite3")) as db:
            db.execute("SELECT COUNT(*) FROM files").fetchone()
            with open(state / "filler", "wb", buffering=0) as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 4096)
            result = run_cli("sync", "-c", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot write the journal in {state}: database or disk is full; free space" in result.stderr


JOURNAL_COMMANDS = (["confirm-deletes"], ["retry", "--failed"], ["retry", "a.png"], ["forget", "a.png"])


def test_commands_on_a_state_dir_without_a_journal_refuse_and_create_none(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A wrong config must not leave an empty journal behind and report success on it."""
    state = tmp_path / "nostate"
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": tmp_path}], state_dir=state)
    for command in JOURNAL_COMMANDS:
        result = run_cli(*command, "-c", str(config))
        assert result.returncode == 2 and result.stdout == "", (command, result.stdout)
        assert f"no journal in {state} (state_dir in {config})" in result.stderr, result.stderr
        assert "pass -c the config the daemon runs with" in result.stderr
        assert not state.exists()
    assert "has not run" in run_cli("status", "-c", str(config)).stderr


def test_commands_without_a_state_dir_refuse_the_default_one_and_say_how_to_reach_a_services(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root confirming a system service's deletions without its STATE_DIRECTORY, say."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": tmp_path}], state_dir=tmp_path / "s")
    config.write_text(config.read_text().split("\n", 1)[1], encoding="utf-8")  # no state_dir: the default
    for command in JOURNAL_COMMANDS:
        result = run_cli(*command, "-c", str(config))
        assert result.returncode == 2, (command, result.stdout)
        assert f"no journal in {home}/.local/state/watchd (the default" in result.stderr, result.stderr
        assert "its state directory as STATE_DIRECTORY" in result.stderr
    assert list(home.iterdir()) == []


def _table(text: str) -> dict[str, list[str]]:
    """The rows of the Folders table of `status`, by their first cell."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]
    return {row[0]: row[1:] for row in rows}


def test_status_counts_deleted_files_in_their_folder_and_those_of_folders_no_longer_watched(
    tmp_path: Path, emulator: Emulator
) -> None:
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    kept.mkdir()
    dropped.mkdir()
    both = [{"path": kept}, {"path": dropped}]
    config = write_config(tmp_path / "c.yaml", emulator, both, state_dir=tmp_path / "s")
    for n, folder in enumerate((kept, kept, dropped)):
        (folder / f"f{n}.png").write_bytes(png(n + 2, 4))
    assert run_cli("sync", "-c", str(config)).returncode == 0
    (kept / "f0.png").unlink()
    assert run_cli("sync", "-c", str(config)).returncode == 0
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert status["folders"][0]["files"]["deleted"] == status["files"]["deleted"] == 1

    write_config(tmp_path / "c.yaml", emulator, [{"path": kept}], state_dir=tmp_path / "s")
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    (folder,) = status["folders"]
    (unwatched,) = status["unwatched"]
    assert unwatched == {"path": str(dropped), "files": {**folder["files"], "deleted": 0}, "baidu_failed": 0}
    added = {state: n + unwatched["files"][state] for state, n in folder["files"].items()}
    assert added == status["files"]
    human = _table(run_cli("status", "-c", str(config)).stdout)
    assert human[str(kept)] == ["yes", "0", "0", "0", "1", "0", "1", "0"]
    assert human[str(dropped)] == ["not watched", "0", "0", "0", "1", "0", "0", "0"]
    assert human["total"] == ["", "0", "0", "0", "2", "0", "1", "0"]


def test_deferrals_are_logged_to_the_second(tmp_path: Path, emulator: Emulator) -> None:
    """Cut to the minute, a pause that ends at 07:14:24 was logged at 07:14:06 as "until 07:14"."""
    folder = tmp_path / "pics"
    folder.mkdir()
    retry = "retry:\n  attempts: 1\n"
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s", extra=retry
    )
    emulator.set_faults(http_error_rate=1.0)
    (folder / "a.png").write_bytes(png(4, 4))
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 1
    until = r"deferred until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d: "
    assert re.search(until, result.stderr), result.stderr
