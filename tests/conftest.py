"""Shared fixtures: the emulator over loopback, configs in temp dirs, the real daemon as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchd.emulator import Emulator


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected no tests is a failure, never a silent pass."""
    if session.testscollected == 0:
        session.exitstatus = 1


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


def write_config(
    path: Path,
    emulator: Emulator,
    folders: list[dict[str, Any]],
    *,
    state_dir: Path,
    baidu: bool = True,
    extra: str = "",
    linger: float = 0.2,
    baidu_quota: int | None = None,
) -> Path:
    """A config with an account host `me`, a guest host `guest`, Baidu, and `folders`."""
    lines = [
        f"state_dir: {json.dumps(str(state_dir))}",
        "hosts:",
        "  me:",
        "    type: imageban",
        "    secret_key: ${TEST_SECRET_KEY:-demo-secret}",
        f"    api_url: {emulator.imageban_url}",
        "  guest:",
        "    type: imageban",
        "    client_id: ${TEST_CLIENT_ID:-demo-client}",
        f"    api_url: {emulator.imageban_url}",
    ]
    if baidu:
        lines += [
            "baidu:",
            "  app_id: demo-app",
            "  app_token: ${TEST_APP_TOKEN:-demo-token}",
            f"  api_base: {emulator.baidu_url}",
            f"  linger: {linger}",
        ]
        if baidu_quota is not None:
            lines.append(f"  daily_quota: {baidu_quota}")
    lines += ["defaults:", "  host: me", "folders:"]
    for folder in folders:
        lines.append(f"  - path: {json.dumps(str(folder['path']))}")
        if "rules" in folder:
            lines.append(f"    rules: {json.dumps(folder['rules'])}")
        for key in ("recursive", "poll", "poll_interval"):
            if key in folder:
                lines.append(f"    {key}: {json.dumps(folder[key])}")
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


class Daemon:
    """`watchd run` as a real process, with its log captured in a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watchd", "run", "-c", str(self.config), "--log-format", "json"],
            stdout=self._log,
            stderr=self._log,
            env=self.env,
        )
        wait_for(lambda: "watching" in self.log(), timeout=20)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start `watchd run` for a config; every daemon started is killed at the end of the test."""
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, tmp_path / f"daemon{len(started)}.log", env).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.alive():
            daemon.stop(signal.SIGKILL)


@pytest.fixture
def read_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every read from a file opened with `os.fdopen` (as images are) during the test."""
    sizes: list[int] = []
    real_fdopen = os.fdopen

    def spying_fdopen(*args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(*args, **kwargs)
        real_read = handle.read

        def read(n: int = -1) -> bytes:
            data = real_read(n)
            sizes.append(len(data))
            return data

        handle.read = read
        return handle

    monkeypatch.setattr(os, "fdopen", spying_fdopen)
    return sizes


def sidecar_of(path: Path) -> Path:
    """The default sidecar of an image."""
    return path.with_name(path.name + ".link.json")


class Manager:
    """The service manager's end of NOTIFY_SOCKET: every datagram, with when it came."""

    def __init__(self, address: Path) -> None:
        self.address = str(address)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def receive(self) -> list[tuple[float, str]]:
        with contextlib.suppress(TimeoutError):
            while True:
                message = self._socket.recv(4096).decode()
                self.messages.append((time.monotonic(), message))
        return self.messages

    def listen(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.receive()

    def first(self, prefix: str, after: float = 0.0) -> float | None:
        return next((t for t, m in self.receive() if m.startswith(prefix) and t >= after), None)

    def pings(self, after: float, before: float) -> list[float]:
        return [t for t, m in self.receive() if m == "WATCHDOG=1" and after <= t <= before]

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    listener = Manager(tmp_path / "notify.sock")
    yield listener
    listener.close()
