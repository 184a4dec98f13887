"""What a local file is, from its header and its end: kind, size, dimensions, completeness.

ImageBan accepts JPEG, PNG and GIF of at most 10 MB, so every file is checked here before
any upload; that must stay cheap for a large file and for one still being written. It reads
the header (for JPEG: the segment headers up to the frame header) and the last bytes; only
when those do not end the image (a trailer, or a file cut short), also the PNG chunk
headers (seeking over their data) or the JPEG bytes after the frame header (backwards, in
1 MiB pieces). A GIF's end is found only by walking its data sub-blocks (at most 255 bytes
each; its trailer byte 0x3B also occurs in image data), which reads the whole file in
1 MiB pieces: about 2 ms for 5 MB, and a GIF is at most 10 MB.

Every refusal is a `PermanentFileError` whose message says what is wrong and what to do
about it; a file that merely ends too early is not refused but reported with
`complete=False`, because only the caller knows whether it is still being written.

A file that does not exist (any more) raises `FileNotFoundError` unchanged: that is "gone",
not "unreadable", and the callers treat it so.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from watchd.errors import PermanentFileError
from watchd.intree import open_regular

# What ImageBan takes; .jfif is what Windows and browsers name some JPEGs.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif"})
UNSUPPORTED_SUFFIXES = frozenset(  # images it does not: refused with a reason, not ignored
    {".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".svg"}
)

MAX_BYTES = 10 * 1024 * 1024
READ_WHOLE_BELOW = 1024 * 1024
HASH_CHUNK = 1024 * 1024
_HEAD = 64

_MIME = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# JPEG start-of-frame markers (they carry the dimensions); C4, C8 and CC are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_SOS = 0xDA

# What a non-image looks like, for the refusal message: (offset, magic bytes, description).
_LOOKS_LIKE: tuple[tuple[int, bytes, str], ...] = (
    (8, b"WEBP", "a WebP image"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftypheix", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
    (4, b"ftypavif", "an AVIF image"),
    (4, b"ftyp", "a video or other ISO media file"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"BM", "a BMP image"),
    (0, b"\x00\x00\x01\x00", "an ICO icon"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"\xff\x0a", "a JPEG XL image"),
    (4, b"JXL ", "a JPEG XL image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or an office document)"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"<svg", "an SVG drawing"),
)


@dataclass(frozen=True)
class ImageInfo:
    """An accepted image file.

    `width`/`height` are 0 when the file ends before its header does (`complete` is then
    False). `complete` is False when the file is structurally truncated: PNG whose chunks
    end before the IEND chunk, GIF whose blocks end before the 0x3B trailer, JPEG with no
    end-of-image marker (FFD9) after its frame header. Bytes after the end (motion photos
    append a video, cameras and other tools their own data or padding) are a trailer, not
    a reason to refuse.
    """

    kind: str
    mime: str
    size: int
    width: int
    height: int
    complete: bool


def inspect_image(path: Path, max_bytes: int = MAX_BYTES) -> ImageInfo:
    """Given a path, return what kind of image it is, its size, dimensions and completeness.

    Raise `PermanentFileError` (message says why and what to do) if the file is empty,
    larger than `max_bytes`, not a JPEG/PNG/GIF, has a damaged header, or cannot be read.
    Raise `FileNotFoundError` if it does not exist.
    """
    with _opened(path) as f:
        return _inspect(f, os.fstat(f.fileno()).st_size, path, max_bytes)


@dataclass(frozen=True)
class LoadedImage:
    """A file about to be uploaded: what it is, the SHA-256 of its bytes, and (when it is
    small enough to hold) those very bytes, so what is checked, hashed and sent is the same."""

    info: ImageInfo
    sha256: str
    content: bytes | None  # None: larger than READ_WHOLE_BELOW, to be streamed from disk


def load_image(path: Path, max_bytes: int = MAX_BYTES) -> LoadedImage:
    """`inspect_image` and `sha256_file` in one read for a file of at most READ_WHOLE_BELOW
    bytes (most web images), which spares two opens and a second pass; larger files are
    inspected and hashed from disk as before, never read whole. Raises as `inspect_image`."""
    with _opened(path) as f:
        size = os.fstat(f.fileno()).st_size
        content = None
        if size <= READ_WHOLE_BELOW:
            # Asking for exactly size + 1 bytes spares allocating (and shrinking) a 1 MiB
            # buffer per image; a file that grew since the fstat is read on to its end.
            content = f.read(size + 1)
            if len(content) > size:
                content += f.read(READ_WHOLE_BELOW + 1 - len(content))
    if content is None or len(content) > READ_WHOLE_BELOW:  # large, or grew meanwhile
        return LoadedImage(inspect_image(path, max_bytes), sha256_file(path), None)
    info = _inspect(io.BytesIO(content), len(content), path, max_bytes)
    return LoadedImage(info, hashlib.sha256(content).hexdigest(), content)


def _inspect(f: BinaryIO, size: int, path: Path, max_bytes: int) -> ImageInfo:
    if size == 0:
        raise PermanentFileError(f"{path.name} is empty (0 bytes): copy the file again")
    head = f.read(_HEAD)
    kind = _kind_of(head)
    if kind is None:
        raise PermanentFileError(
            f"{path.name} looks like {_looks_like(head)}, not a JPEG, PNG or GIF: "
            "convert it to one of those to upload it"
        )
    if size > max_bytes:
        shown = f"{size / 1024 / 1024:.1f} MB"
        if shown == f"{max_bytes / 1024 / 1024:.1f} MB":  # just over: "10.0 MB, larger than 10 MB"
            shown = f"{size:,} bytes"
        raise PermanentFileError(
            f"{path.name} is {shown}, larger than the {max_bytes / 1024 / 1024:g} MB "
            f"({max_bytes:,} bytes) ImageBan accepts: resize or recompress it"
        )
    dimensions = _jpeg_dimensions(f, path) if kind == "jpeg" else _header_dimensions(kind, head, path)
    complete = dimensions is not None and _complete(kind, f, path)
    width, height = dimensions or (0, 0)
    return ImageInfo(kind, _MIME[kind], size, width, height, complete)


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of the file's content, read in 1 MiB chunks (never whole).

    Raise `PermanentFileError` if it cannot be read, `FileNotFoundError` if it is gone.
    """
    digest = hashlib.sha256()
    with _opened(path) as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """Open for reading; the one place read errors become `PermanentFileError`."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:  # not through a symlink, nor a FIFO
            yield f
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise PermanentFileError(
            f"cannot read {path}: {reason}; check its permissions (the service user must be able to read it)"
        ) from exc


def _kind_of(head: bytes) -> str | None:
    # A file still being written may hold fewer bytes than a full signature: a prefix counts.
    if head.startswith(b"\xff\xd8\xff") or b"\xff\xd8\xff".startswith(head):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE) or _PNG_SIGNATURE.startswith(head):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a") or any(sig.startswith(head) for sig in (b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def _looks_like(head: bytes) -> str:
    for offset, magic, description in _LOOKS_LIKE:
        if head[offset : offset + len(magic)] == magic:
            return description
    if head.lstrip().lower().startswith(b"<?xml") and b"<svg" in head.lower():
        return "an SVG drawing"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "an unknown binary format"
    return "text" if b"\x00" not in head else "an unknown binary format"


def _header_dimensions(kind: str, head: bytes, path: Path) -> tuple[int, int] | None:
    """PNG (IHDR right after the signature) and GIF (logical screen) dimensions, or None if cut short."""
    if kind == "gif":
        return struct.unpack("<HH", head[6:10]) if len(head) >= 10 else None
    if len(head) < 24:
        return None
    if head[12:16] != b"IHDR":
        raise PermanentFileError(f"{path.name} is a damaged PNG (no IHDR header chunk): export it again")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _jpeg_dimensions(f: BinaryIO, path: Path) -> tuple[int, int] | None:
    """Walk the JPEG segment headers (seeking over their bodies) to the frame header.

    Return None if the file ends first (still being written, or cut short).
    """
    damaged = PermanentFileError(f"{path.name} is a damaged JPEG (no valid frame header): export it again")
    f.seek(2)
    while True:
        prefix = f.read(1)
        if not prefix:
            return None
        if prefix != b"\xff":
            raise damaged
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE:
            continue
        if code == _JPEG_SOS:
            raise damaged
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            raise damaged
        if code in _JPEG_SOF:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        f.seek(length - 2, os.SEEK_CUR)


def _complete(kind: str, f: BinaryIO, path: Path) -> bool:
    """Whether the image ends within the file; `f` stands after the header (JPEG: the frame header)."""
    if kind == "gif":
        return _gif_complete(f)
    frame_end = f.tell()
    end = f.seek(0, os.SEEK_END)  # the current end: the file may still be growing
    f.seek(max(0, end - len(_PNG_END)))
    tail = f.read(len(_PNG_END))
    if kind == "png":
        return tail.endswith(_PNG_END) or _png_has_end(f, path)
    return tail.endswith(b"\xff\xd9") or _has_jpeg_end_after(f, frame_end, end)


def _has_jpeg_end_after(f: BinaryIO, start: int, end: int) -> bool:
    """Whether an end-of-image marker lies between `start` and `end` (a JPEG with a trailer).

    Read backwards in chunks from the end, overlapping by one byte so a marker split across
    two chunks is found; only reached for JPEGs that do not end with the marker.
    """
    position = end
    while position > start:
        low = max(start, position - HASH_CHUNK)
        f.seek(low)
        if b"\xff\xd9" in f.read(position - low + 1):
            return True
        position = low
    return False


def _png_has_end(f: BinaryIO, path: Path) -> bool:
    """Whether the chunks, walked from the signature, reach a whole IEND chunk (a PNG with a trailer).

    Reads 12 bytes per chunk and seeks over its data; only reached for PNGs that do not end
    with IEND. A chunk type that is not four ASCII letters cannot be in a file still being
    written, so it is refused as damage rather than waited for.
    """
    position = len(_PNG_SIGNATURE)
    while True:
        f.seek(position)
        header = f.read(12)  # length, type, and for IEND (no data) its CRC
        if len(header) < 8:
            return False
        length, chunk_type = struct.unpack(">I4s", header[:8])
        if chunk_type == b"IEND":
            return len(header) == 12
        if not chunk_type.isalpha():
            raise PermanentFileError(
                f"{path.name} is a damaged PNG (no valid chunk at byte {position}): export it again"
            )
        position += 12 + length


def _gif_complete(f: BinaryIO) -> bool:
    """Whether the GIF's blocks, walked from its logical screen, reach the 0x3B trailer.

    After the global colour table come extensions (0x21) and images (0x2C: descriptor,
    local colour table, LZW code size), each followed by data sub-blocks up to an empty one.
    A byte that starts none of these (some encoders pad between blocks) ends the GIF as it
    does in browsers; a file still being written cannot hold one, so it is not waited for.
    """
    blocks = _ForwardReader(f)
    flags = blocks.byte(10)
    if flags is None:
        return False
    position = 13 + _colour_table_size(flags)
    while True:
        introducer = blocks.byte(position)
        if introducer == 0x21:
            position += 2  # introducer, label
        elif introducer == 0x2C:
            flags = blocks.byte(position + 9)
            if flags is None:
                return False
            position += 11 + _colour_table_size(flags)  # descriptor, local colour table, LZW code size
        else:
            return introducer is not None  # the trailer, or a byte no block starts with
        end_of_blocks = blocks.skip_sub_blocks(position)
        if end_of_blocks is None:
            return False
        position = end_of_blocks


def _colour_table_size(flags: int) -> int:
    """The bytes of the colour table a GIF screen or image descriptor's flags announce."""
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


class _ForwardReader:
    """A file read forwards in HASH_CHUNK pieces, for walks that step through all of it.

    Stepping over GIF sub-blocks with a seek and a read each through the file object takes
    about twice as long as indexing a piece held in memory (measured on a 5 MB GIF).
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._piece = b""
        self._start = 0  # the offset of _piece in the file

    def byte(self, position: int) -> int | None:
        """The byte at `position`, or None past the end of the file."""
        if not self._start <= position < self._start + len(self._piece) and not self._load(position):
            return None
        return self._piece[position - self._start]

    def skip_sub_blocks(self, position: int) -> int | None:
        """The offset after the data sub-blocks starting at `position` (each: its length, then
        that many bytes; the empty one ends them), or None if the file ends first."""
        index = position - self._start  # never negative: walks only go forwards
        while True:
            piece = self._piece
            size = len(piece)
            while index < size:
                length = piece[index]
                index += length + 1
                if length == 0:
                    return self._start + index
            if not self._load(self._start + index):
                return None
            index = 0

    def _load(self, position: int) -> bool:
        self._f.seek(position)
        self._piece, self._start = self._f.read(HASH_CHUNK), position
        return bool(self._piece)
