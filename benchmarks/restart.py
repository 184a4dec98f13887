"""Restart cost: `watchd sync` with nothing to do over a large journal: wall time and peak RSS.

Filling a journal through real uploads runs at the `throughput` rate (100,000 files would
take many minutes), so the journal is written directly: `Journal` creates the real
schema, then rows go in as a finished sync leaves them (state done, the file's size and
mtime, upload fields, the sidecar path, `pushed_at`; a sent push leaves no outbox row). The no-op
syncs prove the fill faithful: had any row not matched its file, watchd would upload it,
and the scenario fails if the emulator saw a single request.

Two trees:
- `restart_files` tiny PNGs, each with its sidecar, 1,000 per directory: the target case;
- `restart_rows` empty `.jpg` files without sidecars (a million sidecars would double the
  set-up time and add nothing the walk does not already show): does memory stay bounded?
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from benchmarks.children import run_child, watchd_argv
from benchmarks.fixtures import SIDECAR_SUFFIX, fresh_dir, new_emulator, write_config
from benchmarks.harness import BenchmarkError, Scenario, Size, Target, say
from tests.imagegen import png
from watchd.emulator import Emulator
from watchd.journal import DONE, JOURNAL_NAME, Journal

PER_DIRECTORY = 1_000
TIMEOUT = 600.0
TINY_PNG = png(8, 8)
_SHA = {len(TINY_PNG): hashlib.sha256(TINY_PNG).hexdigest(), 0: hashlib.sha256(b"").hexdigest()}
SIDECAR_TEXT = '{"link": "http://127.0.0.1/out/x.png", "short_link": "http://127.0.0.1/i/x"}\n'

_FILE_COLUMNS = (
    "id, path, last_path, root, state, size, mtime_ns, sha256, baidu_id, host, remote_id, link, "
    "short_link, resolution, uploaded_size, uploaded_at, uploaded_sha256, upload_count, sidecar_path, "
    "pushed_at, created_at, updated_at"
)


def run(size: Size, workdir: Path) -> Scenario:
    scenario = Scenario("restart")
    if shutil.which("time") is None:
        scenario.skipped.append("peak RSS: GNU time not found; install with `apt-get install -y time`")
    runs: defaultdict[str, list[float | None]] = defaultdict(list)
    with new_emulator() as emulator:
        for key, count, sidecars in (("small", size.restart_files, True), ("big", size.restart_rows, False)):
            base = fresh_dir(workdir / key)
            say(f"restart: {count:,} files{' with sidecars' if sidecars else ''}, and their journal")
            began = time.perf_counter()
            _make_tree(base / "tree", count, sidecars)
            runs[f"{key}_tree"].append(time.perf_counter() - began)
            began = time.perf_counter()
            _fill_journal(base / "state", base / "tree", emulator, sidecars)
            runs[f"{key}_fill"].append(time.perf_counter() - began)
            config = write_config(base / "config.yaml", emulator, base / "tree", base / "state")
            for repeat in range(size.restart_repeats):
                say(f"restart: no-op sync over {count:,} rows, repeat {repeat + 1}")
                child = run_child(watchd_argv("sync", config), base / "sync.log", timeout=TIMEOUT)
                runs[f"{key}_s"].append(child.seconds)
                runs[f"{key}_rss"].append(child.max_rss_mb)
            if emulator.requests():
                raise BenchmarkError(
                    f"a no-op sync over {count:,} files sent {len(emulator.requests())} requests"
                )
    small, big = f"{size.restart_files:,}", f"{size.restart_rows:,}"
    scenario.add("sync_s", f"no-op sync, {small} files", "s", runs["small_s"], Target("<=", 5))
    scenario.add("rss_mb", f"peak RSS, {small} files", "MB", runs["small_rss"], Target("<=", 150))
    scenario.add("big_sync_s", f"no-op sync, {big} rows", "s", runs["big_s"])
    scenario.add("big_rss_mb", f"peak RSS, {big} rows", "MB", runs["big_rss"], Target("<=", 150))
    scenario.add("tree_s", f"set-up: {small} files + sidecars", "s", runs["small_tree"])
    scenario.add("fill_s", f"set-up: journal of {small} rows", "s", runs["small_fill"])
    scenario.add("big_tree_s", f"set-up: {big} empty files", "s", runs["big_tree"])
    scenario.add("big_fill_s", f"set-up: journal of {big} rows", "s", runs["big_fill"])
    scenario.notes.append(
        f"no-op sync: {size.restart_repeats} repeats over each tree; journal filled directly "
        "(see benchmarks/restart.py)"
    )
    return scenario


def _make_tree(root: Path, count: int, sidecars: bool) -> None:
    """`count` files under `root`, PER_DIRECTORY to a directory: tiny PNGs with sidecars, or empty."""
    content = TINY_PNG if sidecars else b""
    for n in range(count):
        if n % PER_DIRECTORY == 0:
            directory = root / f"d{n // PER_DIRECTORY:04d}"
            directory.mkdir(parents=True)
        path = directory / f"img{n:07d}{'.png' if sidecars else '.jpg'}"
        path.write_bytes(content)
        if sidecars:
            Path(f"{path}{SIDECAR_SUFFIX}").write_text(SIDECAR_TEXT, encoding="utf-8")


def _fill_journal(state_dir: Path, tree: Path, emulator: Emulator, sidecars: bool) -> None:
    """Create the journal with the real schema, then insert a finished row per file, streamed."""
    Journal.open(state_dir).close()
    rows = _file_rows(tree.resolve(), emulator, sidecars)
    db = sqlite3.connect(state_dir / JOURNAL_NAME, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO files ({_FILE_COLUMNS}) VALUES ({', '.join('?' * 22)})", rows)
        db.execute("COMMIT")
    finally:
        db.close()


def _file_rows(tree: Path, emulator: Emulator, sidecars: bool) -> Iterator[tuple[object, ...]]:
    """A `files` row per file, as `watchd sync` leaves it once the file is uploaded and pushed."""
    now = time.time()
    uploaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    file_id = 0
    for directory in sorted(os.scandir(tree), key=lambda entry: entry.name):
        for entry in os.scandir(directory.path):
            if entry.name.endswith(SIDECAR_SUFFIX):
                continue
            info = entry.stat()
            file_id += 1
            sha = _SHA[info.st_size]
            remote_id = f"R{file_id:07d}"
            yield (
                file_id,
                entry.path,
                entry.path,
                str(tree),
                DONE,
                info.st_size,
                info.st_mtime_ns,
                sha,
                f"{file_id:032x}",
                "me",
                remote_id,
                f"{emulator.url}/out/2026/01/01/{remote_id}.png",
                f"{emulator.url}/i/{remote_id}",
                "8x8",
                info.st_size,
                uploaded_at,
                sha,
                1,
                entry.path + SIDECAR_SUFFIX if sidecars else None,
                uploaded_at,
                now,
                now,
            )
