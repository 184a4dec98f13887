"""Baidu efficiency: pushPic calls per submitted image when a backlog meets the batcher.

Ideal is 1/20 = 0.05 (every call full). Measured twice per repeat, on the same backlog:
`watchd sync` (the batcher runs beside the uploads and drains at the end) and a
`watchd run` daemon started with the backlog already in the folder (the batcher lingers
to fill batches). Counts come from the emulator's own call log.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmarks.children import Daemon, run_child, wait_for, watchd_argv
from benchmarks.fixtures import fresh_dir, new_emulator, remove_sidecars, write_config, write_images
from benchmarks.harness import BenchmarkError, Scenario, Size, Target, say
from watchd.emulator import Emulator

TIMEOUT = 600.0


def run(size: Size, workdir: Path) -> Scenario:
    scenario = Scenario("baidu")
    folder = workdir / "backlog"
    n = size.baidu_backlog
    write_images(folder, n)
    runs: defaultdict[str, list[float | None]] = defaultdict(list)
    with new_emulator() as emulator:
        for repeat in range(size.baidu_repeats):
            for mode in ("sync", "run"):
                say(f"baidu: watchd {mode}, repeat {repeat + 1}/{size.baidu_repeats}")
                remove_sidecars(folder)
                emulator.reset()
                base = fresh_dir(workdir / f"run{repeat}" / mode)
                config = write_config(base / "config.yaml", emulator, folder, base / "state")
                if mode == "sync":
                    run_child(watchd_argv("sync", config), base / "sync.log", timeout=TIMEOUT)
                else:
                    with Daemon(config, base / "run.log"):
                        wait_for(lambda: len(emulator.baidu_index()) >= n, TIMEOUT, f"{n} Baidu submissions")
                calls, submitted = _count(emulator)
                if submitted != n:
                    raise BenchmarkError(f"watchd {mode}: {submitted} of {n} images reached Baidu")
                runs[mode].append(calls / submitted)
                runs[f"{mode}_fill"].append(submitted / calls)
    for mode in ("sync", "run"):
        scenario.add(
            f"{mode}_calls_per_image", f"watchd {mode}", "calls/image", runs[mode], Target("<=", 0.06)
        )
        scenario.add(
            f"{mode}_items_per_call", f"watchd {mode}, items per call", "items", runs[f"{mode}_fill"]
        )
    scenario.notes.append(f"backlog of {n} images, {size.baidu_repeats} repeats; 20 items per call is full")
    return scenario


def _count(emulator: Emulator) -> tuple[int, int]:
    """(Baidu calls answered, images Baidu now holds)."""
    return len(emulator.baidu_calls()), len(emulator.baidu_index())
