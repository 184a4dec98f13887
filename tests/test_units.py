"""The systemd units in systemd/: `systemd-analyze verify` is clean and the sandbox rates ≤ 2.0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM, TEMPLATE, USER = (
    UNITS / "watchd.service",
    UNITS / "watchd@.service",
    UNITS / "user" / "watchd.service",
)
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (package systemd)"
)


def analyze(*args: str, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze; a user manager (--user) needs a runtime directory to start."""
    assert ANALYZE is not None
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def verifiable_copy(unit: Path, directory: Path, name: str | None = None) -> Path:
    """The unit with its ExecStart binary replaced by one that exists (verify checks it)."""
    text = unit.read_text(encoding="utf-8")
    text, count = re.subn(r"^ExecStart=\S+", f"ExecStart={shutil.which('true')}", text, flags=re.M)
    assert count == 1, f"{unit}: expected one ExecStart="
    copy = directory / (name or unit.name)
    copy.write_text(text, encoding="utf-8")
    return copy


def verify_problems(unit: Path, tmp_path: Path, *, user: bool) -> list[str]:
    """What `systemd-analyze verify` says about `unit` (it exits 0 even for unknown keys)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    result = analyze(*(["--user"] if user else []), "verify", str(unit), runtime_dir=runtime)
    output = (result.stdout + result.stderr).splitlines()
    problems = [line for line in output if unit.name in line or str(unit.parent) in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {output}")
    return problems


def exposure(unit: Path, tmp_path: Path) -> float:
    result = analyze("security", "--offline=yes", str(unit), runtime_dir=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no overall exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize(
    ("unit", "name", "user"),
    [(SYSTEM, None, False), (TEMPLATE, "watchd@photos.service", False), (USER, None, True)],
    ids=["system", "template-instance", "user"],
)
def test_verify_is_clean(unit: Path, name: str | None, user: bool, tmp_path: Path) -> None:
    copy = verifiable_copy(unit, tmp_path, name)
    assert verify_problems(copy, tmp_path, user=user) == []


@needs_analyze
def test_verify_check_catches_a_bad_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo in a key is reported."""
    copy = verifiable_copy(SYSTEM, tmp_path)
    copy.write_text(
        copy.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchdogSecs="), encoding="utf-8"
    )
    problems = verify_problems(copy, tmp_path, user=False)
    assert any("WatchdogSecs" in line for line in problems), problems


@needs_analyze
@pytest.mark.parametrize(
    ("unit", "name"),
    [(SYSTEM, "watchd.service"), (TEMPLATE, "watchd@photos.service")],
    ids=["system", "template"],
)
def test_sandbox_exposure_is_at_most_two(unit: Path, name: str, tmp_path: Path) -> None:
    copy = tmp_path / name
    shutil.copyfile(unit, copy)
    assert exposure(copy, tmp_path) <= MAX_EXPOSURE


def sandbox(unit: Path) -> list[str]:
    lines = unit.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Sandbox."))
    return [line for line in lines[start + 1 :] if line and not line.startswith("#")]


def test_template_sandbox_matches_the_system_unit() -> None:
    assert sandbox(TEMPLATE) == sandbox(SYSTEM)


@pytest.mark.parametrize("unit", [SYSTEM, TEMPLATE, USER], ids=["system", "template", "user"])
def test_lifecycle_contract(unit: Path) -> None:
    """What the engine relies on: notify readiness, a watchdog it pings, SIGHUP for reload."""
    lines = set(unit.read_text(encoding="utf-8").splitlines())
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=60",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "TimeoutStopSec=30",
        "UMask=0077",
    ):
        assert line in lines, f"{unit}: missing {line}"
