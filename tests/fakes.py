"""In-memory stand-ins for a `Host` and an `Indexer`, for tests that need no HTTP at all.

They keep the protocols' contracts (the same contract suite runs against them and against
the real clients), count the requests they would have made, and can be told to fail:
errors appended to `fail_next` are raised by the next calls, one each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from watchd.errors import AlreadyDoneError, ConfigurationError, PermanentFileError, ServiceError
from watchd.hosts.base import Uploaded, UploadRequest
from watchd.imagefile import inspect_image
from watchd.indexers.baidu import validate_push_item
from watchd.indexers.base import ItemResult, PushItem


@dataclass
class FakeHost:
    """An image host that keeps uploads in memory; `authorized=False` acts like a wrong key."""

    name: str = "fake"
    authorized: bool = True
    fail_next: list[ServiceError] = field(default_factory=list)
    uploads: dict[str, UploadRequest] = field(default_factory=dict)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def upload(self, request: UploadRequest) -> Uploaded:
        info = inspect_image(request.path)  # refused locally, before any "request"
        if not info.complete:
            raise PermanentFileError(f"{request.path.name} is truncated", service=self.service)
        with self._lock:
            self.calls += 1
            if self.fail_next:
                raise self.fail_next.pop(0)
            if not self.authorized:
                raise ConfigurationError("invalid secret key", service=self.service, code="105")
            remote_id = f"F{len(self.uploads) + 1}"
            self.uploads[remote_id] = request
        return Uploaded(
            remote_id=remote_id,
            link=f"https://img.example/out/{remote_id}.{info.kind}",
            short_link=f"https://img.example/i/{remote_id}",
            size=info.size,
            resolution=f"{info.width}x{info.height}",
        )

    @property
    def service(self) -> str:
        return f"fake:{self.name}"

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class FakeIndexer:
    """A search index in memory: a duplicate push or a withdraw of an unknown id is "already done".

    `authorized=False` acts like a wrong app token.
    """

    name: str = "fake"
    authorized: bool = True
    max_push: int = 20
    max_withdraw: int = 10
    fail_next: list[ServiceError] = field(default_factory=list)
    stored: dict[str, PushItem] = field(default_factory=dict)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def push(self, items: list[PushItem]) -> list[ItemResult]:
        self._check(len(items), self.max_push)
        errors: list[ServiceError | None] = []
        for item in items:
            try:
                validate_push_item(item)
            except PermanentFileError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        if None in errors:
            self._request()
        with self._lock:
            for n, item in enumerate(items):
                if errors[n] is None:
                    if item.id in self.stored and not item.modify:
                        errors[n] = AlreadyDoneError("duplicate")
                    self.stored[item.id] = item
        return [ItemResult(item.id, error) for item, error in zip(items, errors, strict=True)]

    def withdraw(self, ids: list[str]) -> list[ItemResult]:
        self._check(len(ids), self.max_withdraw)
        self._request()
        with self._lock:
            missing = [self.stored.pop(item_id, None) is None for item_id in ids]
        return [
            ItemResult(item_id, AlreadyDoneError("not stored") if gone else None)
            for item_id, gone in zip(ids, missing, strict=True)
        ]

    def close(self) -> None:
        """Nothing to release."""

    @staticmethod
    def _check(count: int, limit: int) -> None:
        if count > limit:
            raise ValueError(f"at most {limit} items a call, got {count}")

    def _request(self) -> None:
        """Count one would-be request; fail it as told, or as a wrong token would."""
        with self._lock:
            self.calls += 1
            if self.fail_next:
                raise self.fail_next.pop(0)
            if not self.authorized:
                raise ConfigurationError("authorisation failed", service=self.name, code="60001001")
