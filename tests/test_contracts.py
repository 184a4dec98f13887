"""One contract suite per protocol, run against the in-memory fake and the real client + emulator.

A new host or indexer module passes these same tests: add it to the fixture's params.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

import httpx
import pytest

from tests.fakes import FakeHost, FakeIndexer
from tests.imagegen import gif, jpeg, png
from watchd.errors import AlreadyDoneError, ConfigurationError, PermanentFileError
from watchd.hosts.base import Host, UploadRequest
from watchd.hosts.imageban import ImageBanHost
from watchd.indexers.baidu import BaiduIndexer
from watchd.indexers.base import Indexer, PushItem

T = TypeVar("T")


@dataclass
class Subject(Generic[T]):
    """A client under test: `make(authorized)` builds one; `requests()` counts what reached the wire."""

    make: Callable[[bool], T]
    requests: Callable[[], int]


def counting_client() -> tuple[httpx.Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []
    return httpx.Client(timeout=10, event_hooks={"request": [sent.append]}), sent


@pytest.fixture(params=["fake", "imageban"])
def hosts(request: pytest.FixtureRequest) -> Iterator[Subject[Host]]:
    if request.param == "fake":
        fakes: list[FakeHost] = []

        def make_fake(authorized: bool) -> Host:
            fakes.append(FakeHost("contract", authorized=authorized))
            return fakes[-1]

        yield Subject(make_fake, lambda: sum(f.calls for f in fakes))
        return
    emulator = request.getfixturevalue("emulator")
    client, sent = counting_client()
    with client:
        yield Subject(
            lambda authorized: ImageBanHost(
                "contract",
                api_url=emulator.imageban_url,
                client=client,
                secret_key="demo-secret" if authorized else "not-the-secret",
            ),
            lambda: len(sent),
        )


@pytest.fixture(params=["fake", "baidu"])
def indexers(request: pytest.FixtureRequest) -> Iterator[Subject[Indexer]]:
    if request.param == "fake":
        fake = FakeIndexer()  # one shared store, like one Baidu account

        def make_fake(authorized: bool) -> Indexer:
            fake.authorized = authorized
            return fake

        yield Subject(make_fake, lambda: fake.calls)
        return
    emulator = request.getfixturevalue("emulator")
    client, sent = counting_client()
    with client:
        yield Subject(
            lambda authorized: BaiduIndexer(
                app_id="demo-app",
                app_token="demo-token" if authorized else "not-the-token",
                api_base=emulator.baidu_url,
                client=client,
            ),
            lambda: len(sent),
        )


# -- Host ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("maker", "name"), [(png, "cat.png"), (jpeg, "котик.jpg"), (gif, "猫.gif")])
def test_upload_returns_where_the_file_lives(hosts: Subject[Host], tmp_path: Path, maker, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(maker(31, 17))
    uploaded = hosts.make(True).upload(UploadRequest(path, name))
    assert uploaded.remote_id
    assert uploaded.link.startswith("http")
    assert uploaded.short_link.startswith("http")
    assert uploaded.size == path.stat().st_size
    assert uploaded.resolution == "31x17"
    assert hosts.requests() == 1


def test_each_upload_is_a_new_image(hosts: Subject[Host], tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png(5, 5))
    host = hosts.make(True)
    first, second = (host.upload(UploadRequest(path, "a.png", album="srXiv43")) for _ in range(2))
    assert first.remote_id != second.remote_id


@pytest.mark.parametrize(
    "content", [b"hello, I am text", b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"", png(4, 4)[:-4]]
)
def test_bad_file_is_refused_before_any_request(hosts: Subject[Host], tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-really.png"
    path.write_bytes(content)
    with pytest.raises(PermanentFileError):
        hosts.make(True).upload(UploadRequest(path, path.name))
    assert hosts.requests() == 0


def test_missing_file_is_file_not_found(hosts: Subject[Host], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hosts.make(True).upload(UploadRequest(tmp_path / "gone.png", "gone.png"))
    assert hosts.requests() == 0


def test_bad_credentials_are_a_configuration_error(hosts: Subject[Host], tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png(5, 5))
    with pytest.raises(ConfigurationError) as caught:
        hosts.make(False).upload(UploadRequest(path, "a.png"))
    assert "not-the-secret" not in str(caught.value)


# -- Indexer -------------------------------------------------------------------------------------


def push_item(n: int, **changes: object) -> PushItem:
    item = PushItem(
        id=f"contract{n}",
        title=f"Contract test image {n}",
        objurl=f"https://img.example/out/{n}.png",
        fromurl=f"https://img.example/i/{n}",
        edit_time=1_700_000_000 + n,
        tags=("test", "contract"),
    )
    return replace(item, **changes)


def test_push_returns_one_result_per_item_in_order(indexers: Subject[Indexer]) -> None:
    indexer = indexers.make(True)
    items = [push_item(n) for n in range(indexer.max_push)]
    results = indexer.push(items)
    assert [r.id for r in results] == [i.id for i in items]
    assert [r.error for r in results] == [None] * len(items)


def test_duplicate_push_is_already_done(indexers: Subject[Indexer]) -> None:
    indexer = indexers.make(True)
    assert indexer.push([push_item(1)])[0].error is None
    (again,) = indexer.push([push_item(1)])
    assert isinstance(again.error, AlreadyDoneError)
    (modified,) = indexer.push([push_item(1, modify=True, title="Contract test image, edited")])
    assert modified.error is None


def test_invalid_item_fails_alone_without_a_request(indexers: Subject[Indexer]) -> None:
    indexer = indexers.make(True)
    results = indexer.push([push_item(1), push_item(2, title="short"), push_item(3)])
    assert [r.id for r in results] == ["contract1", "contract2", "contract3"]
    assert [type(r.error) if r.error else None for r in results] == [None, PermanentFileError, None]
    before = indexers.requests()
    (alone,) = indexer.push([push_item(4, objurl="not a url")])
    assert isinstance(alone.error, PermanentFileError)
    assert indexers.requests() == before


def test_withdraw(indexers: Subject[Indexer]) -> None:
    indexer = indexers.make(True)
    indexer.push([push_item(1), push_item(2)])
    results = indexer.withdraw(["contract1", "contract2"])
    assert [(r.id, r.error) for r in results] == [("contract1", None), ("contract2", None)]
    (again,) = indexer.withdraw(["contract1"])
    assert isinstance(again.error, AlreadyDoneError)


def test_withdraw_of_a_missing_id_is_already_done(indexers: Subject[Indexer]) -> None:
    (result,) = indexers.make(True).withdraw(["neverpushed1"])
    assert result.id == "neverpushed1"
    assert isinstance(result.error, AlreadyDoneError)


def test_batch_limits(indexers: Subject[Indexer]) -> None:
    indexer = indexers.make(True)
    with pytest.raises(ValueError):
        indexer.push([push_item(n) for n in range(indexer.max_push + 1)])
    with pytest.raises(ValueError):
        indexer.withdraw([f"x{n}" for n in range(indexer.max_withdraw + 1)])
    assert indexers.requests() == 0


def test_bad_credentials_are_a_configuration_error_for_indexers(indexers: Subject[Indexer]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        indexers.make(False).push([push_item(1)])
    assert "not-the-token" not in str(caught.value)
