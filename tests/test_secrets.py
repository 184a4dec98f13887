"""No configured secret reaches a log line, a sidecar, `status`, `check` or the journal."""

from __future__ import annotations

import socket
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


def closed_port() -> int:
    with socket.socket() as probe:  # nothing listens on it afterwards: connections are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def journal_and_status(tmp_path: Path, config: Path) -> str:
    """What `watchd status` (table and JSON) shows and every byte of the journal, as text."""
    outputs = [run_cli("status", "-c", str(config), *flag) for flag in ((), ("--json",))]
    text = "".join(o.stdout + o.stderr for o in outputs)
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            text += path.read_bytes().decode("utf-8", "replace")
    return text


def test_a_key_in_an_api_urls_query_reaches_neither_the_journal_nor_status(
    tmp_path: Path, emulator: Emulator
) -> None:
    dead, working = tmp_path / "dead", tmp_path / "working"
    config = write_config(
        tmp_path / "c.yaml",
        emulator,
        [{"path": dead}, {"path": working, "rules": {"host": "guest"}}],
        state_dir=tmp_path / "state",
        extra="retry:\n  initial: 0.01\n  maximum: 0.02\n",
    )
    keys = {"imageban": "QUERYKEY-imageban-7d6c", "baidu": "QUERYKEY-baidu-3b2a", "fragment": "FRAGMENT-9e8d"}
    text = config.read_text()
    text = text.replace(  # host `me` is down: its uploads fail
        f"api_url: {emulator.imageban_url}",
        f"api_url: http://127.0.0.1:{closed_port()}/v1?key={keys['imageban']}#{keys['fragment']}",
        1,
    )
    text = text.replace(f"api_url: {emulator.imageban_url}", f"api_url: {emulator.imageban_url}?key=x", 1)
    text = text.replace(  # Baidu is down: the pushes of host `guest`'s uploads fail
        f"api_base: {emulator.baidu_url}", f"api_base: http://127.0.0.1:{closed_port()}/x?sig={keys['baidu']}"
    )
    config.write_text(text)
    for folder in (dead, working):
        folder.mkdir()
        (folder / "a.png").write_bytes(png(4, 4))
    sync = run_cli("sync", "-c", str(config))
    assert sync.returncode == 1
    assert len(emulator.uploads()) == 1  # the working host's, whose push then failed
    seen = journal_and_status(tmp_path, config) + sync.stderr
    assert "cannot reach http://127.0.0.1:" in seen  # the failures are there, without the keys
    for key in keys.values():
        assert key not in seen, key


def test_a_dead_proxys_login_reaches_neither_the_journal_nor_status(
    tmp_path: Path, emulator: Emulator
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    config = write_config(
        tmp_path / "c.yaml", emulator, [{"path": folder}], state_dir=tmp_path / "state", baidu=False
    )
    (folder / "a.png").write_bytes(png(4, 4))
    port = closed_port()
    proxy = f"http://proxyuser:PROXYPASS-4f3e@127.0.0.1:{port}"
    env = {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}  # 127.0.0.1 too
    result = run_cli("sync", "-c", str(config), env=env)
    assert result.returncode == 1
    assert not emulator.requests()
    seen = journal_and_status(tmp_path, config) + result.stderr
    assert f"cannot reach the proxy http://127.0.0.1:{port} (HTTP_PROXY)" in seen
    assert "check HTTP_PROXY and NO_PROXY" in seen
    assert "PROXYPASS-4f3e" not in seen and "proxyuser" not in seen
