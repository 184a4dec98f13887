"""sd_notify(3) for the daemon: READY, STATUS, RELOADING, STOPPING and WATCHDOG pings.

Every call is a no-op when `NOTIFY_SOCKET` is unset (a terminal, cron, a container), and a
failure to send is logged at debug level and swallowed: telling systemd about our state must
never be the thing that stops the daemon. Both socket kinds systemd hands out work: a path
(`/run/systemd/notify`) and an abstract name (`@/org/freedesktop/systemd1/notify`), which
`sdnotify.SystemdNotifier` maps to a leading NUL byte itself. We let it connect, but send
the datagrams on its socket ourselves, as UTF-8: its `notify()` encodes Latin-1, which fails
on a status line naming a non-Latin path.

Watchdog pings come only from the engine's event loop, through `WatchdogPinger.tick()`, never
from a thread of their own: a loop that hangs stops pinging and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    """Sends state notifications to the service manager named by `NOTIFY_SOCKET`.

    The environment is read once, at construction, and the socket connected then: every
    notification after that is a single send().
    """

    def __init__(self) -> None:
        self._sender: sdnotify.SystemdNotifier | None = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                self._sender = sdnotify.SystemdNotifier(debug=True)
            except (OSError, ValueError) as exc:
                log.debug("cannot connect to NOTIFY_SOCKET, notifications are off: %s", exc)
        self._watchdog_interval = _watchdog_interval() if self._sender is not None else None

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere (we run under systemd with Type=notify*)."""
        return self._sender is not None

    def ready(self, status: str = "") -> None:
        """Start-up (or a reload) is complete: READY=1, with STATUS when `status` is given."""
        if status:
            self._send("READY=1", _status(status))
        else:
            self._send("READY=1")

    def status(self, text: str) -> None:
        """Free-form one-line status shown by `systemctl status`."""
        self._send(_status(text))

    def reloading(self) -> None:
        """A reload has begun: RELOADING=1 and MONOTONIC_USEC in one datagram (Type=notify-reload)."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Shutdown has begun: STOPPING=1."""
        self._send("STOPPING=1")

    def watchdog_ping(self) -> None:
        """WATCHDOG=1: the event loop is alive."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of `WATCHDOG_USEC`), or None when no watchdog is armed for us.

        None as well when notifications are off: there is nobody to ping.
        """
        return self._watchdog_interval

    def _send(self, *assignments: str) -> None:
        if self._sender is None:
            return
        try:  # never blocks: a notify socket nobody reads must not stall the daemon
            self._sender.socket.send("\n".join(assignments).encode(), socket.MSG_DONTWAIT)
        except OSError as exc:  # including BlockingIOError: that message is dropped
            log.debug("sd_notify %s failed: %s", assignments[0], exc)


class WatchdogPinger:
    """Rate-limits WATCHDOG=1 to one per `watchdog_interval()`; call `tick()` on every loop turn.

    The first tick pings at once. With no watchdog armed, `tick()` does nothing.
    """

    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._interval = notifier.watchdog_interval()
        self._clock = clock
        self._last: float | None = None

    def due_in(self) -> float | None:
        """Seconds until `tick` pings next (0: at once), None when no watchdog is armed. The
        loop waits no longer: woken a little early for something else, it would otherwise
        wait another whole interval, and pings came up to WATCHDOG_USEC apart."""
        if self._interval is None:
            return None
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self._interval - self._clock())

    def tick(self) -> None:
        if self._interval is None:
            return
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        self._notifier.watchdog_ping()


def _status(text: str) -> str:
    """STATUS=… on one line: a newline would start a new assignment in the datagram."""
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, when it is set, valid, and meant for this process."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
