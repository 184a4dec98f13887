"""The processes under test, as real children: one-shot commands and the `watchd run` daemon.

Every process under test is a child (`python -m watchd ...`, bash, curl), so none of them
shares a GIL with the emulator, which runs in the benchmark process itself. Wall times
are taken from spawn to exit; CPU time and memory come from the kernel (`wait4`, `/proc`,
GNU time), not from sampling.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchmarkError


@dataclass(frozen=True)
class ChildRun:
    """How a successful child went: wall seconds, peak RSS (None without GNU time), and from
    `wait4` its CPU seconds (user + system) and context switches (all kinds)."""

    seconds: float
    max_rss_mb: float | None
    cpu_seconds: float
    context_switches: int


def watchd_argv(command: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "watchd", command, "-c", str(config), "--log-format", "json"]


def run_child(
    argv: Sequence[str], log: Path, *, timeout: float, env: dict[str, str] | None = None
) -> ChildRun:
    """Run `argv` to completion with its output in `log`; raise BenchmarkError on a non-zero exit.

    CPU and context switches come from `wait4` on this child (not RUSAGE_CHILDREN, which
    would mix in every child the benchmark ever had). Peak RSS comes from GNU time, when
    installed: Python spawns with vfork, and exec then records the *parent's* high-water
    mark as the child's `ru_maxrss`, so our own `wait4` would report this process's size.
    """
    gnu_time = shutil.which("time")
    rss_file = log.with_suffix(".maxrss")
    wrapped = [gnu_time, "-f", "%M", "-o", str(rss_file), *argv] if gnu_time else list(argv)
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        command = " ".join([Path(argv[0]).name, *argv[1:4]])
        raise BenchmarkError(f"{command} exited {proc.returncode}: {tail(log)}")
    return ChildRun(
        seconds,
        int(rss_file.read_text().split()[-1]) / 1024 if gnu_time else None,
        usage.ru_utime + usage.ru_stime,
        usage.ru_nvcsw + usage.ru_nivcsw,
    )


def tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; raise BenchmarkError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


class Daemon:
    """`watchd run` (or `argv` that runs it) as a child process, started and ready once its
    first reconciliation is logged."""

    def __init__(self, config: Path, log: Path, argv: Sequence[str] | None = None) -> None:
        self.config = config
        self.log = log
        self.argv = list(argv) if argv is not None else watchd_argv("run", config)
        self.started = 0.0
        self.ready_after = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> Daemon:
        with open(self.log, "ab") as out:
            self.started = time.perf_counter()
            self._proc = subprocess.Popen(self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        wait_for(self._ready, 120, f"`watchd run` to reconcile ({self.log})")
        self.ready_after = time.perf_counter() - self.started
        return self

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise BenchmarkError(f"`watchd run` exited {self._proc.returncode}: {tail(self.log)}")
        return "reconciled " in self.log.read_text(encoding="utf-8", errors="replace")

    def __exit__(self, *_exc: object) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0
