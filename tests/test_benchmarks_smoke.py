"""The benchmark suite still runs: `python -m benchmarks --size tiny`, and its JSON makes sense.

Not a performance test: no target is asserted (a shared machine would make that flaky).
What is checked is that every scenario produced every figure, that the figures are
physically plausible (percentiles in order, rates positive, Baidu batches no larger than
the API allows) and that a missing comparison tool is reported with its install command.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import percentile
from benchmarks.shell import LOOP_SCRIPT, skip_reason

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("latency", "throughput", "baidu", "restart", "idle")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [sys.executable, "-m", "benchmarks", "--size", "tiny", "--only", ",".join(SCENARIOS)]
    proc = subprocess.run([*argv, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "watchd benchmarks" in proc.stdout  # the table
    assert "demo-secret" not in proc.stdout + proc.stderr + out.read_text()
    return json.loads(out.read_text())


def figure(report: dict[str, Any], scenario: str, key: str) -> float | None:
    entry = report["scenarios"][scenario]["figures"][key]
    if entry["runs"]:
        assert entry["value"] == pytest.approx(statistics.median(entry["runs"]))
    if entry["target"] is not None and entry["value"] is not None:
        assert isinstance(entry["met"], bool)
    return entry["value"]


def test_every_scenario_ran_without_error_on_a_described_machine(report: dict[str, Any]) -> None:
    assert report["size"] == "tiny"
    assert report["machine"]["nproc"] >= 1
    assert set(report["scenarios"]) == set(SCENARIOS)
    assert all(report["scenarios"][name]["error"] is None for name in SCENARIOS)


def test_latency_percentiles_are_in_order(report: dict[str, Any]) -> None:
    contenders = ["watchd"]
    if shutil.which("inotifywait") and shutil.which("curl"):
        contenders.append("script")
        assert figure(report, "latency", "p95_ratio") is not None
    else:
        (reason,) = report["scenarios"]["latency"]["skipped"]
        assert "apt-get install -y inotify-tools" in reason or "apt-get install -y curl" in reason
        assert figure(report, "latency", "script_p50_ms") is None
    for name in contenders:
        p50, p95, top = (figure(report, "latency", f"{name}_{q}_ms") for q in ("p50", "p95", "max"))
        assert p50 is not None and p95 is not None and top is not None
        assert 0 < p50 <= p95 <= top < 15_000  # the probe gives up after 15 s


def test_throughput_rates_and_ratios_agree(report: dict[str, Any]) -> None:
    watchd = figure(report, "throughput", "watchd_images_per_s")
    raw = figure(report, "throughput", "raw_images_per_s")
    assert watchd is not None and raw is not None and watchd > 0 and raw > 0
    runs = report["scenarios"]["throughput"]["figures"]
    assert len(runs["ratio_vs_raw"]["runs"]) == len(runs["watchd_images_per_s"]["runs"])
    assert 0 < (figure(report, "throughput", "ratio_vs_raw") or 0) < 10
    assert (figure(report, "throughput", "watchd_cpu_ms_per_image") or 0) > 0


def test_baidu_batches_are_never_larger_than_the_api_allows(report: dict[str, Any]) -> None:
    for mode in ("sync", "run"):
        calls = figure(report, "baidu", f"{mode}_calls_per_image")
        assert calls is not None and 1 / 20 <= calls <= 1
        items = figure(report, "baidu", f"{mode}_items_per_call")
        assert items is not None and 1 <= items <= 20


def test_restart_and_idle_report_time_and_memory(report: dict[str, Any]) -> None:
    for key in ("sync_s", "big_sync_s"):
        assert 0 < (figure(report, "restart", key) or 0) < 60
    for key in ("rss_mb", "big_rss_mb"):
        assert 10 < (figure(report, "restart", key) or 0) < 4096
    cpu = figure(report, "idle", "cpu_s_per_min")
    assert cpu is not None and 0 <= cpu <= 60 * report["machine"]["nproc"] + 1  # a minute of every core
    assert 10 < (figure(report, "idle", "rss_mb") or 0) < 4096


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile(list(range(101)), 95) == 95
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 95) == 7.0


def test_a_missing_tool_is_named_with_its_install_command() -> None:
    reason = skip_reason("inotifywait", "no-such-tool-here")
    assert reason is not None and "no-such-tool-here" in reason
    assert skip_reason("sh") is None


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_script_takes_the_link_out_of_an_answer_with_escaped_slashes(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    answer = '{"data": {"short_link": "http:\\/\\/s\\/1", "link": "http:\\/\\/h\\/out\\/a.png"}}'
    fake_curl = f"curl() {{ printf '%s' '{answer}'; }}\n"
    script = LOOP_SCRIPT.replace("status=0", fake_curl + "status=0", 1)
    subprocess.run(
        ["bash", "-c", script, "bench", str(tmp_path)],
        check=True,
        env={"IMAGEBAN_SECRET_KEY": "k", "IMAGEBAN_URL": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"},
        timeout=10,
    )
    assert json.loads((tmp_path / "a.png.link.json").read_text()) == {"link": "http://h/out/a.png"}


def test_the_cpu_by_step_profile_still_finds_every_step(tmp_path: Path) -> None:
    """`python -m benchmarks.steps` wraps watchd's functions by name: a renamed or bypassed
    step must fail here, not silently drop out of the profile in docs/benchmarks.md."""
    out = tmp_path / "steps.json"
    argv = [sys.executable, "-m", "benchmarks.steps", "--images", "40", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["images"] == 40 and "ms of CPU per image" in proc.stdout
    steps = result["steps"]
    assert {label for label, (_seconds, calls) in steps.items() if calls == 0} == set()
    threads = ("upload worker", "loop thread", "Baidu batcher thread")
    on_threads = sum(seconds for label, (seconds, _calls) in steps.items() if label.startswith(threads))
    assert 0 < on_threads <= result["process_cpu_seconds"] * 1.05


def test_the_latency_timeline_marks_every_file_at_every_moment_in_order(tmp_path: Path) -> None:
    """`python -m benchmarks.timeline` marks watchd's functions by name, like the steps above;
    it fails itself when a file misses a mark. The moments must come in the pipeline's order."""
    out = tmp_path / "timeline.json"
    argv = [sys.executable, "-m", "benchmarks.timeline", "--files", "12", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    moments = json.loads(out.read_text())["moments_ms"]
    assert len(moments) == 8 and "ms after the file was closed" in proc.stdout
    medians = [figures["p50"] for figures in moments.values()]
    assert medians[0] > 0 and medians[:-1] == sorted(medians[:-1])  # the last is seen from outside
    assert all(figures["p50"] <= figures["p95"] for figures in moments.values())


def test_the_scaling_comparison_runs_every_contender_at_every_concurrency(tmp_path: Path) -> None:
    """`python -m benchmarks.scaling`, behind the concurrency table in docs/benchmarks.md."""
    out = tmp_path / "scaling.json"
    argv = [sys.executable, "-m", "benchmarks.scaling", "--images", "20", "--repeats", "1"]
    argv += ["--concurrency", "1,2", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["contender"], row["concurrency"]) for row in rows] == [
        (name, concurrency) for concurrency in (1, 2) for name in ("watchd", "watchd, no Baidu", "raw httpx")
    ]
    assert all(row["images_per_s"] > 0 and row["cpu_ms_per_image"] > 0 for row in rows)
    assert "CPU ms/image" in proc.stdout
    no_baidu = tmp_path / "work" / "0-watchd-no-Baidu-1"
    assert "baidu" not in (no_baidu / "config.yaml").read_text()  # the contender is what it says
