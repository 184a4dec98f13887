"""setup_logging(): every layout writes one line per event to the real stderr file, redacted."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from watchd.logs import LogFormat, add_secrets, setup_logging
from watchd.watcher import Fact, FolderWatcher, Rescan, WatchSpec

SECRET = "s3cr3t/key+with=chars"
log = logging.getLogger("watchd.test")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """setup_logging() changes process-wide state; put it back for the other tests."""
    root, ours = logging.getLogger(), logging.getLogger("watchd")
    saved = (root.handlers[:], root.level, ours.level)
    for name in ("JOURNAL_STREAM", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    ours.setLevel(saved[2])


Setup = Callable[..., Callable[[], list[str]]]


@pytest.fixture
def stderr_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """A real file as sys.stderr; returns setup(level, fmt, secrets) -> read_lines().

    sys.stderr is replaced inside the test's call, where pytest's own capture no longer
    swaps it back.
    """
    path = tmp_path / "stderr.log"
    with path.open("w", encoding="utf-8") as stream:

        def setup(
            level: str = "info", fmt: LogFormat = "auto", secrets: tuple[str, ...] = ()
        ) -> Callable[[], list[str]]:
            monkeypatch.setattr("sys.stderr", stream)
            setup_logging(level, fmt, secrets)

            def read_lines() -> list[str]:
                stream.flush()
                return path.read_text(encoding="utf-8").splitlines()

            return read_lines

        yield setup


def journal_stream_of(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def boom() -> None:
    raise ValueError("bad\nthing")


# -- layouts -----------------------------------------------------------------------------


def test_json_lines_carry_extras(stderr_file: Setup) -> None:
    read = stderr_file(fmt="json")
    log.info("uploaded %s", "cat.png", extra={"path": "/p/cat.png", "service": "imageban:me", "code": "104"})
    log.warning("two\nlines")
    first, second = (json.loads(line) for line in read())
    assert first["msg"] == "uploaded cat.png"
    assert (first["level"], first["logger"]) == ("info", "watchd.test")
    assert (first["path"], first["service"], first["code"]) == ("/p/cat.png", "imageban:me", "104")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["ts"])
    assert second["msg"] == "two\nlines"
    assert second["level"] == "warning"


def test_json_exception_is_one_line_summary_at_info(stderr_file: Setup) -> None:
    read = stderr_file(fmt="json")
    try:
        boom()
    except ValueError:
        log.exception("upload failed")
    (line,) = read()
    assert json.loads(line)["exc"] == "ValueError: bad\nthing"


def test_plain_text_when_not_a_terminal(stderr_file: Setup) -> None:
    read = stderr_file()
    log.info("hello %s", "world")
    log.debug("not at info")
    assert len(read()) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00 INFO watchd\.test: hello world", read()[0])


def test_journald_gets_priority_prefix_and_no_timestamp(
    stderr_file: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(tmp_path / "stderr.log"))
    read = stderr_file(level="debug")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert read() == ["<7>d", "<6>i", "<4>w", "<3>e", "<2>c"]


def test_journal_stream_of_another_file_is_ignored(
    stderr_file: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "other").touch()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(tmp_path / "other"))
    read = stderr_file()
    log.info("hello")
    assert read()[0].endswith(" INFO watchd.test: hello")


def test_explicit_text_is_plain_even_under_journald(
    stderr_file: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(tmp_path / "stderr.log"))
    read = stderr_file(fmt="text")
    log.info("hello")
    assert read()[0].endswith(" INFO watchd.test: hello")


def on_terminal(monkeypatch: pytest.MonkeyPatch, emit: Callable[[], None], lines: int) -> str:
    """Run setup_logging with a pseudo-terminal as stderr; return the `lines` it printed."""
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as stream, os.fdopen(master, "rb", buffering=0) as reader:
        monkeypatch.setattr("sys.stderr", stream)
        setup_logging("info", "auto")
        emit()
        stream.flush()
        out = b""
        # The kernel hands pty output to the master side asynchronously: read until it is all there.
        while out.count(b"\n") < lines and select.select([reader], [], [], 5)[0]:
            out += reader.read(65536)
        return out.decode()


def test_terminal_is_coloured_by_level(monkeypatch: pytest.MonkeyPatch) -> None:
    out = on_terminal(monkeypatch, lambda: (log.info("fine"), log.error("broken")), lines=2)
    info, error = out.splitlines()
    assert re.fullmatch(r"\x1b\[2m\d\d:\d\d:\d\d\x1b\[0m \x1b\[36mINFO    \x1b\[0mfine", info)
    assert "\x1b[31mERROR   \x1b[0m\x1b[31mbroken\x1b[0m" in error


def test_terminal_respects_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = on_terminal(monkeypatch, lambda: log.error("broken"), lines=1)
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR   broken\r?\n", out)


# -- one event, one line -------------------------------------------------------------------


def test_multi_line_message_stays_one_line(stderr_file: Setup) -> None:
    read = stderr_file()
    log.warning("first\nsecond\r\nthird")
    (line,) = read()
    assert line.endswith("first\\nsecond\\nthird")


def test_traceback_is_one_line_summary_at_info(stderr_file: Setup) -> None:
    read = stderr_file()
    try:
        boom()
    except ValueError:
        log.exception("upload failed")
    (line,) = read()
    assert line.endswith("ERROR watchd.test: upload failed: ValueError: bad\\nthing")


def test_full_traceback_only_at_debug_still_one_line(stderr_file: Setup) -> None:
    read = stderr_file(level="debug")
    try:
        boom()
    except ValueError:
        log.exception("upload failed")
    (line,) = read()
    assert "upload failed: Traceback (most recent call last):\\n" in line
    assert 'in boom\\n    raise ValueError("bad\\nthing")' in line
    assert line.endswith("ValueError: bad\\nthing")


def test_other_loggers_only_pass_warnings(stderr_file: Setup) -> None:
    read = stderr_file(level="debug")
    logging.getLogger("httpx").info("HTTP Request: POST ...")
    logging.getLogger("httpx").warning("careful")
    assert [line.split(" ", 2)[2] for line in read()] == ["httpx: careful"]


@pytest.mark.parametrize("level", ["debug", "info", "error"])
def test_inotify_overflows_are_heard_at_every_level_and_shown_only_as_asked(
    stderr_file: Setup, tmp_path: Path, level: str
) -> None:
    read = stderr_file(level=level)
    facts: list[Fact] = []
    folder_watcher = FolderWatcher([WatchSpec(tmp_path, True, poll=False)], facts.append)
    folder_watcher.start()
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; events lost")
    finally:
        folder_watcher.stop()
    assert facts == [Rescan(str(tmp_path))]
    assert [line.split(" ", 2)[2] for line in read()] == (
        [] if level == "error" else ["watchdog.observers.inotify_c: Inotify queue overflowed; events lost"]
    )


def test_second_setup_replaces_the_first(stderr_file: Setup) -> None:
    stderr_file()
    read = stderr_file(fmt="json")
    log.info("once")
    assert [json.loads(line)["msg"] for line in read()] == ["once"]


def test_unformattable_arguments_do_not_raise(stderr_file: Setup) -> None:
    read = stderr_file()
    # Straight to our handler: pytest's own capture handler would raise on this record first.
    (handler,) = (
        h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.filters
    )
    handler.handle(logging.makeLogRecord({"name": "watchd.test", "msg": "%s and %s", "args": ("one",)}))
    assert read()[0].endswith("watchd.test: '%s and %s' (unformattable arguments: ('one',))")


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="loud"):
        setup_logging("loud")


# -- secrets -------------------------------------------------------------------------------


def test_secrets_are_redacted_everywhere(stderr_file: Setup) -> None:
    read = stderr_file(fmt="json", secrets=(SECRET, "abc"))
    log.info("key is " + SECRET)
    log.info("url %s", "https://x/?token=" + "s3cr3t%2Fkey%2Bwith%3Dchars")
    log.info("header", extra={"service": f"Bearer {SECRET}"})
    try:
        raise RuntimeError(f"refused {SECRET}")
    except RuntimeError:
        log.exception("abc stays")  # shorter than 4 characters: not a secret
    events = [json.loads(line) for line in read()]
    assert [event["msg"] for event in events] == [
        "key is ***",
        "url https://x/?token=***",
        "header",
        "abc stays",
    ]
    assert events[2]["service"] == "Bearer ***"
    assert events[3]["exc"] == "RuntimeError: refused ***"


def test_secrets_are_redacted_in_text_tracebacks(stderr_file: Setup) -> None:
    read = stderr_file(level="debug", secrets=(SECRET,))
    try:
        raise RuntimeError(f"refused {SECRET}")
    except RuntimeError:
        log.exception("failed")
    (line,) = read()
    assert "Traceback" in line
    assert line.endswith("RuntimeError: refused ***")
    assert "s3cr3t" not in line


def test_add_secrets_extends_redaction_at_reload(stderr_file: Setup) -> None:
    read = stderr_file(secrets=("first-secret",))
    add_secrets(["second-secret"])
    log.info("first-secret second-secret")
    (line,) = read()
    assert line.endswith("watchd.test: *** ***")


def test_control_characters_are_escaped_not_written(stderr_file: Setup) -> None:
    read = stderr_file()
    log.warning("not an image: %s", "/w/esc\x1b[31mred\x07\x9b.png\tok")
    (line,) = read()
    assert line.endswith("not an image: /w/esc\\x1b[31mred\\x07\\x9b.png\tok")
