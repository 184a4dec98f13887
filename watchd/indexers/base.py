"""The `Indexer` protocol: what the pipeline needs from a search-engine submission API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from watchd.errors import ServiceError


@dataclass(frozen=True)
class PushItem:
    """One image to submit (or re-submit, `modify=True`) under a stable `id`."""

    id: str
    title: str
    objurl: str
    fromurl: str
    edit_time: int
    tags: tuple[str, ...] = ()
    copyright: bool = False
    modify: bool = False


@dataclass(frozen=True)
class ItemResult:
    """The outcome for one item of a batch: `error` is None on success.

    An `AlreadyDoneError` means the service already had it (treat as done).
    """

    id: str
    error: ServiceError | None = field(default=None)


class Indexer(Protocol):
    """A search-engine submission API.

    `push` and `withdraw` take at most `max_push` / `max_withdraw` items and return one
    `ItemResult` per item, in order. Errors that concern the whole call (quota,
    configuration, transient) are raised as `ServiceError`s; errors that concern items
    (a bad payload) are returned per item: when the service only says "a parameter is
    wrong" for a batch, the indexer bisects to find the bad items itself.
    """

    name: str
    max_push: int
    max_withdraw: int

    def push(self, items: list[PushItem]) -> list[ItemResult]: ...

    def withdraw(self, ids: list[str]) -> list[ItemResult]: ...

    def close(self) -> None: ...
