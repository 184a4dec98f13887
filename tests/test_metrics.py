"""The optional Prometheus endpoint of a running daemon."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartDaemon, sidecar_of, wait_for, write_config
from tests.imagegen import png
from watchd.emulator import Emulator
from watchd.journal import Journal
from watchd.metrics import Metrics, MetricsServer, journal_gauges

# The samples each kind of family has (Prometheus' text format; OpenMetrics names the family
# of a counter `x_total` `x`, as prometheus_client's parser does).
SAMPLES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def families(page: str) -> dict[str, str]:
    """The families of a metrics page (name -> type), checked as strictly as Prometheus names
    them (prometheus_client is not a dependency): every sample follows its family's TYPE and
    is named for it, and no name is claimed by two families, as a family or a sample."""
    kinds: dict[str, str] = {}
    owner: dict[str, str] = {}  # every name a family claims -> that family
    family = None
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            family = name.removesuffix("_total") if kind == "counter" else name
            claimed = {family} | {family + suffix for suffix in SAMPLES[kind]}
            assert not claimed & owner.keys(), f"{name} ({kind}) clashes with {claimed & owner.keys()}"
            kinds[family] = kind
            owner.update(dict.fromkeys(claimed, family))
        elif line and not line.startswith("#"):
            sample = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert sample and family, f"a sample before any TYPE: {line}"
            allowed = {family + suffix for suffix in SAMPLES[kinds[family]]}
            assert sample[0] in allowed, f"{sample[0]} is not a sample of {family} ({kinds[family]})"
    return kinds


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
    assert 'watchd_files_in_state{state="done"} 2' in text
    assert families(text)["watchd_files"] == "counter"
    assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
    assert daemon.stop() == 0


def test_no_two_families_share_a_name(tmp_path: Path) -> None:
    """The counter `watchd_files_total` is the family `watchd_files`: no gauge may take that name."""
    journal = Journal.open(tmp_path / "state")
    try:
        page = Metrics(lambda: journal_gauges(journal, [])).render()
    finally:
        journal.close()
    assert families(page) == {
        "watchd_files": "counter",
        "watchd_publish_seconds": "histogram",
        "watchd_files_in_state": "gauge",
        "watchd_queue": "gauge",
        "watchd_quota_used_today": "gauge",
        "watchd_quota_remaining": "gauge",
        "watchd_service_paused": "gauge",
    }


def test_large_gauge_values_are_rendered_in_full() -> None:
    metrics = Metrics(lambda: {"watchd_files_in_state": {(("state", "done"),): 1234567.0, (): 2.5}})
    text = metrics.render()
    assert 'watchd_files_in_state{state="done"} 1234567\n' in text and "watchd_files_in_state 2.5\n" in text


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
