"""A sidecar written just before a kill -9, whose record never reached the journal, is still
removed with its original, and only when it provably is watchd's."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, sidecar_of, write_config
from tests.imagegen import png
from watchd import pipeline as pipeline_module
from watchd.config import load_settings
from watchd.emulator import Emulator
from watchd.engine import Engine
from watchd.journal import Journal

QUICK_REQUEUE = """
retry:
  requeue_initial: 0.01
  requeue_maximum: 0.01
"""


def die_before(tmp_path: Path, method: str) -> dict[str, str]:
    """The environment of a `watchd` that dies (as by kill -9) the instant it calls `Journal.<method>`:
    after writing the sidecar, before recording it."""
    hook = tmp_path / f"die-before-{method}"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        f"import os\nfrom watchd.journal import Journal\nJournal.{method} = lambda *a, **k: os._exit(137)\n"
    )
    return {"PYTHONPATH": str(hook)}


def watched(tmp_path: Path, emulator: Emulator, sidecar: dict[str, str] | None = None) -> tuple[Path, Path]:
    folder = tmp_path / "pics"
    folder.mkdir()
    rules = {"rules": {"sidecar": sidecar}} if sidecar else {}
    config = write_config(
        tmp_path / "c.yaml",
        emulator,
        [{"path": folder, **rules}],
        state_dir=tmp_path / "state",
        extra=QUICK_REQUEUE,
    )
    return config, folder


def row_of(tmp_path: Path, path: Path) -> tuple[str, str | None, str | None]:
    journal = Journal.open(tmp_path / "state")
    try:
        row = journal.get(str(path))
        assert row is not None
        return row.state, row.link, row.sidecar_path
    finally:
        journal.close()


def uploaded_without_its_sidecar(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync with the sidecar's disk full: the upload is recorded, its sidecar is due again.

    Full for the whole sync: a retry due within it (the config's backoff is milliseconds
    long) must not find the disk free again on a slow machine."""
    real_write = pipeline_module.write_atomic

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pipeline_module, "write_atomic", full)
    assert Engine(load_settings(config)).sync() == 1
    monkeypatch.setattr(pipeline_module, "write_atomic", real_write)


def test_a_sidecar_written_right_before_a_kill_goes_with_its_deleted_original(
    tmp_path: Path, emulator: Emulator
) -> None:
    config, folder = watched(tmp_path, emulator)
    image = folder / "a.png"
    image.write_bytes(png(8, 8))
    assert run_cli("sync", "-c", str(config), env=die_before(tmp_path, "record_published")).returncode == 137
    assert json.loads(sidecar_of(image).read_text())["link"] == emulator.uploads()[0].link
    assert row_of(tmp_path, image) == ("uploading", None, None)  # the journal never heard of either
    image.unlink()  # before watchd runs again
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "sidecar", [{}, {"format": "txt", "name": "{name}.txt"}, {"format": "bbcode", "name": "{stem}.bb"}]
)
def test_a_sidecar_rewritten_right_before_a_kill_goes_with_its_deleted_original(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, sidecar: dict[str, str]
) -> None:
    config, folder = watched(tmp_path, emulator, sidecar)
    image = folder / "a.png"
    image.write_bytes(png(8, 8))
    uploaded_without_its_sidecar(config, monkeypatch)
    assert list(folder.iterdir()) == [image]
    assert run_cli("sync", "-c", str(config), env=die_before(tmp_path, "record_done")).returncode == 137
    [written] = [p for p in folder.iterdir() if p != image]
    assert emulator.uploads()[0].link in written.read_text()
    assert row_of(tmp_path, image) == ("uploaded", emulator.uploads()[0].link, None)
    image.unlink()
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert list(folder.iterdir()) == []


def test_a_sidecar_named_by_an_upload_replaced_after_a_kill_is_removed(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, folder = watched(tmp_path, emulator, {"name": "{stem}-{id}.link.json"})
    image = folder / "a.png"
    image.write_bytes(png(8, 8))
    uploaded_without_its_sidecar(config, monkeypatch)
    assert run_cli("sync", "-c", str(config), env=die_before(tmp_path, "record_done")).returncode == 137
    first = emulator.uploads()[0]
    assert (folder / f"a-{first.remote_id}.link.json").exists()
    image.write_bytes(png(9, 9))  # new content: uploaded again, under a new id
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    second = emulator.uploads()[1]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["a.png", f"a-{second.remote_id}.link.json"])


@pytest.mark.parametrize(
    "content",
    [
        '{"link": "https://example.org/mine.png", "id": "mine"}\n',  # another upload's record
        "my own notes about a.png\n",
    ],
)
def test_a_file_watchd_did_not_write_under_the_sidecar_name_is_kept(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    config, folder = watched(tmp_path, emulator)
    image = folder / "a.png"
    image.write_bytes(png(8, 8))
    uploaded_without_its_sidecar(config, monkeypatch)
    sidecar_of(image).write_text(content)  # not watchd's: the journal records no sidecar of a.png
    image.unlink()
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert sidecar_of(image).read_text() == content
    assert f"kept {sidecar_of(image)}" in result.stderr


def test_a_sidecar_written_right_before_a_kill_goes_when_its_original_is_renamed(
    tmp_path: Path, emulator: Emulator
) -> None:
    config, folder = watched(tmp_path, emulator)
    image = folder / "a.png"
    image.write_bytes(png(8, 8))
    assert run_cli("sync", "-c", str(config), env=die_before(tmp_path, "record_published")).returncode == 137
    assert sidecar_of(image).exists()
    image.rename(folder / "b.png")  # before watchd runs again
    result = run_cli("sync", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["b.png", "b.png.link.json"]
    assert json.loads(sidecar_of(folder / "b.png").read_text())["link"] == emulator.uploads()[-1].link
