"""What the processes under test work on: the emulator, their config, images and folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.imagegen import png
from watchd.emulator import DEMO_SECRET_KEY, Emulator

CONCURRENCY = 4  # uploads in flight, for watchd and for the raw ceiling alike
UNLIMITED_QUOTA = 1_000_000_000
SIDECAR_SUFFIX = ".link.json"


def new_emulator() -> Emulator:
    """The emulator on a free loopback port, quotas out of the way of large backlogs.

    Not started yet: use it as a context manager.
    """
    return Emulator(account_quota=UNLIMITED_QUOTA, guest_quota=UNLIMITED_QUOTA)


def write_config(
    path: Path,
    emulator: Emulator,
    folder: Path,
    state_dir: Path,
    *,
    concurrency: int = CONCURRENCY,
    baidu: bool = True,
) -> Path:
    """A config watching `folder` (recursively), uploading to the emulator and (with `baidu`)
    pushing to it."""
    config: dict[str, object] = {
        "state_dir": str(state_dir),
        "concurrency": concurrency,
        "hosts": {
            "me": {
                "type": "imageban",
                "secret_key": DEMO_SECRET_KEY,
                "api_url": emulator.imageban_url,
                "daily_quota": UNLIMITED_QUOTA,
            }
        },
        "defaults": {"host": "me"},
        "folders": [{"path": str(folder), "recursive": True}],
    }
    if baidu:
        config["baidu"] = {"app_id": "demo-app", "app_token": "demo-token", "api_base": emulator.baidu_url}
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
    path.chmod(0o600)  # it holds the (demo) secrets inline; watchd warns otherwise
    return path


def secret_env() -> dict[str, str]:
    """The environment for the comparison clients: the key travels here, never on a command line."""
    return {**os.environ, "IMAGEBAN_SECRET_KEY": DEMO_SECRET_KEY}


# -- files -------------------------------------------------------------------------------


def image_bytes(n: int, padding: int = 16_000) -> bytes:
    """A distinct small PNG for each `n` below 4096 (about 16 KB with the default padding)."""
    return png(8 + n % 64, 8 + n // 64 % 64, extra_bytes=padding)


def write_images(folder: Path, count: int) -> None:
    """`count` distinct PNGs named img00000.png, img00001.png, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"img{n:05d}.png").write_bytes(image_bytes(n))


def remove_sidecars(folder: Path) -> None:
    for sidecar in folder.glob(f"*{SIDECAR_SUFFIX}"):
        sidecar.unlink()


def count_sidecars(folder: Path) -> int:
    return sum(1 for _ in folder.glob(f"*{SIDECAR_SUFFIX}"))


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
