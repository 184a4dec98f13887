"""The `Host` protocol: what the pipeline needs from an image host."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watchd.imagefile import ImageInfo


@dataclass(frozen=True)
class UploadRequest:
    """What to upload: the local file, the name to show, and the optional album.

    `image` is the caller's fresh `inspect_image` of the file, which spares the host a
    second look; without it the host inspects the file itself. `content`, when given, is
    the file's bytes as the caller read (and checked) them: they are sent instead of the
    file being read again.
    """

    path: Path
    name: str
    album: str | None = None
    image: ImageInfo | None = None
    content: bytes | None = None


@dataclass(frozen=True)
class Uploaded:
    """A successful upload, with the service's numbers already converted."""

    remote_id: str
    link: str
    short_link: str
    size: int
    resolution: str
    delete_hash: str | None = None


class Host(Protocol):
    """An image host.

    `upload` sends one file and returns where it now lives. It raises only
    `watchd.errors.ServiceError` subclasses: it never retries by itself (retry is a
    wrapper) and never logs. It is safe to call from several threads at once.
    """

    name: str

    def upload(self, request: UploadRequest) -> Uploaded: ...

    def close(self) -> None: ...
