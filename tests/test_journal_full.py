"""A journal that cannot be written (its disk full) holds all work as one wait, not one per file."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from benchmarks.children import process_cpu_seconds
from tests.conftest import StartDaemon, sidecar_of, wait_for, write_config
from tests.imagegen import png
from tests.test_lifecycle import uploading
from tests.test_resilience import FAST_RETRIES, small_filesystem
from watchd.emulator import Emulator


def test_uploads_in_flight_when_the_journal_disk_fills_resume_within_seconds_of_space_coming_back(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    with small_filesystem(tmp_path / "state", "8m") as state:
        folder = tmp_path / "pics"
        folder.mkdir()
        config = write_config(
            tmp_path / "config.yaml", emulator, [{"path": folder}], state_dir=state, extra=FAST_RETRIES
        )
        emulator.set_faults(latency=1.0)  # the files are in the workers' hands when the disk fills
        daemon = start_daemon(config)
        assert daemon.process is not None
        files = [folder / f"f{n:02d}.png" for n in range(24)]
        for n, path in enumerate(files):
            path.write_bytes(png(n + 1, 5))
        wait_for(lambda: uploading(state) >= 4)
        filler = state / "filler.bin"
        with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
        # Every file a worker holds fails on the journal: 16 of them, each of which cost a
        # 5 s sleep of the whole daemon, one after the other, even after space was back.
        wait_for(lambda: "cannot write the journal" in daemon.log(), timeout=20)
        time.sleep(1.5)  # the uploads in flight end, and fail to be recorded
        before = process_cpu_seconds(daemon.process.pid)
        time.sleep(2.0)
        assert process_cpu_seconds(daemon.process.pid) - before < 0.5, (
            "it waits for the disk, it does not spin"
        )
        emulator.set_faults(latency=0.0)
        filler.unlink()
        freed = time.monotonic()
        wait_for(lambda: all(sidecar_of(p).exists() for p in files), timeout=30)
        assert time.monotonic() - freed < 10
        log = daemon.log()
        assert log.count("cannot write the journal") == 1, "said once, not per file"
        assert log.count("can be written again") == 1
        assert daemon.stop() == 0
