"""The ImageBan upload API v1 (`POST /v1`), as the seed documents it, and the images it serves.

Checks run in this order: auth (110, 100, 105), image data (102, 106, 107, 101, 103), the
injected transient failure (104), then the daily quota (108, 109, per key and Moscow day);
nothing is stored or counted unless all pass. Keys are compared exactly and never leave
this module: records carry a `key_hint`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import secrets
import string
import struct
import threading
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from urllib.parse import unquote, urlsplit

import httpx

from watchd.emulator.faults import Dice
from watchd.emulator.wire import Answer, Part

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MOSCOW = timezone(timedelta(hours=3), "MSK")  # no DST since 2014; avoids needing tzdata

MESSAGES = {
    "100": "Invalid client key",
    "101": "Image is larger",
    "102": "No image data",
    "103": "Invalid image type",
    "104": "Image failed to upload",
    "105": "Invalid secret key",
    "106": "Wrong URL",
    "107": "File reception error",
    "108": "Limit of uploaded images from your IP is exceeded for guest",
    "109": "Exceeded the daily limit of uploaded images for your account",
    "110": "No auth data",
}

# magic bytes -> (extension used in stored names, Content-Type)
_FORMATS = (
    (b"\xff\xd8\xff", "jpeg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
)
_ID_ALPHABET = string.ascii_letters + string.digits

Source = Literal["file", "base64", "url"]


@dataclass(frozen=True)
class UploadRecord:
    """One successful upload. `key_hint` is the key's first 2 characters and "…", never the key.

    `name` is the shown name (img_name); `filename` is the file part's name, or the URL's last
    path segment, or None for base64; `album` is None for guests (the service ignores it).
    """

    auth: Literal["guest", "account"]
    key_hint: str
    source: Source
    name: str
    album: str | None
    filename: str | None
    size: int
    sha256: str
    remote_id: str
    link: str
    short_link: str
    at: float


class _Refusal(Exception):
    """An upload refused with an ImageBan error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Caller:
    auth: Literal["guest", "account"]
    key: str


@dataclass(frozen=True)
class _Image:
    data: bytes
    source: Source
    filename: str | None
    ext: str


class ImageBan:
    """Uploads, quotas and the stored images; thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        client_ids: Iterable[str],
        secret_keys: Iterable[str],
        dice: Dice,
        clock: Callable[[], float],
        guest_quota: int,
        account_quota: int,
    ) -> None:
        self._base_url = base_url
        self._client_ids = frozenset(client_ids)
        self._secret_keys = frozenset(secret_keys)
        self._dice = dice
        self._clock = clock
        self._default_quota = {"guest": guest_quota, "account": account_quota}
        self._lock = threading.Lock()
        self._records: list[UploadRecord] = []
        self._files: dict[str, tuple[bytes, str]] = {}  # "YYYY/MM/DD/<md5>.<ext>" -> (bytes, type)
        self._pages: dict[str, tuple[str, str]] = {}  # remote id -> (link, img_name)
        self._used: dict[tuple[str, str], int] = {}  # (key, Moscow date) -> successful uploads

    def upload(self, authorization: str | None, form: dict[str, Part]) -> Answer:
        """Answer one `POST /v1` with the given Authorization header and form fields."""
        if "secret_key" in form:  # the pre-2023 way; the service no longer reads it
            return _error("110", "secret_key_field")
        caller = self._authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        try:
            image = _read_image(form)
            if self._dice.hit(self._dice.faults.transient_rate):
                raise _Refusal("104")
            data = self._store(caller, image, _shown_name(form, image), _album(form, caller))
        except _Refusal as refusal:
            return _error(refusal.code, caller.auth)
        payload = {"data": [data] if self._dice.faults.data_as_list else data, "success": True, "status": 200}
        return Answer(payload, "200", caller.auth)

    def _authenticate(self, authorization: str | None) -> _Caller | Answer:
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme == "TOKEN":
            return _Caller("guest", credential) if credential in self._client_ids else _error("100", "guest")
        if scheme == "Bearer":
            return (
                _Caller("account", credential)
                if credential in self._secret_keys
                else _error("105", "account")
            )
        return _error("110", "none")

    def _store(self, caller: _Caller, image: _Image, name: str, album: str | None) -> dict[str, object]:
        """Store the image and return the answer's `data`; raise _Refusal(108/109) over the quota.

        The quota is checked and used under one lock, so concurrent uploads never exceed it.
        """
        now = self._clock()
        day = datetime.fromtimestamp(now, MOSCOW)
        limit = self._dice.faults.imageban_quota
        if limit is None:
            limit = self._default_quota[caller.auth]
        with self._lock:
            used_key = (caller.key, day.date().isoformat())
            if self._used.get(used_key, 0) >= limit:
                raise _Refusal("108" if caller.auth == "guest" else "109")
            self._used[used_key] = self._used.get(used_key, 0) + 1
            remote_id = _new_id(self._pages)
            stored_name = f"{hashlib.md5(remote_id.encode() + image.data).hexdigest()}.{image.ext}"
            path = f"{day:%Y/%m/%d}/{stored_name}"
            link = f"{self._base_url}/out/{path}"
            short_link = f"{self._base_url}/i/{remote_id}"
            self._files[path] = (image.data, _content_type(image.ext))
            self._pages[remote_id] = (link, name)
            self._records.append(
                UploadRecord(
                    auth=caller.auth,
                    key_hint=caller.key[:2] + "…",
                    source=image.source,
                    name=name,
                    album=album,
                    filename=image.filename,
                    size=len(image.data),
                    sha256=hashlib.sha256(image.data).hexdigest(),
                    remote_id=remote_id,
                    link=link,
                    short_link=short_link,
                    at=now,
                )
            )
        data: dict[str, object] = {
            "id": remote_id,
            "date": f"{day:%Y.%m.%d}",
            "name": stored_name,
            "server": urlsplit(self._base_url).netloc,
            "views": "0",
            "description": "",
            "img_name": name,
            "favorite": False,
            "size": str(len(image.data)),
            "resolution": resolution(image.data),
            "link": link,
            "short_link": short_link,
        }
        if caller.auth == "guest":
            data["delete_hash"] = secrets.token_hex(16)
        return data

    def file(self, path: str) -> tuple[bytes, str] | None:
        """The bytes and Content-Type stored under "YYYY/MM/DD/<name>", or None."""
        with self._lock:
            return self._files.get(path)

    def page(self, remote_id: str) -> str | None:
        """The viewer page of an upload (what `short_link` shows), or None."""
        with self._lock:
            found = self._pages.get(remote_id)
        if found is None:
            return None
        link, name = (html.escape(part) for part in found)
        return f'<!doctype html><meta charset="utf-8"><title>{name}</title><img src="{link}" alt="{name}">\n'

    def uploads(self) -> list[UploadRecord]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._files.clear()
            self._pages.clear()
            self._used.clear()


def _error(code: str, auth: str) -> Answer:
    return Answer({"error": {"code": code, "message": MESSAGES[code]}}, code, auth)


def _shown_name(form: dict[str, Part], image: _Image) -> str:
    """`name` if given, else the file part's (or URL's) file name, else "image.<ext>"."""
    return (form["name"].text if "name" in form else "") or image.filename or f"image.{image.ext}"


def _album(form: dict[str, Part], caller: _Caller) -> str | None:
    """The album, for account uploads only: the service ignores a guest's album."""
    if caller.auth != "account" or "album" not in form:
        return None
    return form["album"].text.strip() or None


def _new_id(taken: Container[str]) -> str:
    while True:
        remote_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(7))
        if remote_id not in taken:
            return remote_id


def _read_image(form: dict[str, Part]) -> _Image:
    """The image a form carries (file part, base64 text or URL), checked; raise _Refusal."""
    source: Source
    filename: str | None = None
    if "image" in form and form["image"].filename is not None:
        source, data, filename = "file", form["image"].value, form["image"].filename
    elif "image" in form:
        source, data = "base64", _decode_base64(form["image"].value)
    elif "url" in form:
        url = form["url"].text.strip()
        source, data = "url", _fetch(url)
        filename = unquote(urlsplit(url).path.rpartition("/")[2]) or None
    else:
        raise _Refusal("102")
    if not data:
        raise _Refusal("102")
    if len(data) > MAX_IMAGE_BYTES:
        raise _Refusal("101")
    ext = sniff(data)
    if ext is None:
        raise _Refusal("103")
    return _Image(data, source, filename or None, ext)


def _decode_base64(text: bytes) -> bytes:
    """Raw base64 (MIME line breaks allowed); a `data:` prefix or any other character -> 102."""
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error as exc:
        raise _Refusal("102") from exc


def _fetch(url: str) -> bytes:
    """GET an http(s) URL (5 s timeout): 106 if it is not one, 107 if fetching fails, 101 if too big."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refusal("106")
    try:
        with httpx.stream("GET", url, timeout=5.0, follow_redirects=True, trust_env=False) as response:
            if not response.is_success:
                raise _Refusal("107")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise _Refusal("101")
            return bytes(data)
    except httpx.InvalidURL as exc:
        raise _Refusal("106") from exc
    except httpx.HTTPError as exc:
        raise _Refusal("107") from exc


def sniff(data: bytes) -> str | None:
    """The format of an image by its magic bytes ("jpeg", "png", "gif"), or None."""
    return next((ext for magic, ext, _ in _FORMATS if data.startswith(magic)), None)


def _content_type(ext: str) -> str:
    return next(kind for _, name, kind in _FORMATS if name == ext)


def resolution(data: bytes) -> str:
    """ "WxH" from the PNG IHDR, the GIF logical screen or the JPEG SOFn segment; "0x0" if unreadable."""
    size: tuple[int, int] | None = None
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif data.startswith(b"GIF") and len(data) >= 10:
        size = struct.unpack("<HH", data[6:10])
    elif data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
    return f"{size[0]}x{size[1]}" if size else "0x0"


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any SOFn
            return None
        else:
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None
