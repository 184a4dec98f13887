"""`watchd demo`: the whole pipeline against the built-in emulator, with no account and no network."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.errors import WatchdError

DEMO_CONFIG = """\
state_dir: {state}
hosts:
  demo:
    type: imageban
    secret_key: demo-secret
    api_url: {imageban}
baidu:
  app_id: demo-app
  app_token: demo-token
  api_base: {baidu}
  linger: 0.2
defaults:
  host: demo
  tags: [demo, watchd]
  title: "{{stem}} — a watchd demo image"
folders:
  - path: {folder}
settle: 0.5
"""


def run_demo(folder: Path) -> int:
    """Start the emulator, watch `folder`, and print what happens to each file until Ctrl-C.

    The config and journal live in a temporary directory that is removed at the end: they
    name an emulator that is gone by then. `folder`, its images and sidecars stay. Raise
    WatchdError if `folder` cannot be created.
    """
    from watchd.engine import Engine

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "it exists and is not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        raise WatchdError(
            f"demo: cannot watch {folder}: {reason}; pass --dir a folder to watch (it is created if missing)"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="watchd-demo-") as temp, Emulator() as emulator:
        state = Path(temp)
        config = state / "config.yaml"
        config.write_text(
            DEMO_CONFIG.format(  # paths as JSON strings (JSON is YAML): "#" or "${" in them stay text
                state=json.dumps(str(state / "state")).replace("${", "$${"),
                imageban=emulator.imageban_url,
                baidu=emulator.baidu_url,
                folder=json.dumps(str(folder.resolve())).replace("${", "$${"),
            ),
            encoding="utf-8",
        )
        print(f"watchd demo: the emulator of ImageBan and Baidu runs at {emulator.url}")
        print(f"watchd demo: drop a JPEG, PNG or GIF into {folder}")
        print("watchd demo: its link appears below and in a .link.json file next to it;")
        print("watchd demo: delete it to see it withdrawn. Ctrl-C stops.")
        print(f"watchd demo: config and journal in {state} (removed when the demo stops)")
        return Engine(load_settings(config)).run()
