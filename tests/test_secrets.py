"""No configured secret reaches a log line, a sidecar, `status`, `check` or the journal."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, run_cli, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd.emulator import Emulator

SECRETS = {
    "TEST_SECRET_KEY": "sk-TOPSECRET-9f8e7d6c",
    "TEST_CLIENT_ID": "cid-TOPSECRET-1a2b3c",
    "TEST_APP_TOKEN": "tok-TOPSECRET-5a5b5c",
}


@pytest.fixture
def secret_emulator() -> Iterator[Emulator]:
    with Emulator(
        secret_keys=(SECRETS["TEST_SECRET_KEY"],),
        client_ids=(SECRETS["TEST_CLIENT_ID"],),
        baidu_apps={"demo-app": SECRETS["TEST_APP_TOKEN"]},
    ) as emulator:
        yield emulator


def test_secrets_appear_nowhere_in_what_watchd_writes(
    tmp_path: Path, secret_emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "c.yaml",
        secret_emulator,
        [{"path": folder}, {"path": tmp_path / "guest", "rules": {"host": "guest"}}],
        state_dir=tmp_path / "state",
        extra="retry:\n  initial: 0.01\n  maximum: 0.02\n  requeue_initial: 0.2\n",
    )
    (tmp_path / "guest").mkdir()
    secret_emulator.set_faults(http_error_rate=0.3, seed=5)
    daemon = start_daemon(config, env=SECRETS)
    for n in range(6):
        (folder / f"s{n}.png").write_bytes(png(n + 1, 3))
        (tmp_path / "guest" / f"g{n}.gif").write_bytes(png(n + 2, 3))
    wait_for(lambda: all(sidecar_of(folder / f"s{n}.png").exists() for n in range(6)), timeout=30)
    assert daemon.stop() == 0

    # A wrong Baidu token and a wrong key: the configuration errors are reported loudly.
    wrong = {**SECRETS, "TEST_APP_TOKEN": "tok-WRONGSECRET-0000", "TEST_SECRET_KEY": "sk-WRONGSECRET-1111"}
    (folder / "late.png").write_bytes(png(9, 9))
    outputs = [
        run_cli("sync", "-c", str(config), "--log-level", "debug", env=wrong),
        run_cli("status", "-c", str(config), env=wrong),
        run_cli("status", "-c", str(config), "--json", env=wrong),
        run_cli("check", "-c", str(config), env=SECRETS),
    ]
    text = "".join(o.stdout + o.stderr for o in outputs)
    assert "paused" in text or "configuration" in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "c.yaml":
            text += path.read_bytes().decode("utf-8", "replace")
    for secret in [*SECRETS.values(), *wrong.values()]:
        assert secret not in text, secret
        assert urllib.parse.quote(secret) not in text
