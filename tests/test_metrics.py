"""The optional Prometheus endpoint of a running daemon."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartDaemon, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd.emulator import Emulator
from watchd.metrics import Metrics, MetricsServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_report_outcomes_latency_queues_and_quotas(
    tmp_path: Path, emulator: Emulator, start_daemon: StartDaemon
) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        emulator,
        [{"path": folder}],
        state_dir=tmp_path / "s",
        extra=f"metrics:\n  listen: 127.0.0.1:{port}\n",
    )
    daemon = start_daemon(config)
    for n in range(2):
        (folder / f"m{n}.png").write_bytes(png(n + 3, 3))
    wait_for(lambda: all(sidecar_of(folder / f"m{n}.png").exists() for n in range(2)))
    text = wait_for(
        lambda: (t := httpx.get(f"http://127.0.0.1:{port}/metrics").text) and 'outcome="done"} 2' in t and t
    )
    assert "watchd_publish_seconds_count 2" in text
    assert 'watchd_publish_seconds_bucket{le="+Inf"} 2' in text
    assert 'watchd_queue{queue="uploads"} 0' in text
    assert 'watchd_quota_used_today{service="imageban:me"} 2' in text
    assert 'watchd_quota_remaining{service="imageban:me"} 1498' in text
    assert 'watchd_service_paused{service="baidu"} 0' in text
    assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
    assert daemon.stop() == 0


def test_large_gauge_values_are_rendered_in_full() -> None:
    metrics = Metrics(lambda: {"watchd_files": {(("state", "done"),): 1234567.0, (): 2.5}})
    text = metrics.render()
    assert 'watchd_files{state="done"} 1234567\n' in text and "watchd_files 2.5\n" in text


def test_the_endpoint_listens_on_an_ipv6_loopback_too() -> None:
    try:
        server = MetricsServer(Metrics(lambda: {}), "::1", 0).start()
    except OSError as exc:  # a machine without IPv6 has nothing to test here
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        answer = httpx.get(f"http://[::1]:{server.port}/metrics", timeout=5)
        assert answer.status_code == 200 and "watchd_files_total" in answer.text
    finally:
        server.stop()
