"""The throughput ceiling: a bare httpx upload loop, `--threads` at a time over one shared client.

Run as a child process, like `watchd sync`, so it does not share a GIL with the emulator:

    IMAGEBAN_SECRET_KEY=... python -m benchmarks.raw_upload URL FOLDER --threads 4

It does only what any uploader must: read each PNG in FOLDER, POST it as watchd does
(multipart `image` + `name`, Bearer auth), and check that the answer carries a link. No
journal, no sidecar, no retries. Exits 1 if any upload failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def upload_all(url: str, secret_key: str, files: Sequence[Path], threads: int) -> int:
    """Upload every file; return how many failed."""
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(limits=limits, timeout=60.0) as client:

        def upload(path: Path) -> bool:
            with path.open("rb") as body:
                response = client.post(
                    url,
                    headers={"Authorization": f"Bearer {secret_key}"},
                    data={"name": path.name},
                    files={"image": (path.name, body, "image/png")},
                )
            data = response.json().get("data")
            return response.status_code == 200 and isinstance(data, dict) and bool(data.get("link"))

        with ThreadPoolExecutor(threads) as pool:
            return sum(not ok for ok in pool.map(upload, files))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_upload", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    files = sorted(args.folder.glob("*.png"))
    failed = upload_all(args.url, os.environ["IMAGEBAN_SECRET_KEY"], files, args.threads)
    if failed:
        print(f"raw_upload: {failed} of {len(files)} uploads failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
