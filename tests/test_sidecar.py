"""Templates, sidecar names and formats, and atomic writing."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from watchd import sidecar as sidecar_module
from watchd.sidecar import (
    TEMP_MARKER,
    SidecarRecord,
    remove_sidecar,
    render_sidecar,
    sidecar_path,
    write_atomic,
)
from watchd.templates import KNOWN_PLACEHOLDERS, file_context, render, render_url, validate

LINK = "https://i2.imageban.ru/out/2024/01/01/abc.png"
SHORT = "http://ibn.im/i/JTXBeN4"


def record(original: Path, **changes: object) -> SidecarRecord:
    values: dict[str, object] = {
        "original": original,
        "link": LINK,
        "short_link": SHORT,
        "remote_id": "JTXBeN4",
        "host": "me",
        "sha256": "ab" * 32,
        "size": 1234,
        "resolution": "640x480",
        "uploaded_at": "2024-01-01T12:00:00Z",
    }
    values.update(changes)
    return SidecarRecord(**values)  # type: ignore[arg-type]


# -- templates -------------------------------------------------------------------------------


def test_file_context(tmp_path: Path) -> None:
    context = file_context(tmp_path / "a" / "b" / "cat.tar.png", tmp_path)
    assert context == {
        "name": "cat.tar.png",
        "stem": "cat.tar",
        "ext": "png",
        "folder": "b",
        "relpath": "a/b/cat.tar.png",
    }
    assert file_context(tmp_path / "README", tmp_path)["ext"] == ""
    with pytest.raises(ValueError):
        file_context(Path("/elsewhere/x.png"), tmp_path)


def test_render_url_keeps_a_files_name_out_of_url_syntax(tmp_path: Path) -> None:
    context = file_context(tmp_path / "new & old" / "котик #1 50%20off?.png", tmp_path)
    context.update(link="https://i.example/a%20b.png?x=1", id="AbC1")
    assert render_url("https://x/{relpath}", context) == (
        "https://x/new%20%26%20old/%D0%BA%D0%BE%D1%82%D0%B8%D0%BA%20%231%2050%2520off%3F.png"
    )
    assert render_url("https://x/{folder}/{stem}.{ext}?id={id}", context).startswith(
        "https://x/new%20%26%20old/"
    )
    assert render_url("{link}", context) == context["link"]  # a URL already


def test_render_placeholders_and_literal_braces() -> None:
    context = {"stem": "cat", "name": "cat.png", "short_link": SHORT, "folder": "{pets}"}
    assert render("{stem} in {{braces}} from {folder}", context) == "cat in {braces} from {pets}"
    assert render("{short_link}", context) == SHORT
    assert validate("{name}.{ext} {relpath} {link} {id}") == ["name", "ext", "relpath", "link", "id"]
    assert {"name", "stem", "ext", "folder", "relpath", "link", "short_link", "id"} == KNOWN_PLACEHOLDERS


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{author}", "unknown placeholder {author}"),
        ("{}", "unknown placeholder {}"),
        ("{name.__class__}", "unknown placeholder {name.__class__}"),
        ("{name!r}", "placeholder {name} takes no conversion or format spec"),
        ("{name:>20}", "placeholder {name} takes no conversion or format spec"),
        ("{name", "bad template"),
        ("name}", "bad template"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render(template, {"name": "x"})


def test_render_needs_a_value_for_each_placeholder() -> None:
    with pytest.raises(ValueError, match=re.escape("placeholder {link} has no value")):
        render("{link}", {"name": "x"})


# -- sidecar names ---------------------------------------------------------------------------


def test_sidecar_path_is_next_to_the_original(tmp_path: Path) -> None:
    original = tmp_path / "cat.png"
    context = file_context(original, tmp_path)
    assert sidecar_path(original, "{name}.link.json", context) == tmp_path / "cat.png.link.json"
    assert sidecar_path(original, "{stem}.md", context) == tmp_path / "cat.md"


@pytest.mark.parametrize("template", ["{relpath}.json", "../{name}", "{stem}.png", "", ".."])
def test_sidecar_name_cannot_leave_the_directory_or_replace_the_original(
    tmp_path: Path, template: str
) -> None:
    original = tmp_path / "sub" / "cat.png"
    with pytest.raises(ValueError):
        sidecar_path(original, template, file_context(original, tmp_path))


# -- sidecar formats -------------------------------------------------------------------------


def test_json_format(tmp_path: Path) -> None:
    data = json.loads(render_sidecar("json", record(tmp_path / "кот.png")))
    assert data == {
        "name": "кот.png",
        "link": LINK,
        "short_link": SHORT,
        "id": "JTXBeN4",
        "host": "me",
        "sha256": "ab" * 32,
        "size": 1234,
        "resolution": "640x480",
        "uploaded_at": "2024-01-01T12:00:00Z",
    }
    pushed = render_sidecar(
        "json", record(tmp_path / "кот.png", baidu_id="b1", pushed_at="2024-01-01T12:01:00Z")
    )
    assert "кот.png" in pushed and pushed.endswith("}\n") and pushed.startswith("{\n  ")
    assert json.loads(pushed)["baidu"] == {"id": "b1", "pushed_at": "2024-01-01T12:01:00Z"}


def test_snippet_formats(tmp_path: Path) -> None:
    cat = record(tmp_path / "cat.png")
    assert render_sidecar("txt", cat) == LINK + "\n"
    assert render_sidecar("md", cat) == f"![cat]({LINK})\n"
    assert render_sidecar("bbcode", cat) == f"[url={SHORT}][img]{LINK}[/img][/url]\n"
    assert render_sidecar("html", cat) == f'<a href="{SHORT}"><img src="{LINK}" alt="cat"></a>\n'


def test_snippets_escape_names_and_urls(tmp_path: Path) -> None:
    tricky = record(
        tmp_path / 'a [b] *c* "d" <e> & f.png',
        link="https://x.test/a b(1)].png?q=1&r=2",
        short_link='https://x.test/s"<x>',
    )
    md = render_sidecar("md", tricky)
    assert (
        md == r"![a \[b\] \*c\* " + '"d" ' + r"\<e\> \& f](https://x.test/a%20b%281%29%5D.png?q=1&r=2)" + "\n"
    )
    html = render_sidecar("html", tricky)
    assert html == (
        '<a href="https://x.test/s%22%3Cx%3E"><img src="https://x.test/a%20b%281%29%5D.png?q=1&amp;r=2" '
        'alt="a [b] *c* &quot;d&quot; &lt;e&gt; &amp; f"></a>\n'
    )
    bbcode = render_sidecar("bbcode", tricky)
    assert (
        bbcode
        == "[url=https://x.test/s%22%3Cx%3E][img]https://x.test/a%20b%281%29%5D.png?q=1&r=2[/img][/url]\n"
    )


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sidecar format 'pdf'"):
        render_sidecar("pdf", record(tmp_path / "cat.png"))


# -- atomic writing --------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if TEMP_MARKER in name]


def test_write_atomic_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "cat.png.link.json"
    write_atomic(target, "first ✓\n")
    assert target.read_text(encoding="utf-8") == "first ✓\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("stem", ["猫" * 81, "c" * 240, "😀" * 61], ids=["cjk", "ascii", "emoji"])
def test_write_atomic_takes_names_up_to_name_max_bytes(tmp_path: Path, stem: str) -> None:
    """The temp file's name is longer than the sidecar's: cut (on a character boundary) to fit."""
    for name in (f"{stem}.link.json", f"{stem[:3]}.link.json"):
        target = tmp_path / name
        write_atomic(target, "text\n")
        assert target.read_text(encoding="utf-8") == "text\n"
    assert leftovers(tmp_path) == []


def test_failed_rename_keeps_the_old_sidecar_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cat.png.link.json"
    write_atomic(target, "old\n")
    seen: list[str] = []

    def failing_replace(src: str, dst: object, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        seen.append(src)
        assert (
            os.stat(src, dir_fd=src_dir_fd).st_size == 4
        )  # the temp file was fully written before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sidecar_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new\n")

    assert seen and seen[0].startswith(f".{target.name}{TEMP_MARKER}")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert leftovers(tmp_path) == []


def test_failed_fsync_removes_the_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sidecar_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(tmp_path / "x.link.json", "data")
    assert os.listdir(tmp_path) == []


def test_write_into_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "x.link.json", "data")


def test_remove_sidecar(tmp_path: Path) -> None:
    target = tmp_path / "cat.png.link.json"
    target.write_text("x")
    assert remove_sidecar(target) is True
    assert not target.exists()
    assert remove_sidecar(target) is False
