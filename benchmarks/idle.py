"""Idle cost: CPU seconds an idle `watchd run` spends while watching many directories.

The daemon watches one folder holding `idle_dirs` directories (100 to a parent, two
levels), reconciles it, is left alone for a couple of seconds, and then its utime + stime
(all threads, from /proc/PID/stat, 10 ms ticks) are read before and after `idle_seconds`.
The figure is scaled to CPU seconds per minute so that sizes compare. Start-up time (to
the end of the first reconciliation) and peak RSS come along.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from benchmarks.children import Daemon, process_cpu_seconds, process_peak_rss_mb
from benchmarks.fixtures import fresh_dir, new_emulator, write_config
from benchmarks.harness import BenchmarkError, Scenario, Size, Target, say

SETTLE = 2.0  # seconds left alone after start-up before measuring
FAN_OUT = 100


def run(size: Size, workdir: Path) -> Scenario:
    scenario = Scenario("idle")
    tree = fresh_dir(workdir / "tree")
    for n in range(size.idle_dirs):
        (tree / f"p{n // FAN_OUT:03d}" / f"c{n % FAN_OUT:03d}").mkdir(parents=True)
    runs: defaultdict[str, list[float | None]] = defaultdict(list)
    with new_emulator() as emulator:
        for repeat in range(size.idle_repeats):
            say(f"idle: {size.idle_dirs:,} directories for {size.idle_seconds:g} s, repeat {repeat + 1}")
            base = fresh_dir(workdir / f"run{repeat}")
            config = write_config(base / "config.yaml", emulator, tree, base / "state")
            with Daemon(config, base / "run.log") as daemon:
                time.sleep(SETTLE)
                before, began = process_cpu_seconds(daemon.pid), time.perf_counter()
                time.sleep(size.idle_seconds)
                cpu = process_cpu_seconds(daemon.pid) - before
                elapsed = time.perf_counter() - began
                runs["cpu"].append(cpu * 60 / elapsed)
                runs["startup"].append(daemon.ready_after)
                runs["rss"].append(process_peak_rss_mb(daemon.pid))
            if emulator.requests():
                raise BenchmarkError(f"an idle daemon sent {len(emulator.requests())} requests")
    scenario.add("cpu_s_per_min", "CPU while idle", "s/min", runs["cpu"], Target("<=", 0.3))
    scenario.add("startup_s", "start-up to first reconcile", "s", runs["startup"])
    scenario.add("rss_mb", "peak RSS", "MB", runs["rss"])
    scenario.notes.append(
        f"{size.idle_dirs:,} watched directories, idle for {size.idle_seconds:g} s, {size.idle_repeats} "
        "repeat(s); target ≈ 0 read as ≤ 0.3 s per minute (0.5 % of one core)"
    )
    return scenario
