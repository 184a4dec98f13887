"""What every scenario reports in: sizes, targets, figures (medians of runs), and small helpers.

`children` runs the processes under test and `fixtures` prepares what they work on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchd


class BenchmarkError(RuntimeError):
    """A scenario could not produce a trustworthy figure (a child failed, work went missing)."""


@dataclass(frozen=True)
class Size:
    """How much work each scenario does; `tiny` keeps the whole suite under a minute."""

    name: str
    latency_files: int
    latency_repeats: int
    backlog: int
    throughput_repeats: int
    baidu_backlog: int
    baidu_repeats: int
    restart_files: int
    restart_rows: int
    restart_repeats: int
    idle_dirs: int
    idle_seconds: float
    idle_repeats: int


SIZES = {
    "tiny": Size(
        name="tiny",
        latency_files=20,
        latency_repeats=2,
        backlog=100,
        throughput_repeats=2,
        baidu_backlog=100,
        baidu_repeats=1,
        restart_files=2_000,
        restart_rows=20_000,
        restart_repeats=2,
        idle_dirs=5_000,  # past ~4,000 a walk's own events fill inotify's default queue (16,384)
        idle_seconds=5.0,
        idle_repeats=1,
    ),
    "full": Size(
        name="full",
        latency_files=200,
        latency_repeats=3,
        backlog=2_000,
        throughput_repeats=3,
        baidu_backlog=1_000,
        baidu_repeats=3,
        restart_files=100_000,
        restart_rows=1_000_000,
        restart_repeats=3,
        idle_dirs=10_000,
        idle_seconds=60.0,
        idle_repeats=2,
    ),
}


@dataclass(frozen=True)
class Target:
    """A bound a figure should meet: `op` is "<=" or ">="."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {self.bound:g}"


@dataclass
class Figure:
    """One reported number: the median of `runs` (None when every run was skipped)."""

    key: str
    label: str
    unit: str
    runs: list[float]
    target: Target | None = None

    @property
    def value(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def met(self) -> bool | None:
        value = self.value
        return None if self.target is None or value is None else self.target.met(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "value": self.value,
            "runs": self.runs,
            "target": str(self.target) if self.target else None,
            "met": self.met,
        }


@dataclass
class Scenario:
    """A scenario's figures, plus what it skipped (and why) and notes for the reader."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def add(
        self, key: str, label: str, unit: str, runs: Sequence[float | None], target: Target | None = None
    ) -> None:
        self.figures.append(Figure(key, label, unit, [r for r in runs if r is not None], target))

    def to_json(self) -> dict[str, Any]:
        return {
            "figures": {f.key: f.to_json() for f in self.figures},
            "skipped": self.skipped,
            "notes": self.notes,
            "error": self.error,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def say(message: str) -> None:
    """Progress for the person waiting, on stderr (stdout carries the table and JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measured_watchd() -> dict[str, str]:
    """Which watchd was measured: its version and a short hash of its sources (for before/after)."""
    root = Path(watchd.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {"version": watchd.__version__, "sources_sha256": digest.hexdigest()[:16]}


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            model = next(
                (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
    }


def profile_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None,
    count: tuple[str, int],
    measure: Callable[[int], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    child: Callable[[Path, Path], int],
) -> int:
    """The command line of a profile (`benchmarks.steps`, `benchmarks.timeline`): measure
    `--COUNT` files with watchd in a child process (this same module, run with the hidden
    `--child CONFIG OUT`), print the table, and write the JSON to `--json FILE` if asked."""
    flag, default = count
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]))
    return report(prog, lambda: measure(getattr(args, flag)), render, args.json)


def report(
    prog: str,
    measure: Callable[[], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    json_path: Path | None,
) -> int:
    """Run `measure`, print its table (or why it could not finish, then exit status 1) and
    write its figures to `json_path` if given: the ending of every `python -m benchmarks.*`."""
    try:
        result = measure()
    except BenchmarkError as exc:
        print(f"{prog.removeprefix('python -m ')}: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
