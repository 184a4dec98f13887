"""Where the milliseconds of one image go under `watchd run`, from closed to sidecar on disk:
the latency profile behind docs/benchmarks.md.

    python -m benchmarks.timeline [--files 200] [--json FILE]

As in the latency scenario, the emulator answers at once and files are dropped one at a
time into a folder that `watchd run` watches. The daemon runs in a child process in which
a few functions are wrapped to note `time.perf_counter()` the first time each file passes
them; that clock is CLOCK_MONOTONIC, the same in every process, so each moment is measured
from the benchmark's own "file closed". Wrapping adds a few microseconds a mark.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.children import Daemon
from benchmarks.fixtures import SIDECAR_SUFFIX, fresh_dir, new_emulator, write_config
from benchmarks.harness import BenchmarkError, percentile, profile_main
from benchmarks.latency import drop_one_at_a_time

Key = Callable[[tuple[Any, ...]], str | None]


def _finished_path(args: tuple[Any, ...]) -> str | None:  # Engine._handle(self, fact)
    fact = args[1]
    return str(fact.path) if type(fact).__name__ == "Finished" else None


def _argument(n: int) -> Key:
    return lambda args: str(args[n])


def _request_path(args: tuple[Any, ...]) -> str:  # ImageBanHost.upload(self, request)
    return str(args[1].path)


def _original_of_sidecar(args: tuple[Any, ...]) -> str:  # write_atomic(sidecar, text)
    return str(args[0]).removesuffix(SIDECAR_SUFFIX)


# (module, attribute, "enter" or "leave", what the moment is, the file from the call's
# positional arguments), in the order a file passes them.
MARKS: tuple[tuple[str, str, str, str, Key], ...] = (
    ("watchd.engine", "Engine._handle", "enter", "the loop thread has the close event", _finished_path),
    ("watchd.engine", "Engine._intake", "leave", "checked and journaled as pending", _argument(1)),
    ("watchd.pipeline", "load_image", "enter", "a worker starts reading it", _argument(0)),
    ("watchd.hosts.imageban", "ImageBanHost.upload", "enter", "upload sent (slot, claim)", _request_path),
    ("watchd.hosts.imageban", "ImageBanHost.upload", "leave", "upload answered", _request_path),
    ("watchd.pipeline", "write_atomic", "enter", "sidecar write starts", _original_of_sidecar),
    ("watchd.pipeline", "write_atomic", "leave", "sidecar renamed into place", _original_of_sidecar),
)


def main(argv: Sequence[str] | None = None) -> int:
    return profile_main(
        argv,
        prog="python -m benchmarks.timeline",
        description=__doc__,
        count=("files", 200),
        measure=measure,
        render=render,
        child=_child,
    )


def measure(files: int) -> dict[str, Any]:
    """Drop `files` images under a marked `watchd run`; p50, p95 and max of each moment, in ms."""
    with tempfile.TemporaryDirectory(prefix="watchd-timeline-") as scratch, new_emulator() as emulator:
        work = Path(scratch)
        folder = fresh_dir(work / "drop")
        config = write_config(work / "config.yaml", emulator, folder, work / "state")
        marks_file = work / "marks.json"
        argv = [sys.executable, "-m", "benchmarks.timeline", "--child", str(config), str(marks_file)]
        with Daemon(config, work / "run.log", argv):
            drops = drop_one_at_a_time(folder, files, work / "run.log")
        marks: dict[str, dict[str, float]] = json.loads(marks_file.read_text(encoding="utf-8"))
    moments: dict[str, list[float]] = {label: [] for _m, _a, _w, label, _k in MARKS}
    moments["sidecar seen by the benchmark"] = []
    for name, closed, landed in drops:
        seen = marks.get(str(folder / name), {})
        for label, at in seen.items():
            moments[label].append((at - closed) * 1000)
        moments["sidecar seen by the benchmark"].append((landed - closed) * 1000)
    missing = [label for label, values in moments.items() if len(values) != files]
    if missing:
        raise BenchmarkError(f"not every file was marked at: {', '.join(missing)}")
    return {
        "files": files,
        "moments_ms": {
            label: {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}
            for label, values in moments.items()
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"watchd run, {result['files']} files dropped one at a time: ms after the file was closed",
        "",
        f"{'moment':45} {'p50':>7} {'step':>7} {'p95':>7} {'max':>7}",
    ]
    previous = 0.0
    for label, figures in result["moments_ms"].items():
        step = figures["p50"] - previous
        lines.append(
            f"{label:45} {figures['p50']:7.2f} {step:+7.2f} {figures['p95']:7.2f} {figures['max']:7.2f}"
        )
        previous = figures["p50"]
    return "\n".join(lines)


# -- the child: watchd run with its moments marked ------------------------------------------


def _child(config: Path, out: Path) -> int:
    marks: dict[str, dict[str, float]] = {}
    lock = threading.Lock()
    for module, attribute, when, label, key in MARKS:
        _mark(importlib.import_module(module), attribute, when, label, key, marks, lock)
    from watchd.cli import main as watchd_main

    try:
        return watchd_main(["run", "-c", str(config), "--log-format", "json"])
    finally:
        with lock:
            out.write_text(json.dumps(marks), encoding="utf-8")


def _mark(
    module: object,
    attribute: str,
    when: str,
    label: str,
    key: Key,
    marks: dict[str, dict[str, float]],
    lock: threading.Lock,
) -> None:
    """Wrap `module.attribute` to note, per file, the first time a call enters or leaves it."""
    owner_name, _, name = attribute.rpartition(".")
    owner = getattr(module, owner_name) if owner_name else module
    original: Callable[..., Any] = getattr(owner, name)

    def note(args: tuple[Any, ...]) -> None:
        now = time.perf_counter()
        path = key(args)
        if path is not None:
            with lock:
                marks.setdefault(path, {}).setdefault(label, now)

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        if when == "enter":
            note(args)
        try:
            return original(*args, **kwargs)
        finally:
            if when == "leave":
                note(args)

    setattr(owner, name, marked)


if __name__ == "__main__":
    sys.exit(main())
