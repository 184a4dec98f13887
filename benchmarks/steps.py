"""Where the CPU of a `watchd sync` goes, step by step: the profile behind docs/benchmarks.md.

    python -m benchmarks.steps [--images 2000] [--json FILE]

Starts the emulator, writes a backlog of small PNGs, and runs `watchd sync` over it in a
child process in which each step of the pipeline is wrapped to add up the CPU time
(`time.thread_time`: user + system, of the thread that runs it) spent inside it. So a
step's figure includes what the kernel does for it (creating files, fsync, socket
writes) and excludes waiting (for the emulator, a lock, the disk). Steps nest: "upload
worker: one file" contains the upload and its journal records.

Sampling profilers answer a different question: `py-spy --gil` sees only the time
Python holds the GIL, and `perf` cannot name Python functions in Python 3.11.
"""

from __future__ import annotations

import functools
import importlib
import json
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.children import run_child
from benchmarks.fixtures import count_sidecars, new_emulator, write_config, write_images
from benchmarks.harness import BenchmarkError, profile_main

# (module, attribute path, what it is), in the order of the printed table. The first three
# top-level rows are whole threads' work; the last three gather a step from every thread.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("watchd.pipeline", "Pipeline.process", "upload worker: one file, all of it"),
    ("watchd.hosts.imageban", "ImageBanHost.upload", "  the HTTP exchange"),
    ("watchd.pipeline", "load_image", "  read, check and hash the image"),
    ("watchd.journal._files", "Files.claim_upload", "  journal: claim the upload"),
    ("watchd.journal._files", "Files.record_published", "  journal: record upload, sidecar, Baidu item"),
    ("watchd.journal._files", "Files.get_by_id", "  journal: read the row"),
    ("watchd.pipeline", "Pipeline._push_payload", "  build and check the Baidu item"),
    ("watchd.engine", "Engine._turn", "loop thread: facts, intake, dispatch"),
    ("watchd.pipeline", "Pipeline.intake", "  intake of a found file"),
    ("watchd.journal._files", "Files.due_uploads", "  journal: due uploads"),
    ("watchd.batcher", "BaiduBatcher.run_forever", "Baidu batcher thread"),
    ("watchd.indexers.baidu", "BaiduIndexer.push", "  pushPic calls"),
    ("watchd.batcher", "BaiduBatcher._refresh_sidecars", "  json sidecars rewritten with pushed_at"),
    ("watchd.pipeline", "Pipeline.write_sidecar", "any thread: sidecar writes (upload, push)"),
    ("watchd.pipeline", "write_atomic", "  of which temp file, write, fsync, rename"),
    ("watchd.rules", "RuleResolver.rules_for", "any thread: resolving a file's rules"),
    ("logging", "Handler.handle", "any thread: log lines"),
)


def main(argv: Sequence[str] | None = None) -> int:
    return profile_main(
        argv,
        prog="python -m benchmarks.steps",
        description=__doc__,
        count=("images", 2000),
        measure=measure,
        render=render,
        child=_child,
    )


def measure(images: int) -> dict[str, Any]:
    """Run one `watchd sync` of `images` fresh PNGs under the wrappers; its figures."""
    with tempfile.TemporaryDirectory(prefix="watchd-steps-") as scratch, new_emulator() as emulator:
        work = Path(scratch)
        folder = work / "backlog"
        write_images(folder, images)
        config = write_config(work / "config.yaml", emulator, folder, work / "state")
        out = work / "steps.json"
        argv = [sys.executable, "-m", "benchmarks.steps", "--child", str(config), str(out)]
        run = run_child(argv, work / "sync.log", timeout=600)
        if len(emulator.uploads()) != images or count_sidecars(folder) != images:
            raise BenchmarkError(f"the sync did not publish all {images} images")
        figures = json.loads(out.read_text(encoding="utf-8"))
    return {"images": images, "wall_seconds": run.seconds, **figures}


def render(result: dict[str, Any]) -> str:
    per_image = 1000 / result["images"]
    total = result["process_cpu_seconds"]
    lines = [
        f"watchd sync of {result['images']} images: {result['wall_seconds']:.2f} s wall, "
        f"{total * per_image:.3f} ms of CPU per image (user + system, whole process)",
        "",
        f"{'step':50} {'ms/image':>9} {'share':>6} {'calls':>7}",
    ]
    for label, (seconds, calls) in result["steps"].items():
        lines.append(f"{label:50} {seconds * per_image:9.3f} {seconds / total:6.0%} {calls:7d}")
    return "\n".join(lines)


# -- the child: watchd sync with its steps wrapped ------------------------------------------


@dataclass
class _Tally:
    seconds: float = 0.0
    calls: int = 0


def _child(config: Path, out: Path) -> int:
    spent = {label: _Tally() for _module, _attribute, label in STEPS}
    for module, attribute, label in STEPS:
        _wrap(importlib.import_module(module), attribute, spent[label])
    from watchd.cli import main as watchd_main

    code = watchd_main(["sync", "-c", str(config), "--log-format", "json"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {
        "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
        "steps": {label: (tally.seconds, tally.calls) for label, tally in spent.items()},
    }
    out.write_text(json.dumps(figures), encoding="utf-8")
    return code


def _wrap(module: object, attribute: str, tally: _Tally) -> None:
    """Replace `module.attribute` (a function or a class's method) with a timed call.

    A call that re-enters the same step on the same thread (recursion) is counted once.
    """
    owner_name, _, name = attribute.rpartition(".")
    owner = getattr(module, owner_name) if owner_name else module
    original: Callable[..., Any] = getattr(owner, name)
    inside = threading.local()
    lock = threading.Lock()

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if getattr(inside, "active", False):
            return original(*args, **kwargs)
        inside.active = True
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            inside.active = False
            seconds = time.thread_time() - start
            with lock:
                tally.seconds += seconds
                tally.calls += 1

    setattr(owner, name, timed)


if __name__ == "__main__":
    sys.exit(main())
