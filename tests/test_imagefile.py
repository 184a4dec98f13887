"""`inspect_image` and `sha256_file` on real files: kinds, sizes, refusals, truncation."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import pytest

from tests import imagegen
from watchd.errors import PermanentFileError
from watchd.imagefile import HASH_CHUNK, READ_WHOLE_BELOW, ImageInfo, inspect_image, load_image, sha256_file
from watchd.pipeline import candidate_name

MB = 1024 * 1024


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("maker", "kind", "mime"),
    [
        (imagegen.png, "png", "image/png"),
        (imagegen.jpeg, "jpeg", "image/jpeg"),
        (imagegen.gif, "gif", "image/gif"),
    ],
)
def test_complete_images(tmp_path: Path, maker, kind: str, mime: str) -> None:
    data = maker(37, 21)
    info = inspect_image(write(tmp_path, f"x.{kind}", data))
    assert info == ImageInfo(kind=kind, mime=mime, size=len(data), width=37, height=21, complete=True)


def test_jpeg_frame_header_found_after_large_segments(tmp_path: Path) -> None:
    info = inspect_image(write(tmp_path, "big.jpg", imagegen.jpeg(640, 480, extra_bytes=200_000)))
    assert (info.width, info.height, info.complete) == (640, 480, True)


@pytest.mark.parametrize("maker", [imagegen.png, imagegen.jpeg, imagegen.gif])
@pytest.mark.parametrize("cut", [1, 5])
def test_truncated_tail_is_incomplete(tmp_path: Path, maker, cut: int) -> None:
    data = maker(16, 16, extra_bytes=100)
    info = inspect_image(write(tmp_path, "cut", data[:-cut]))
    assert info.complete is False
    assert (info.width, info.height) == (16, 16)


def test_a_jpeg_with_a_trailer_after_its_end_marker_is_complete(tmp_path: Path) -> None:
    data = imagegen.jpeg(16, 16, extra_bytes=100) + b"MotionPhoto_Data" + bytes(300_000)
    assert inspect_image(write(tmp_path, "motion.jpg", data)).complete


@pytest.mark.parametrize("maker", [imagegen.png, imagegen.gif])
@pytest.mark.parametrize("trailer", [b"trailing-metadata", b"\x00" * 3, b"x" * 300_000])
def test_bytes_after_the_end_of_a_png_or_gif_are_a_trailer(tmp_path: Path, maker, trailer: bytes) -> None:
    info = inspect_image(write(tmp_path, "trailer", maker(16, 16, extra_bytes=100) + trailer))
    assert (info.width, info.height, info.complete) == (16, 16, True)


def test_png_trailer_is_found_reading_chunk_headers_only(tmp_path: Path, read_sizes: list[int]) -> None:
    path = write(tmp_path, "big.png", imagegen.png(8, 8, extra_bytes=5 * MB) + b"trailing-metadata")
    read_sizes.clear()
    assert inspect_image(path).complete
    assert sum(read_sizes) < 200


@pytest.mark.parametrize("maker", [imagegen.png, partial(imagegen.gif, frames=3)], ids=["png", "gif"])
def test_every_cut_before_the_end_is_incomplete(tmp_path: Path, maker) -> None:
    data = maker(4, 4, extra_bytes=300)
    cuts = [cut for cut in range(1, len(data)) if inspect_image(write(tmp_path, "cut", data[:cut])).complete]
    assert cuts == []
    assert inspect_image(write(tmp_path, "whole", data)).complete


def test_gif_cut_right_after_a_0x3b_byte_in_its_data_is_incomplete(tmp_path: Path) -> None:
    data = imagegen.gif(16, 16, extra_bytes=1000, frames=2)  # its comment is all 0x3B
    cut = data.index(b";" * 200) + 100
    assert data[cut - 1] == 0x3B
    assert inspect_image(write(tmp_path, "stalled.gif", data[:cut])).complete is False


def test_gif_walk_crosses_read_pieces(tmp_path: Path) -> None:
    data = imagegen.gif(64, 64, extra_bytes=3 * HASH_CHUNK, frames=4)
    assert inspect_image(write(tmp_path, "long.gif", data)).complete
    assert inspect_image(write(tmp_path, "cut.gif", data[: HASH_CHUNK + 17])).complete is False


def test_gif_ends_at_a_byte_no_block_starts_with_as_in_browsers(tmp_path: Path) -> None:
    data = imagegen.gif(16, 16)
    assert inspect_image(write(tmp_path, "padded.gif", data[:-1] + b"\x00\x00")).complete


def test_png_with_a_damaged_chunk_before_iend_is_refused(tmp_path: Path) -> None:
    data = bytearray(imagegen.png(4, 4, extra_bytes=10) + b"trailer")
    data[37:41] = b"\x01\x02\x03\x04"  # the tEXt chunk's type
    with pytest.raises(
        PermanentFileError, match=r"d\.png is a damaged PNG \(no valid chunk at byte 33\): export"
    ):
        inspect_image(write(tmp_path, "d.png", bytes(data)))


@pytest.mark.parametrize("name", ["photo.jfif", "PHOTO.JFIF", "a.jpe", "b.jpeg"])
def test_jpeg_file_names_windows_and_browsers_write_are_candidates(tmp_path: Path, name: str) -> None:
    assert candidate_name(name)
    assert inspect_image(write(tmp_path, name, imagegen.jpeg(8, 8))).kind == "jpeg"


@pytest.mark.parametrize("maker", [imagegen.png, imagegen.jpeg, imagegen.gif])
@pytest.mark.parametrize("keep", [1, 3, 8, 15])
def test_file_cut_inside_the_header_is_incomplete_not_refused(tmp_path: Path, maker, keep: int) -> None:
    info = inspect_image(write(tmp_path, "early", maker(16, 16, extra_bytes=300)[:keep]))
    assert info.complete is False
    dimensions_known = maker is imagegen.gif and keep >= 10  # GIF's logical screen is in its first 10 bytes
    assert (info.width, info.height) == ((16, 16) if dimensions_known else (0, 0))


def test_jpeg_cut_inside_padding_before_frame_header(tmp_path: Path) -> None:
    data = imagegen.jpeg(16, 16, extra_bytes=5000)
    info = inspect_image(write(tmp_path, "early.jpg", data[:2000]))
    assert (info.kind, info.width, info.complete) == ("jpeg", 0, False)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(PermanentFileError, match=r"empty \(0 bytes\): copy the file again"):
        inspect_image(write(tmp_path, "empty.png", b""))


def test_too_large_says_size_in_mb(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.png", imagegen.png(4, 4, extra_bytes=int(12.4 * MB)))
    with pytest.raises(
        PermanentFileError, match=r"huge\.png is 12\.4 MB, larger than the 10 MB .*recompress"
    ):
        inspect_image(path)


def test_just_over_the_limit_says_bytes_not_a_rounded_size_that_looks_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.png", imagegen.png(4, 4, extra_bytes=10 * MB))
    size = path.stat().st_size
    with pytest.raises(PermanentFileError) as caught:
        inspect_image(path)
    assert f"huge.png is {size:,} bytes, larger than the 10 MB (10,485,760 bytes)" in caught.value.message


def test_max_bytes_is_inclusive(tmp_path: Path) -> None:
    data = imagegen.png(4, 4)
    assert inspect_image(write(tmp_path, "a.png", data), max_bytes=len(data)).complete
    with pytest.raises(PermanentFileError, match="larger than"):
        inspect_image(tmp_path / "a.png", max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "a WebP image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "a HEIC image"),
        (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00", "an AVIF image"),
        (b"BM\x36\x00\x00\x00\x00\x00", "a BMP image"),
        (b"II*\x00\x08\x00\x00\x00", "a TIFF image"),
        (b"MM\x00*\x00\x00\x00\x08", "a TIFF image"),
        (b"%PDF-1.7\n", "a PDF document"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG drawing"),
        ("hello, это текст\n".encode(), "text"),
        (b"\x00\x01\x02\x03\xfe\xfd", "an unknown binary format"),
    ],
)
def test_not_an_image_says_what_it_looks_like(tmp_path: Path, data: bytes, looks_like: str) -> None:
    with pytest.raises(PermanentFileError) as caught:
        inspect_image(write(tmp_path, "photo.jpg", data))
    assert caught.value.message == (
        f"photo.jpg looks like {looks_like}, not a JPEG, PNG or GIF: convert it to one of those to upload it"
    )


def test_non_image_refused_before_size_check(tmp_path: Path) -> None:
    path = write(tmp_path, "big.txt", b"a" * (11 * MB))
    with pytest.raises(PermanentFileError, match="looks like text"):
        inspect_image(path)


def test_damaged_headers(tmp_path: Path) -> None:
    png = bytearray(imagegen.png(4, 4))
    png[12:16] = b"IHDX"
    with pytest.raises(PermanentFileError, match="damaged PNG"):
        inspect_image(write(tmp_path, "d.png", bytes(png)))
    jpeg = b"\xff\xd8" + b"\xff\xda\x00\x08" + bytes(6) + b"\xff\xd9"  # scan before any frame header
    with pytest.raises(PermanentFileError, match="damaged JPEG"):
        inspect_image(write(tmp_path, "d.jpg", jpeg))
    with pytest.raises(PermanentFileError, match="damaged JPEG"):
        inspect_image(write(tmp_path, "e.jpg", b"\xff\xd8\xff\xe0\x00\x10" + bytes(14) + b"garbage\xff\xd9"))


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 0 does not stop root (CI runs as root), so the refusal is simulated at open().
    path = write(tmp_path, "secret.png", imagegen.png(4, 4))

    real_open = os.open

    def refuse(where: str, *args, **kwargs):
        if where.endswith("secret.png"):
            raise PermissionError(13, "Permission denied", where)
        return real_open(where, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermanentFileError, match=r"cannot read .*secret\.png: Permission denied; check"):
        inspect_image(path)
    with pytest.raises(PermanentFileError, match="Permission denied"):
        sha256_file(path)


def test_a_directory_fifo_or_link_in_an_images_place_is_no_image_there(tmp_path: Path) -> None:
    """Never read through (a link may lead out of the folder, a FIFO would block): gone."""
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    outside = write(tmp_path, "outside", imagegen.png(4, 4))
    (tmp_path / "link.png").symlink_to(outside)
    (tmp_path / "album").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "album")  # a directory replaced by a link
    write(tmp_path / "album", "in.png", imagegen.png(4, 4))
    for name in ("dir.png", "fifo.png", "link.png", "linked/in.png"):
        with pytest.raises(FileNotFoundError):
            load_image(tmp_path / name)
    assert load_image(tmp_path / "album" / "in.png").info.width == 4


def test_missing_file_is_gone_not_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        inspect_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "nope.png")


def test_inspect_reads_only_head_and_tail(tmp_path: Path, read_sizes: list[int]) -> None:
    path = write(tmp_path, "big.png", imagegen.png(8, 8, extra_bytes=5 * MB))
    read_sizes.clear()
    assert inspect_image(path).complete
    assert sum(read_sizes) < 200


def test_sha256_streams_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(2 * HASH_CHUNK + 12345)
    assert sha256_file(write(tmp_path, "blob", data)) == hashlib.sha256(data).hexdigest()
    assert HASH_CHUNK == MB


@pytest.mark.parametrize("maker", [imagegen.png, imagegen.jpeg, imagegen.gif])
@pytest.mark.parametrize("cut", [0, 3])
def test_load_image_checks_hashes_and_holds_one_read_of_a_small_file(
    tmp_path: Path, maker, cut: int, read_sizes: list[int]
) -> None:
    data = maker(30, 20, extra_bytes=40_000)
    data = data[: len(data) - cut]
    path = write(tmp_path, "small", data)
    read_sizes.clear()
    loaded = load_image(path)
    assert len(read_sizes) == 1  # one read of the file, nothing else
    assert loaded.content == data
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.info == inspect_image(path)
    assert loaded.info.complete is (cut == 0)


def test_load_image_reads_a_file_that_grew_since_its_size_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = imagegen.png(30, 20, extra_bytes=40_000)
    path = write(tmp_path, "growing.png", data)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:  # the size as it was a moment before
        info = real_fstat(fd)
        return os.stat_result((*info[:6], info.st_size - 1000, *info[7:]))

    monkeypatch.setattr(os, "fstat", stale_fstat)
    loaded = load_image(path)
    assert loaded.content == data
    assert loaded.info.complete


def test_load_image_streams_a_large_file(tmp_path: Path) -> None:
    data = imagegen.png(8, 8, extra_bytes=READ_WHOLE_BELOW + 10)
    path = write(tmp_path, "large.png", data)
    loaded = load_image(path)
    assert loaded.content is None
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.info == inspect_image(path)


def test_load_image_refuses_as_inspect_does(tmp_path: Path) -> None:
    with pytest.raises(PermanentFileError, match="looks like a PDF document"):
        load_image(write(tmp_path, "doc.png", b"%PDF-1.7 " + bytes(100)))
    with pytest.raises(PermanentFileError, match="empty"):
        load_image(write(tmp_path, "empty.png", b""))
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "gone.png")
