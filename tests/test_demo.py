"""`watchd demo`: a new user drops an image in and sees its link, its sidecar and its withdrawal."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import sidecar_of, wait_for
from tests.imagegen import png


def test_the_demo_shows_each_step(tmp_path: Path) -> None:
    output = tmp_path / "demo.out"
    folder = tmp_path / "demo #1 ${HOME}"  # YAML would read a comment and an env variable in it
    with open(output, "wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "watchd", "demo", "--dir", str(folder)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        text = lambda: output.read_text(encoding="utf-8", errors="replace")  # noqa: E731
        wait_for(lambda: "watching 1 folders" in text(), timeout=20)
        assert "drop a JPEG, PNG or GIF into" in text()
        image = folder / "hello.png"
        image.write_bytes(png(8, 8))
        wait_for(lambda: sidecar_of(image).exists())
        link = json.loads(sidecar_of(image).read_text(encoding="utf-8"))["link"]
        wait_for(lambda: link in text() and "Baidu push: 1 of 1" in text())
        image.unlink()
        wait_for(lambda: "Baidu delete: 1 of 1" in text() and not sidecar_of(image).exists())
        shown = re.search(r"config and journal in (.+) \(removed when the demo stops\)", text())
        assert shown is not None
        state = Path(shown[1])
        assert (state / "config.yaml").is_file()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=20) == 0
        assert not state.exists()  # nothing left behind in /tmp, run after run
    finally:
        if demo.poll() is None:
            demo.kill()
