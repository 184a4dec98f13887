"""Latency: file closed → sidecar on disk, for `watchd run` and for the inotifywait + curl script.

Files are dropped one at a time: written and closed, and the next one only after the
previous sidecar landed and a short gap passed. Each contender watches its own fresh
folder and talks to the same emulator (no injected latency); they take turns, alternating
which goes first, and the p95 ratio is taken within each repeat before the median.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.children import Daemon, tail, wait_for
from benchmarks.fixtures import SIDECAR_SUFFIX, fresh_dir, image_bytes, new_emulator, secret_env, write_config
from benchmarks.harness import BenchmarkError, Scenario, Size, Target, percentile, ratio, say
from benchmarks.probe import SidecarProbe
from benchmarks.shell import WATCH_SCRIPT, skip_reason
from watchd.emulator import Emulator

GAP = 0.05  # seconds between a sidecar landing and the next drop
SIDECAR_TIMEOUT = 15.0


def run(size: Size, workdir: Path) -> Scenario:
    scenario = Scenario("latency")
    skip = skip_reason("inotifywait", "curl")
    if skip:
        scenario.skipped.append(f"inotifywait + curl script: {skip}")
    contenders = [("watchd", _watchd)] + ([] if skip else [("script", _script)])
    runs: defaultdict[str, list[float | None]] = defaultdict(list)
    with new_emulator() as emulator:
        for repeat in range(size.latency_repeats):
            order = contenders if repeat % 2 == 0 else contenders[::-1]
            stats: dict[str, float] = {}
            for name, measure in order:
                say(f"latency: {name}, repeat {repeat + 1}/{size.latency_repeats}")
                base = fresh_dir(workdir / f"run{repeat}" / name)
                millis = measure(emulator, base, size.latency_files)
                stats.update({f"{name}_p{q}": percentile(millis, q) for q in (50, 95, 100)})
            for key, value in stats.items():
                runs[key].append(value)
            for q in (50, 95):
                runs[f"p{q}_ratio"].append(ratio(stats.get(f"watchd_p{q}"), stats.get(f"script_p{q}")))
    for name, label in (("watchd", "watchd run"), ("script", "inotifywait+curl")):
        target = Target("<=", 10) if name == "watchd" else None
        scenario.add(f"{name}_p50_ms", f"{label} p50", "ms", runs[f"{name}_p50"], target)
        scenario.add(f"{name}_p95_ms", f"{label} p95", "ms", runs[f"{name}_p95"])
        scenario.add(f"{name}_max_ms", f"{label} max", "ms", runs[f"{name}_p100"])
    scenario.add("p50_ratio", "watchd p50 / script p50", "×", runs["p50_ratio"])
    scenario.add("p95_ratio", "watchd p95 / script p95", "×", runs["p95_ratio"], Target("<=", 1))
    scenario.notes.append(
        f"{size.latency_files} files dropped one at a time ({GAP * 1000:g} ms apart), "
        f"{size.latency_repeats} repeats; emulator latency 0"
    )
    return scenario


def _watchd(emulator: Emulator, base: Path, count: int) -> list[float]:
    folder = fresh_dir(base / "drop")
    config = write_config(base / "config.yaml", emulator, folder, base / "state")
    log = base / "watchd.log"
    with Daemon(config, log):
        return _drop(folder, count, log)


def _script(emulator: Emulator, base: Path, count: int) -> list[float]:
    folder = fresh_dir(base / "drop")
    log = base / "script.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["bash", "-c", WATCH_SCRIPT, "bench", str(folder)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env={**secret_env(), "IMAGEBAN_URL": emulator.imageban_url},
            start_new_session=True,  # its own process group: bash, inotifywait and curl stop together
        )
    try:
        wait_for(lambda: b"Watches established" in log.read_bytes(), 15, "inotifywait to start")
        return _drop(folder, count, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _drop(folder: Path, count: int, log: Path) -> list[float]:
    """Drop `count` images into `folder` one at a time; the latency of each, in ms."""
    return [(landed - closed) * 1000 for _name, closed, landed in drop_one_at_a_time(folder, count, log)]


def drop_one_at_a_time(folder: Path, count: int, log: Path) -> list[tuple[str, float, float]]:
    """Drop `count` images into `folder`, each once the previous sidecar landed and `GAP`
    passed; (name, closed, sidecar landed) of each, in `time.perf_counter()` seconds."""
    drops = []
    with SidecarProbe(folder) as probe:
        for n in range(count):
            name = f"drop{n:04d}.png"
            with open(folder / name, "wb") as image:
                image.write(image_bytes(n))
            closed = time.perf_counter()
            try:
                landed = probe.wait(name + SIDECAR_SUFFIX, SIDECAR_TIMEOUT)
            except TimeoutError as exc:
                raise BenchmarkError(f"{exc}; log: {tail(log)}") from exc
            drops.append((name, closed, landed))
            time.sleep(GAP)
    return drops
