"""sd_notify datagrams, read from a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchd.systemd import Notifier, WatchdogPinger


class Manager:
    """The service manager's end of NOTIFY_SOCKET: receives and returns the datagrams."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already sent, without waiting (datagrams on AF_UNIX arrive at once)."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with sock:
        yield Manager(sock)


def test_ready_carries_status(manager: Manager) -> None:
    Notifier().ready("watching 3 folders")
    assert manager.receive() == "READY=1\nSTATUS=watching 3 folders"


def test_ready_without_status_is_just_ready(manager: Manager) -> None:
    Notifier().ready()
    assert manager.receive() == "READY=1"


def test_status_is_one_line_of_utf8(manager: Manager) -> None:
    Notifier().status("3 queued\nlast: /фото/кот.png")
    assert manager.receive() == "STATUS=3 queued last: /фото/кот.png"


def test_reloading_sends_monotonic_usec_in_the_same_datagram(manager: Manager) -> None:
    Notifier().reloading()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = manager.receive().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert 0 <= now - int(value) < 2_000_000


def test_stopping(manager: Manager) -> None:
    Notifier().stopping()
    assert manager.receive() == "STOPPING=1"


def test_watchdog_pings_are_rate_limited_by_watchdog_usec(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # 10 s: ping every 5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_interval() == 5.0
    now = [100.0]
    pinger = WatchdogPinger(notifier, clock=lambda: now[0])

    pinger.tick()
    assert manager.pending() == ["WATCHDOG=1"]
    for now[0] in (101.0, 103.0, 104.9):
        pinger.tick()
    assert manager.pending() == []
    now[0] = 105.0
    pinger.tick()
    pinger.tick()
    assert manager.pending() == ["WATCHDOG=1"]


@pytest.mark.parametrize(
    ("usec", "pid"),
    [(None, None), ("10000000", "1"), ("0", None), ("soon", None)],
    ids=["unset", "other-pid", "zero", "garbage"],
)
def test_no_watchdog_means_no_pings(
    manager: Manager, monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is not None:
            monkeypatch.setenv(name, value)
    notifier = Notifier()
    assert notifier.watchdog_interval() is None
    pinger = WatchdogPinger(notifier)
    pinger.tick()
    pinger.tick()
    assert manager.pending() == []


def test_without_notify_socket_nothing_is_sent(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    notifier.ready("up")
    notifier.status("busy")
    notifier.reloading()
    notifier.stopping()
    notifier.watchdog_ping()
    WatchdogPinger(notifier).tick()
    assert manager.pending() == []


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"watchd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready("abstract")
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"


def test_a_vanished_socket_is_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = Notifier()
        assert notifier.enabled
    path.unlink()
    notifier.ready("nobody listens")  # must not raise
    notifier.stopping()


def test_a_socket_nobody_reads_never_blocks_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # bound, never read: its queue fills after a few datagrams
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = Notifier()
        started = time.monotonic()
        for n in range(200):
            notifier.status(f"update {n}")
        assert time.monotonic() - started < 5  # a blocking send hung here for good


def test_an_unreachable_socket_turns_notifications_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("nobody listens")  # must not raise
