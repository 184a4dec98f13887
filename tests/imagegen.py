"""Tiny, structurally valid and complete images for tests, built byte by byte.

Each function returns a whole file of the given pixel size; the same arguments give the same
bytes, and different sizes give different bytes. `extra_bytes` pads the file *inside* its
format (a PNG tEXt chunk, JPEG COM segments, a GIF comment extension), so a padded file is
still complete and cutting its tail off makes it truncated.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["gif", "jpeg", "png"]


def png(width: int, height: int, extra_bytes: int = 0) -> bytes:
    """An 8-bit greyscale PNG: signature, IHDR, [tEXt padding], IDAT, IEND, real CRCs."""
    rows = b"".join(b"\x00" + bytes((x + y) % 256 for x in range(width)) for y in range(height))
    padding = _png_chunk(b"tEXt", b"Comment\x00" + b"x" * extra_bytes) if extra_bytes else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + padding
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def jpeg(width: int, height: int, extra_bytes: int = 0) -> bytes:
    """A baseline greyscale JPEG a decoder can read: SOI, [COM padding], DQT, SOF0, DHT, SOS, EOI.

    Every 8x8 block is flat grey: its DC difference and its end-of-block each take the one
    1-bit Huffman code "0", so the scan is all zero bits (no 0xFF stuffing needed).
    """
    comments = b"".join(
        _jpeg_segment(0xFE, b"x" * min(65533, extra_bytes - done)) for done in range(0, extra_bytes, 65533)
    )
    bits = 2 * -(-width // 8) * -(-height // 8)
    scan = bytes(bits // 8) + (bytes([(1 << (-bits % 8)) - 1]) if bits % 8 else b"")  # pad with 1s
    one_symbol_table = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    return (
        b"\xff\xd8"
        + comments
        + _jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
        + _jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + _jpeg_segment(0xC4, b"\x00" + one_symbol_table + b"\x10" + one_symbol_table)
        + _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + scan
        + b"\xff\xd9"
    )


def _jpeg_segment(marker: int, data: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data


def gif(width: int, height: int, extra_bytes: int = 0, frames: int = 1) -> bytes:
    """A GIF89a with a 2-colour palette and `frames` all-black frames, ending with the 0x3B trailer.

    The LZW stream sends a clear code before every two pixels, so the code width stays 3 bits.
    The comment that pads it is all ";" (0x3B), so a cut inside it ends like a whole GIF does.
    Frames after the first are an animation: a looping application extension, then per frame
    a graphic control extension and an image with its own colour table.
    """
    pixels = width * height
    codes: list[int] = []
    for start in range(0, pixels, 2):
        codes += [4] + [0] * min(2, pixels - start)  # 4 = clear code, 0 = colour 0
    codes.append(5)  # end of information
    packed = bytearray()
    for i in range(0, len(codes), 8):  # eight 3-bit codes fill three bytes, least significant first
        group = sum(code << (3 * j) for j, code in enumerate(codes[i : i + 8]))
        packed += group.to_bytes(3, "little")
    image_data = b"\x02" + _gif_blocks(bytes(packed[: -(-3 * len(codes) // 8)]))
    comment = b"\x21\xfe" + _gif_blocks(b";" * extra_bytes) if extra_bytes else b""
    animation = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" if frames > 1 else b""  # loop forever
    more_frames = b"".join(
        b"\x21\xf9\x04\x04\x0a\x00\x00\x00"  # graphic control: 0.1 s, keep the frame
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, width, height, 0x80)  # with a local colour table of 2
        + b"\x00\x00\x00\x3b\x3b\x3b"  # black and a grey of 0x3B: a cut in it ends on 0x3B too
        + image_data
        for _ in range(frames - 1)
    )
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + animation
        + comment
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + image_data
        + more_frames
        + b"\x3b"
    )


def _gif_blocks(data: bytes) -> bytes:
    """`data` as GIF sub-blocks of at most 255 bytes, closed by the empty block."""
    return (
        b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
        + b"\x00"
    )
