"""How `watchd sync` scales with `concurrency`, beside the raw loop with as many threads.

    python -m benchmarks.scaling [--images 2000] [--repeats 3] [--concurrency 1,2,4]
                                 [--workdir DIR] [--json FILE]

For each concurrency, three contenders each publish a fresh backlog of small PNGs to the
emulator answering at once: `watchd sync` as the throughput scenario runs it (Baidu on),
`watchd sync` without a `baidu` section, and `benchmarks.raw_upload` with as many threads.
The order rotates between repeats; every figure is a median. If the rate grows with the
uploads in flight, as the raw loop's does, the server's answers are what a contender waits
for; if it does not, one process's CPU (for Python: one core, the GIL) is the bound.

`--workdir` on a tmpfs (`/dev/shm`) takes the disk out of the picture: the difference from
a run on disk is what creating, fsyncing and renaming the sidecars costs there. It is also
the quiet place to compare two versions of watchd: run this once with each on the Python
path (`PYTHONPATH=path/to/other/checkout`), one right after the other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.children import ChildRun, run_child, watchd_argv
from benchmarks.fixtures import count_sidecars, new_emulator, secret_env, write_config, write_images
from benchmarks.harness import BenchmarkError, measured_watchd, report, say
from watchd.emulator import Emulator

PROG = "python -m benchmarks.scaling"
CONTENDERS = ("watchd", "watchd, no Baidu", "raw httpx")
TIMEOUT = 900.0


def measure(images: int, repeats: int, concurrencies: Sequence[int], workdir: Path) -> dict[str, Any]:
    """Every contender at every concurrency, `repeats` times; the medians and every run."""
    runs: defaultdict[tuple[str, int], list[ChildRun]] = defaultdict(list)
    turns = [(name, concurrency) for concurrency in concurrencies for name in CONTENDERS]
    with new_emulator() as emulator:
        for repeat in range(repeats):
            shift = repeat % len(turns)
            for name, concurrency in turns[shift:] + turns[:shift]:
                say(f"scaling: {name}, concurrency {concurrency}, repeat {repeat + 1}/{repeats}")
                base = workdir / f"{repeat}-{name.replace(', ', '-').replace(' ', '-')}-{concurrency}"
                runs[name, concurrency].append(_turn(emulator, base, name, concurrency, images))
    rows = []
    for name, concurrency in turns:
        done = runs[name, concurrency]
        rates = [images / run.seconds for run in done]
        rows.append(
            {
                "contender": name,
                "concurrency": concurrency,
                "images_per_s": statistics.median(rates),
                "cpu_ms_per_image": statistics.median(run.cpu_seconds * 1000 / images for run in done),
                "switches_per_image": statistics.median(run.context_switches / images for run in done),
                "runs_images_per_s": [round(rate, 1) for rate in rates],
            }
        )
    return {
        "images": images,
        "repeats": repeats,
        "workdir": str(workdir),
        "watchd": measured_watchd(),
        "rows": rows,
    }


def _turn(emulator: Emulator, base: Path, name: str, concurrency: int, images: int) -> ChildRun:
    folder = base / "backlog"
    write_images(folder, images)
    emulator.reset()
    if name == "raw httpx":
        argv = [sys.executable, "-m", "benchmarks.raw_upload", emulator.imageban_url, str(folder)]
        child = run_child(
            [*argv, "--threads", str(concurrency)], base / "raw.log", timeout=TIMEOUT, env=secret_env()
        )
    else:
        config = write_config(
            base / "config.yaml",
            emulator,
            folder,
            base / "state",
            concurrency=concurrency,
            baidu=name == "watchd",
        )
        child = run_child(watchd_argv("sync", config), base / "sync.log", timeout=TIMEOUT)
        if count_sidecars(folder) != images:
            raise BenchmarkError(
                f"{name} at concurrency {concurrency} wrote {count_sidecars(folder)} of {images} sidecars"
            )
    if len(emulator.uploads()) != images:
        raise BenchmarkError(
            f"{name} at concurrency {concurrency} uploaded {len(emulator.uploads())} of {images}"
        )
    return child


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['images']} images a turn, medians of {result['repeats']}, in {result['workdir']}",
        "",
        f"{'contender':18} {'concurrency':>11} {'images/s':>9} {'CPU ms/image':>13} {'switches/image':>15}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['contender']:18} {row['concurrency']:11d} {row['images_per_s']:9.0f} "
            f"{row['cpu_ms_per_image']:13.2f} {row['switches_per_image']:15.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated (default 1,2,4)")
    parser.add_argument("--workdir", type=Path, help="scratch directory, kept (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    concurrencies = [int(part) for part in args.concurrency.split(",")]

    def run() -> dict[str, Any]:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            return measure(args.images, args.repeats, concurrencies, args.workdir)
        with tempfile.TemporaryDirectory(prefix="watchd-scaling-") as scratch:
            return measure(args.images, args.repeats, concurrencies, Path(scratch))

    return report(PROG, run, render, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
