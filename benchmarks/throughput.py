"""Throughput: a backlog of small images through `watchd sync`, beside two yardsticks.

- the ceiling: `benchmarks.raw_upload`, a bare httpx loop at the same concurrency (4
  threads, one shared client), which only reads and posts;
- the floor: the plain `for f in ...; do curl ...; done` loop of `benchmarks.shell`.

At 0 ms the emulator answers at once, and on two shared cores a turn measures CPU: each of
watchd's commits and sidecar writes competes with the emulator for a core. A real image host
takes tens of milliseconds or more to answer, so each repeat also times watchd and the raw
loop against an emulator that waits `SLOW_SERVER` before every answer, over half the
backlog: there the question is whether watchd keeps its `concurrency` uploads in flight.

Every contender is a child process timed from spawn to exit (interpreter start-up
included, for watchd and the raw loop alike) over the same files and the same emulator,
reset before each turn; the turn order rotates between repeats. A run only counts if the
emulator received every image and every sidecar was written.

Every turn gets a backlog folder of its own, written just before it and removed only with
the work directory. Deleting the previous turn's sidecars in one shared folder instead made
each turn start right after thousands of deletions, and on an ext4 without a journal (the
machine in docs/benchmarks.md) the kernel then scans every recently freed inode on each
file it creates (`recently_deleted` in perf): a cost of the harness, not of the contender,
that no user's backlog has, and one the raw loop (which creates no files) never paid.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from benchmarks.children import ChildRun, run_child, watchd_argv
from benchmarks.fixtures import (
    CONCURRENCY,
    count_sidecars,
    fresh_dir,
    new_emulator,
    secret_env,
    write_config,
    write_images,
)
from benchmarks.harness import BenchmarkError, Scenario, Size, Target, ratio, say
from benchmarks.shell import LOOP_SCRIPT, skip_reason
from watchd.emulator import Emulator

TIMEOUT = 900.0
SLOW_SERVER = 0.020  # seconds the emulator waits before each answer in the slow-server turns

Contender = Callable[[Emulator, Path, Path], ChildRun]


def run(size: Size, workdir: Path) -> Scenario:
    scenario = Scenario("throughput")
    contenders: list[tuple[str, Contender, bool]] = [("watchd", _watchd, True), ("raw", _raw, False)]
    skip = skip_reason("curl")
    if skip:
        scenario.skipped.append(f"curl loop: {skip}")
    else:
        contenders.append(("script", _script, True))
    slow_backlog = size.backlog // 2
    runs: defaultdict[str, list[float | None]] = defaultdict(list)
    with new_emulator() as emulator:
        for repeat in range(size.throughput_repeats):
            rates: dict[str, float] = {}
            shift = repeat % len(contenders)
            for name, contender, writes_sidecars in contenders[shift:] + contenders[:shift]:
                say(f"throughput: {name}, repeat {repeat + 1}/{size.throughput_repeats}")
                child = _turn(emulator, workdir, f"{repeat}-{name}", contender, writes_sidecars, size.backlog)
                rates[name] = size.backlog / child.seconds
                runs[f"{name}_cpu"].append(child.cpu_seconds * 1000 / size.backlog)
                runs[f"{name}_switches"].append(child.context_switches / size.backlog)
            for name, rate in rates.items():
                runs[name].append(rate)
            runs["vs_raw"].append(ratio(rates["watchd"], rates["raw"]))
            runs["vs_script"].append(ratio(rates["watchd"], rates.get("script")))
            slow: dict[str, float] = {}
            watchd_and_raw = contenders[:2] if repeat % 2 else contenders[1::-1]  # alternating
            for name, contender, writes_sidecars in watchd_and_raw:
                say(f"throughput: {name}, server {SLOW_SERVER * 1000:.0f} ms, repeat {repeat + 1}")
                turn = f"{repeat}-{name}-slow"
                child = _turn(
                    emulator, workdir, turn, contender, writes_sidecars, slow_backlog, latency=SLOW_SERVER
                )
                slow[name] = slow_backlog / child.seconds
            for name, rate in slow.items():
                runs[f"{name}_slow"].append(rate)
            runs["slow_vs_raw"].append(ratio(slow["watchd"], slow["raw"]))
    scenario.add("watchd_images_per_s", "watchd sync", "images/s", runs["watchd"])
    scenario.add("raw_images_per_s", f"raw httpx, {CONCURRENCY} threads", "images/s", runs["raw"])
    scenario.add("script_images_per_s", "curl loop", "images/s", runs["script"])
    scenario.add("ratio_vs_raw", "watchd / raw httpx", "×", runs["vs_raw"], Target(">=", 0.9))
    scenario.add("ratio_vs_script", "watchd / curl loop", "×", runs["vs_script"], Target(">=", 8))
    scenario.add("watchd_cpu_ms_per_image", "watchd CPU per image", "ms", runs["watchd_cpu"])
    scenario.add("raw_cpu_ms_per_image", "raw httpx CPU per image", "ms", runs["raw_cpu"])
    scenario.add(
        "watchd_switches_per_image", "watchd context switches per image", "", runs["watchd_switches"]
    )
    scenario.add("raw_switches_per_image", "raw httpx context switches per image", "", runs["raw_switches"])
    slow_ms = f"{SLOW_SERVER * 1000:.0f} ms server"
    scenario.add("watchd_slow_images_per_s", f"watchd sync, {slow_ms}", "images/s", runs["watchd_slow"])
    scenario.add("raw_slow_images_per_s", f"raw httpx, {slow_ms}", "images/s", runs["raw_slow"])
    scenario.add("slow_ratio_vs_raw", f"watchd / raw httpx, {slow_ms}", "×", runs["slow_vs_raw"])
    scenario.notes.append(
        f"backlog of {size.backlog} PNGs of ~16 KB, {size.throughput_repeats} repeats; "
        f"wall time from spawn to exit; the {slow_ms} turns take {slow_backlog} of them"
    )
    return scenario


def _turn(
    emulator: Emulator,
    workdir: Path,
    turn: str,
    contender: Contender,
    writes_sidecars: bool,
    count: int,
    *,
    latency: float = 0.0,
) -> ChildRun:
    """One contender over a fresh backlog of `count` images, the emulator reset and answering
    after `latency` seconds; fails unless every image was published."""
    folder = workdir / f"backlog-{turn}"  # a fresh backlog: see the module docstring
    write_images(folder, count)
    emulator.reset()
    emulator.set_faults(latency=latency)
    child = contender(emulator, folder, fresh_dir(workdir / f"run-{turn}"))
    uploads = len(emulator.uploads())
    sidecars = count_sidecars(folder)
    if uploads != count or (writes_sidecars and sidecars != count):
        raise BenchmarkError(f"{turn}: {uploads} uploads and {sidecars} sidecars for {count} images")
    return child


def _watchd(emulator: Emulator, folder: Path, base: Path) -> ChildRun:
    config = write_config(base / "config.yaml", emulator, folder, base / "state")
    return run_child(watchd_argv("sync", config), base / "sync.log", timeout=TIMEOUT)


def _raw(emulator: Emulator, folder: Path, base: Path) -> ChildRun:
    argv = [sys.executable, "-m", "benchmarks.raw_upload", emulator.imageban_url, str(folder)]
    argv += ["--threads", str(CONCURRENCY)]
    return run_child(argv, base / "raw.log", timeout=TIMEOUT, env=secret_env())


def _script(emulator: Emulator, folder: Path, base: Path) -> ChildRun:
    env = {**secret_env(), "IMAGEBAN_URL": emulator.imageban_url}
    return run_child(
        ["bash", "-c", LOOP_SCRIPT, "bench", str(folder)], base / "loop.log", timeout=TIMEOUT, env=env
    )
