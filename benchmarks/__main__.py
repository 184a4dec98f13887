"""`python -m benchmarks [--size tiny|full] [--json FILE] [--only NAME,...]`, from the repository root.

Starts the emulator on loopback itself, runs the chosen scenarios in a scratch directory
(removed afterwards unless --keep), prints the table, and writes the JSON to FILE (or to
stdout after the table). Exits 1 if a scenario failed to produce its figures; a missed
target is a result, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from benchmarks import baidu, idle, latency, restart, throughput
from benchmarks.harness import SIZES, BenchmarkError, Scenario, Size, machine, measured_watchd, say
from benchmarks.report import render, to_json

SCENARIOS: dict[str, Callable[[Size, Path], Scenario]] = {
    "latency": latency.run,
    "throughput": throughput.run,
    "baidu": baidu.run,
    "restart": restart.run,
    "idle": idle.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="full",
        help="full (about 8 min on 2 cores) or tiny (under a minute)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the JSON here instead of stdout")
    parser.add_argument("--only", metavar="NAME,...", help=f"a subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--workdir", type=Path, help="scratch directory, kept (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary scratch directory")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="watchd-bench-"))
    started = time.perf_counter()
    scenarios = []
    try:
        for name in names:
            say(f"{name}: starting ({args.size})")
            began, load = time.perf_counter(), os.getloadavg()[0]
            try:
                scenario = SCENARIOS[name](SIZES[args.size], workdir / name)
            except BenchmarkError as exc:
                scenario = Scenario(name, error=str(exc))
            scenario.notes.append(
                f"took {time.perf_counter() - began:.0f} s; 1-minute load average {load:.2f} before, "
                f"{os.getloadavg()[0]:.2f} after"
            )
            scenarios.append(scenario)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    command = shlex.join(["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])])
    result = to_json(
        scenarios,
        size=args.size,
        command=command,
        machine=machine(),
        watchd=measured_watchd(),
        seconds=time.perf_counter() - started,
    )
    render(scenarios, Console(width=200 if not sys.stdout.isatty() else None))
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 1 if any(scenario.error for scenario in scenarios) else 0


if __name__ == "__main__":
    sys.exit(main())
