"""Retries through the real pipeline against the emulator: what is sent again at once, what
waits for the queue's backoff, and how long a server may make it wait."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for, write_config
from tests.imagegen import png
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine
from watchd.retry import MAX_RETRY_AFTER

QUICK_RETRIES = """
retry:
  attempts: 3
  initial: 0.01
  maximum: 0.05
"""


def make_config(tmp_path: Path, emulator: Emulator, host_options: str = "") -> tuple[Path, Path]:
    """A folder uploaded by host `me` (with `host_options`, YAML lines at its level), no Baidu."""
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        [{"path": folder}],
        state_dir=tmp_path / "state",
        baidu=False,
        extra=QUICK_RETRIES,
    )
    config.write_text(config.read_text().replace("type: imageban\n", f"type: imageban\n{host_options}", 1))
    return config, folder


def status(config: Path) -> dict:
    result = run_cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_upload_answered_too_late_is_sent_once_then_deferred_not_repeated_at_once(
    tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    config, folder = make_config(tmp_path, emulator, "    timeout: 0.3\n")
    (folder / "slow.png").write_bytes(png(7, 7))
    emulator.set_faults(latency=1.0)  # ImageBan stores the image, but answers after watchd gave up
    now = time.time()
    with caplog.at_level(logging.WARNING, logger="watchd"):
        assert Engine(load_settings(config), clock=lambda: now, sleep=lambda _s: None).sync() == 1
    wait_for(lambda: emulator.uploads())
    time.sleep(1.5)  # as long again: a repeat sent at once would have landed by now too
    assert len([r for r in emulator.requests() if r.path == "/v1"]) == 1
    assert len(emulator.uploads()) == 1
    seen = status(config)
    assert seen["hosts"]["me"]["used_today"] == 1  # its quota unit is kept: ImageBan counted it
    (failure,) = seen["recent_failures"]
    assert (failure["state"], failure["kind"]) == ("pending", "transient")
    assert "timed out waiting for an answer" in failure["reason"]
    assert "imageban:me may have carried it out: not repeated at once" in caplog.text


def test_a_huge_retry_after_parks_uploads_for_a_day_at_most(tmp_path: Path, emulator: Emulator) -> None:
    config, folder = make_config(tmp_path, emulator)
    for n in range(3):
        (folder / f"r{n}.png").write_bytes(png(n + 1, 6))
    emulator.set_faults(http_error_rate=1.0, retry_after=999_999_999)  # 429: come back in 2057
    now = time.time()
    assert Engine(load_settings(config), clock=lambda: now, sleep=lambda _s: None).sync() == 1
    seen = status(config)
    pause = seen["hosts"]["me"]["paused"]
    assert pause["kind"] == "outage"  # the second 429 in a row
    whens = [pause["until"]] + [failure["next_attempt_at"] for failure in seen["recent_failures"]]
    assert len(whens) == 1 + 3
    assert all(now < datetime.fromisoformat(when).timestamp() <= now + MAX_RETRY_AFTER for when in whens)


def test_files_that_waited_behind_a_wrong_key_all_go_once_the_key_is_corrected(tmp_path: Path) -> None:
    """The first uploads meet "invalid secret key" and pause the host; the rest wait behind
    that pause without a call of their own. A corrected config must release them all."""
    with Emulator(secret_keys=("sk-right",)) as emulator:
        config, folder = make_config(tmp_path, emulator)
        for n in range(8):
            (folder / f"p{n}.png").write_bytes(png(10 + n, 10))
        wrong = run_cli("sync", "-c", str(config), env={"TEST_SECRET_KEY": "sk-wrong"})
        assert wrong.returncode == 1 and "invalid secret key" in wrong.stderr
        assert (
            "once the config is fixed: reload the daemon (systemctl reload watchd) or run the next sync"
            in wrong.stderr
        )
        fixed = run_cli("sync", "-c", str(config), env={"TEST_SECRET_KEY": "sk-right"})
        assert fixed.returncode == 0, fixed.stderr
        assert sorted(u.name for u in emulator.uploads()) == [f"p{n}.png" for n in range(8)]


def test_raising_a_used_up_daily_quota_sends_what_waited_for_it(tmp_path: Path, emulator: Emulator) -> None:
    config, folder = make_config(tmp_path, emulator, "    daily_quota: 2\n")
    for n in range(3):
        (folder / f"p{n}.png").write_bytes(png(10 + n, 10))
    first = run_cli("sync", "-c", str(config))
    assert first.returncode == 1 and "1 still queued" in first.stderr
    assert status(config)["paused"]["imageban:me"]["kind"] == "daily_quota"
    config.write_text(config.read_text().replace("daily_quota: 2", "daily_quota: 10"), encoding="utf-8")
    second = run_cli("sync", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert len(emulator.uploads()) == 3 and status(config)["paused"] == {}


@pytest.mark.parametrize(("fault", "counted"), [("transient_rate", False), ("http_error_rate", True)])
def test_only_uploads_the_service_may_have_stored_use_the_days_quota(
    tmp_path: Path, emulator: Emulator, fault: str, counted: bool
) -> None:
    """ "Failed to store the image" (104) stores nothing: counting it would pause a host early
    after a bad hour. An HTTP 5xx may come after the image was stored: that one counts."""
    config, folder = make_config(tmp_path, emulator)
    (folder / "a.png").write_bytes(png(10, 10))
    emulator.set_faults(**{fault: 1.0})
    assert run_cli("sync", "-c", str(config)).returncode == 1
    assert len(emulator.requests()) >= 2  # quick retries, one reservation
    assert status(config)["hosts"]["me"]["used_today"] == (1 if counted else 0)
