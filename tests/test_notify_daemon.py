"""The sd_notify conversation of the real daemon, captured from a real unix datagram socket."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import Manager, StartDaemon, wait_for, write_config
from tests.imagegen import png
from watchd.emulator import Emulator


def test_ready_status_watchdog_reload_and_stopping(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, manager: Manager
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "s")

    def messages() -> list[str]:
        return [message for _when, message in manager.receive()]

    daemon = start_daemon(config, env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "400000"})
    wait_for(lambda: any(m.startswith("READY=1") for m in messages()))
    ready = next(m for m in messages() if m.startswith("READY=1"))
    assert "STATUS=" in ready

    (folder / "a.png").write_bytes(png(3, 3))
    wait_for(lambda: any("1 uploaded today" in m for m in messages()))
    time.sleep(1.0)
    assert sum(m == "WATCHDOG=1" for m in messages()) >= 3, messages()

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any(m.startswith("RELOADING=1") for m in messages()))
    reloading = next(m for m in messages() if m.startswith("RELOADING=1"))
    assert "MONOTONIC_USEC=" in reloading
    usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
    assert abs(usec / 1e6 - time.monotonic()) < 30
    wait_for(lambda: any(m.startswith("READY=1") for m in messages()[messages().index(reloading) :]))

    assert daemon.stop() == 0
    assert any(m.startswith("STOPPING=1") for m in messages())


def test_status_names_a_baidu_pause_and_its_queue_without_an_upload_to_prompt_it(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon, manager: Manager
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder, "rules": {"baidu": True}}], state_dir=tmp_path / "s"
    )

    def statuses() -> list[str]:
        lines = (line for _when, message in manager.receive() for line in message.splitlines())
        return [line for line in lines if line.startswith("STATUS=")]

    (folder / "a.png").write_bytes(png(3, 3))
    # A wrong token: Baidu answers "authorisation failed" after the upload is long counted.
    daemon = start_daemon(
        config,
        env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "400000", "TEST_APP_TOKEN": "wrong-token"},
    )
    wait_for(lambda: any("paused: baidu (configuration)" in s for s in statuses()), timeout=20)
    last = statuses()[-1]
    assert "1 uploaded today" in last and "1 for Baidu" in last, last
    assert "wrong-token" not in "".join(statuses())
    assert daemon.stop() == 0
