"""The Baidu client against a mock transport: payloads, errno mapping, bisection; and its pure helpers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from watchd.emulator import Emulator
from watchd.errors import (
    AlreadyDoneError,
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
    TransientError,
)
from watchd.http import HttpClient, HttpPoster
from watchd.indexers.baidu import BaiduIndexer, encode_url, make_title, validate_push_item
from watchd.indexers.base import PushItem

BASE = "https://baidu.example/builderinner/open/resource/image"
TOKEN = "t0k3n-value-secret"


def item(n: int | str = 1, **changes: Any) -> PushItem:
    base = PushItem(
        id=f"id{n}",
        title=f"A picture number {n}",
        objurl=f"https://i5.imageban.ru/out/{n}.png",
        fromurl=f"http://ibn.im/i/{n}",
        edit_time=1488892004,
    )
    return replace(base, **changes)


class FakeBaidu:
    """A mock transport: `decide(endpoint, entries)` gives the errno; calls are recorded."""

    def __init__(self, decide: Callable[[str, list[dict[str, Any]]], Any] = lambda *_: 0) -> None:
        self.decide = decide
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        endpoint = request.url.path.rsplit("/", 1)[1]
        entries = json.loads(body["image_list" if endpoint == "pushPic" else "delete_list"])
        self.calls.append((endpoint, entries))
        answer = self.decide(endpoint, entries)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json={"errno": answer, "errmsg": "", "data": None})


def indexer(transport: Callable[[httpx.Request], httpx.Response], base: str = BASE) -> BaiduIndexer:
    client = httpx.Client(transport=httpx.MockTransport(transport))
    return BaiduIndexer(app_id="app1", app_token=TOKEN, api_base=base, client=client)


def answering(errno: Any, errmsg: str = "") -> FakeBaidu:
    return FakeBaidu(lambda *_: httpx.Response(200, json={"errno": errno, "errmsg": errmsg, "data": None}))


def errors_of(results: list[Any]) -> list[type | None]:
    return [type(r.error) if r.error else None for r in results]


# -- requests -----------------------------------------------------------------------------------


def test_push_request_is_exactly_as_documented() -> None:
    fake = FakeBaidu()
    items = [
        item(1, title="猫的图片 - 宠物文件夹", tags=("cats", "pets"), copyright=True, modify=True),
        item(2),
    ]
    results = indexer(fake, base=BASE + "/").push(items)
    assert [(r.id, r.error) for r in results] == [("id1", None), ("id2", None)]
    (request,) = fake.requests
    assert (request.method, str(request.url)) == ("POST", f"{BASE}/pushPic")
    assert request.headers["Content-Type"] == "application/json;charset=utf-8"
    body = json.loads(request.content.decode("utf-8"))
    assert set(body) == {"app_id", "app_token", "image_list"}
    assert (body["app_id"], body["app_token"]) == ("app1", TOKEN)
    assert isinstance(body["image_list"], str)
    assert body["image_list"] == json.dumps(
        json.loads(body["image_list"]), ensure_ascii=False, separators=(",", ":")
    )
    assert json.loads(body["image_list"]) == [
        {
            "id": "id1",
            "title": "猫的图片 - 宠物文件夹",
            "objurl": "https://i5.imageban.ru/out/1.png",
            "fromurl": "http://ibn.im/i/1",
            "edit_time": 1488892004,
            "tags": "cats#pets",
            "copyright": 1,
            "extra": {"modify": "1"},
        },
        {
            "id": "id2",
            "title": "A picture number 2",
            "objurl": "https://i5.imageban.ru/out/2.png",
            "fromurl": "http://ibn.im/i/2",
            "edit_time": 1488892004,
            "copyright": 0,
            "extra": {"modify": "0"},
        },
    ]


def test_withdraw_request() -> None:
    fake = FakeBaidu()
    results = indexer(fake).withdraw(["abc1", "def2"])
    assert [(r.id, r.error) for r in results] == [("abc1", None), ("def2", None)]
    (request,) = fake.requests
    assert str(request.url) == f"{BASE}/delPic"
    assert request.headers["Content-Type"] == "application/json;charset=utf-8"
    body = json.loads(request.content)
    assert set(body) == {"app_id", "app_token", "delete_list"}
    assert body["delete_list"] == '[{"type":"id","key":"abc1"},{"type":"id","key":"def2"}]'


def test_limits() -> None:
    fake = FakeBaidu()
    client = indexer(fake)
    assert (client.name, client.max_push, client.max_withdraw) == ("baidu", 20, 10)
    assert len(client.push([item(n) for n in range(20)])) == 20
    with pytest.raises(ValueError, match="at most 20"):
        client.push([item(n) for n in range(21)])
    with pytest.raises(ValueError, match="at most 10"):
        client.withdraw([f"x{n}" for n in range(11)])
    assert len(fake.calls) == 1


def test_invalid_items_are_not_sent_the_rest_are() -> None:
    fake = FakeBaidu()
    results = indexer(fake).push([item(1), item(2, title="short"), item(3, id="bad-id"), item(4)])
    assert errors_of(results) == [None, PermanentFileError, PermanentFileError, None]
    assert [r.id for r in results] == ["id1", "id2", "bad-id", "id4"]
    assert "title 'short' must be longer than 8 characters" in results[1].error.message
    assert [[e["id"] for e in entries] for _, entries in fake.calls] == [["id1", "id4"]]


def test_nothing_valid_means_no_call() -> None:
    fake = FakeBaidu()
    assert errors_of(indexer(fake).push([item(1, objurl="nope")])) == [PermanentFileError]
    assert errors_of(indexer(fake).withdraw(["has space"])) == [PermanentFileError]
    assert indexer(fake).push([]) == []
    assert fake.calls == []


# -- errno mapping --------------------------------------------------------------------------------

CALL_LEVEL: list[tuple[int, type[ServiceError]]] = [
    (4, TransientError),
    (5, TransientError),
    (10003, TransientError),
    (10005, TransientError),
    (60000006, TransientError),
    (60000020, TransientError),
    (301002, QuotaError),
    (10002, ConfigurationError),
    (60000005, ConfigurationError),
    (60000009, ConfigurationError),
    (60001001, ConfigurationError),
]


@pytest.mark.parametrize(("errno", "cls"), CALL_LEVEL)
@pytest.mark.parametrize("as_text", [False, True])
@pytest.mark.parametrize("action", ["push", "withdraw"])
def test_call_level_errnos_are_raised(
    errno: int, cls: type[ServiceError], as_text: bool, action: str
) -> None:
    client = indexer(answering(str(errno) if as_text else errno))
    with pytest.raises(ServiceError) as caught:
        client.push([item(1), item(2)]) if action == "push" else client.withdraw(["a1", "b2"])
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.service) == (str(errno), "baidu")
    assert not caught.value.may_have_used_quota  # an errno answer: Baidu stored nothing


@pytest.mark.parametrize("errno", [0, "0"])
def test_success(errno: Any) -> None:
    assert errors_of(indexer(answering(errno)).push([item(1), item(2)])) == [None, None]


@pytest.mark.parametrize("errno", [301003, "301003"])
def test_duplicate_is_already_done_for_every_item_of_the_call(errno: Any) -> None:
    results = indexer(answering(errno)).push([item(1), item(2)])
    assert errors_of(results) == [AlreadyDoneError, AlreadyDoneError]
    assert results[0].error.code == "301003"


@pytest.mark.parametrize("errno", [301004, "301004"])
def test_delete_of_missing_is_already_done(errno: Any) -> None:
    assert errors_of(indexer(answering(errno)).withdraw(["a1", "b2"])) == [AlreadyDoneError, AlreadyDoneError]


def test_301004_on_push_is_unknown_hence_transient() -> None:
    with pytest.raises(TransientError, match="unknown Baidu errno 301004"):
        indexer(answering(301004)).push([item(1)])


@pytest.mark.parametrize("errno", [2, "2", 301001, "301001"])
@pytest.mark.parametrize("action", ["push", "withdraw"])
def test_payload_problem_of_a_single_item_fails_that_item(errno: Any, action: str) -> None:
    client = indexer(answering(errno, "image_list param error"))
    results = client.push([item(1)]) if action == "push" else client.withdraw(["a1"])
    assert errors_of(results) == [PermanentFileError]
    assert results[0].error.code == str(errno)
    assert "image_list param error" in results[0].error.message


@pytest.mark.parametrize("errno", [12345, "77", "abc"])
def test_unknown_errno_is_transient_and_named(errno: Any) -> None:
    with pytest.raises(TransientError, match=f"unknown Baidu errno {errno}"):
        indexer(answering(errno)).push([item(1)])


def test_token_echoed_by_the_service_is_scrubbed() -> None:
    with pytest.raises(TransientError) as caught:
        indexer(answering(999, f"bad token {TOKEN}")).push([item(1)])
    assert TOKEN not in str(caught.value)
    assert "bad token ***" in str(caught.value)


def test_429_honours_retry_after() -> None:
    fake = FakeBaidu(lambda *_: httpx.Response(429, text="slow", headers={"Retry-After": "30"}))
    with pytest.raises(TransientError) as caught:
        indexer(fake).push([item(1)])
    assert (caught.value.code, caught.value.retry_after) == ("429", 30.0)
    assert not caught.value.may_have_used_quota  # turned away: the day's quota is untouched


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient(status: int) -> None:
    with pytest.raises(TransientError) as caught:
        indexer(FakeBaidu(lambda *_: httpx.Response(status, text="<html>"))).withdraw(["a1"])
    assert caught.value.code == str(status) and caught.value.may_have_used_quota  # it may have been stored


def test_404_means_wrong_api_base() -> None:
    with pytest.raises(ConfigurationError, match=r"check baidu\.api_base"):
        indexer(FakeBaidu(lambda *_: httpx.Response(404, text="not found"))).push([item(1)])


@pytest.mark.parametrize(
    "content", [b"<html>", b"\xff\xfe", b"[]", b'{"errmsg": "no errno"}', b"null", b"[" * 100_000]
)
def test_malformed_answer_is_transient(content: bytes) -> None:
    with pytest.raises(TransientError, match="malformed answer"):
        indexer(FakeBaidu(lambda *_: httpx.Response(200, content=content))).push([item(1)])


@pytest.mark.parametrize("make_client", [httpx.Client, HttpClient], ids=["httpx.Client", "HttpClient"])
def test_connection_refused_and_timeout_are_transient(make_client: Callable[..., HttpPoster]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"http://proxyuser:proxypass@127.0.0.1:{s.getsockname()[1]}"
    client = make_client()
    with pytest.raises(TransientError, match="cannot reach") as caught:
        BaiduIndexer(app_id="a", app_token=TOKEN, api_base=refused, client=client).push([item(1)])
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.reached is False  # nothing was sent: no quota used
    assert "proxypass" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    client = make_client(timeout=30)  # Baidu's own timeout wins over the shared client's
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        baidu = BaiduIndexer(app_id="a", app_token=TOKEN, api_base=base, client=client, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out") as caught:
            baidu.withdraw(["a1"])
        assert time.monotonic() - started < 5
        assert isinstance(caught.value.__cause__, httpx.TimeoutException)
        assert caught.value.reached is True  # the call may have been counted


def test_a_key_in_the_api_bases_query_stays_out_of_messages() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://user:pa55word@127.0.0.1:{port}/image/?sig=QUERY-SECRET#fragment"
    client = HttpClient(timeout=5, environ_proxies={})
    try:
        with pytest.raises(TransientError, match="cannot reach") as caught:
            BaiduIndexer(app_id="a", app_token=TOKEN, api_base=base, client=client).push([item(1)])
    finally:
        client.close()
    message = str(caught.value)
    assert f"cannot reach http://127.0.0.1:{port}/image/pushPic: " in message
    assert "QUERY-SECRET" not in message and "fragment" not in message and "pa55word" not in message


# -- bisection -----------------------------------------------------------------------------------


def rejecting(bad: set[str], errno: int = 2) -> tuple[FakeBaidu, set[str]]:
    """A service refusing (with `errno`) any call holding a `bad` id; it stores the others."""
    stored: set[str] = set()

    def decide(endpoint: str, entries: list[dict[str, Any]]) -> int:
        ids = {entry.get("id") or entry.get("key") for entry in entries}
        if ids & bad:
            return errno
        stored.update(ids)
        return 0

    return FakeBaidu(decide), stored


def test_one_bad_item_among_20() -> None:
    fake, stored = rejecting({"id7"})
    results = indexer(fake).push([item(n) for n in range(20)])
    assert errors_of(results) == [PermanentFileError if n == 7 else None for n in range(20)]
    assert [r.id for r in results] == [f"id{n}" for n in range(20)]
    assert stored == {f"id{n}" for n in range(20)} - {"id7"}
    # 20 -> 10 (bad) + 10 ok -> 5 ok + 5 (bad) -> 2 ok + 3 (bad) -> 1 bad + 2 ok
    assert [len(entries) for _, entries in fake.calls] == [20, 10, 5, 5, 2, 3, 1, 2, 10]


@pytest.mark.parametrize("errno", [2, 301001])
def test_two_bad_items_among_20(errno: int) -> None:
    fake, stored = rejecting({"id0", "id19"}, errno)
    results = indexer(fake).push([item(n) for n in range(20)])
    assert [r.id for r in results if r.error] == ["id0", "id19"]
    assert all(r.error.code == str(errno) for r in results if r.error)
    assert len(stored) == 18
    assert len(fake.calls) == 17


def test_bisection_on_withdraw() -> None:
    fake, stored = rejecting({"k3"})
    results = indexer(fake).withdraw([f"k{n}" for n in range(10)])
    assert errors_of(results) == [PermanentFileError if n == 3 else None for n in range(10)]
    assert len(stored) == 9


def test_call_level_error_during_bisection_is_raised() -> None:
    answers = iter([2, 0, 301002])
    fake = FakeBaidu(lambda *_: next(answers))
    with pytest.raises(QuotaError):
        indexer(fake).push([item(n) for n in range(4)])
    assert len(fake.calls) == 3


def test_duplicate_inside_bisection_is_already_done() -> None:
    answers = iter([2, 301003, 2, 0, 0])
    results = indexer(FakeBaidu(lambda *_: next(answers))).push([item(n) for n in range(4)])
    assert errors_of(results) == [AlreadyDoneError, AlreadyDoneError, None, None]


# -- validation, titles, URLs ----------------------------------------------------------------------


def test_valid_item_passes() -> None:
    validate_push_item(item(1, tags=("a", "b c"), edit_time=0, title="123456789"))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"title": "12345678"}, "must be longer than 8 characters"),
        ({"title": "猫猫猫猫猫猫猫猫"}, "must be longer than 8 characters"),
        ({"id": ""}, "id '' must be ASCII letters and digits only"),
        ({"id": "ab_12"}, "must be ASCII letters and digits"),
        ({"id": "абв123"}, "must be ASCII letters and digits"),
        ({"objurl": "ftp://x/y.png"}, "objurl 'ftp://x/y.png' must start with http:// or https://"),
        ({"objurl": "/relative.png"}, "must start with http"),
        ({"fromurl": "http://x/a b"}, "fromurl 'http://x/a b' must be percent-encoded"),
        ({"fromurl": "http://x/猫"}, "must be percent-encoded"),
        ({"objurl": "http://x/a\tb"}, "must be percent-encoded"),
        ({"tags": ("ok", "")}, "tag '' must be non-empty"),
        ({"tags": ("a#b",)}, "tag 'a#b' must be non-empty and must not contain '#'"),
        ({"edit_time": -1}, "edit_time -1 must be a non-negative integer"),
        ({"edit_time": 1.5}, "must be a non-negative integer"),
    ],
)
def test_validation_rules(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(PermanentFileError) as caught:
        validate_push_item(item(1, **changes))
    assert problem in caught.value.message
    assert caught.value.message.startswith("not submitted to Baidu: ")


def test_validation_reports_every_problem_at_once() -> None:
    with pytest.raises(PermanentFileError) as caught:
        validate_push_item(item(1, title="short", id="a-b", edit_time=-5))
    assert caught.value.message.count(";") == 2


def test_nine_chinese_characters_are_enough() -> None:
    validate_push_item(item(1, title="猫猫猫猫猫猫猫猫猫"))


@pytest.mark.parametrize(
    ("rendered", "folder", "title"),
    [
        ("A long enough title", "pets", "A long enough title"),
        ("123456789", "pets", "123456789"),
        ("12345678", "pets", "12345678 - pets"),
        ("cat.png", "pets", "cat.png - pets"),
        ("cat", "x", "cat - x image"),
        ("  cat  ", "my holiday photos", "cat - my holiday photos"),
        ("", "wallpapers", "wallpapers"),
        ("", "pets", "pets image"),
        ("猫", "宠物", "猫 - 宠物 image"),
    ],
)
def test_make_title(rendered: str, folder: str, title: str) -> None:
    assert make_title(rendered, folder) == title
    assert len(make_title(rendered, folder)) > 8


@pytest.mark.parametrize(
    ("url", "encoded"),
    [
        ("https://i5.imageban.ru/out/a.png", "https://i5.imageban.ru/out/a.png"),
        ("http://example.com/мой кот.png", "http://example.com/%D0%BC%D0%BE%D0%B9%20%D0%BA%D0%BE%D1%82.png"),
        ("http://example.com/a%20b/%E7%8C%AB?x=1&y=[2]#f", "http://example.com/a%20b/%E7%8C%AB?x=1&y=[2]#f"),
        ("http://example.com/100%/猫", "http://example.com/100%25/%E7%8C%AB"),
        ("http://example.com/a%2", "http://example.com/a%252"),
        ("  http://example.com/x\n", "http://example.com/x"),
        ("http://example.com/a\tb", "http://example.com/a%09b"),
        ("http://example.com/a\x7fb\x01", "http://example.com/a%7Fb%01"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://пример.рф/путь", "http://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C"),
        ("http://user@пример.рф:8080/", "http://user@xn--e1afmkfd.xn--p1ai:8080/"),
        ("http://[broken/猫", "http://[broken/%E7%8C%AB"),
    ],
)
def test_encode_url(url: str, encoded: str) -> None:
    assert encode_url(url) == encoded
    assert encode_url(encoded) == encoded


# -- against the emulator, over loopback -------------------------------------------------------


@pytest.fixture(params=["httpx.Client", "HttpClient"])
def emulated(emulator: Emulator, request: pytest.FixtureRequest) -> Iterator[BaiduIndexer]:
    """The indexer over both clients it is given: httpx's, and the daemon's lean one."""
    client = httpx.Client(timeout=10) if request.param == "httpx.Client" else HttpClient(timeout=10)
    yield BaiduIndexer(app_id="demo-app", app_token="demo-token", api_base=emulator.baidu_url, client=client)
    client.close()


def test_emulator_stores_exactly_what_was_sent(emulator: Emulator, emulated: BaiduIndexer) -> None:
    pushed = item(1, title="猫的图片 - 宠物文件夹", tags=("猫", "pets"), copyright=True)
    assert errors_of(emulated.push([pushed, item(2)])) == [None, None]
    (call,) = emulator.baidu_calls()
    assert (call.endpoint, call.errno) == ("pushPic", 0)
    assert call.items[0] == {
        "id": "id1",
        "title": "猫的图片 - 宠物文件夹",
        "objurl": pushed.objurl,
        "fromurl": pushed.fromurl,
        "edit_time": pushed.edit_time,
        "tags": "猫#pets",
        "copyright": 1,
        "extra": {"modify": "0"},
    }
    assert set(emulator.baidu_index()) == {"id1", "id2"}


def test_emulator_duplicate_in_a_batch_marks_the_call_already_done(
    emulator: Emulator, emulated: BaiduIndexer
) -> None:
    emulated.push([item(1)])
    assert errors_of(emulated.push([item(1), item(2)])) == [AlreadyDoneError, AlreadyDoneError]
    assert set(emulator.baidu_index()) == {"id1", "id2"}  # the service stored the other one


@pytest.mark.parametrize(
    ("faults", "cls", "codes"),
    [
        ({"baidu_quota": 0}, QuotaError, {"301002"}),
        ({"transient_rate": 1.0}, TransientError, {"10003", "10005", "60000020"}),
        ({"http_error_rate": 1.0}, TransientError, {"500", "502", "503"}),
        ({"http_error_rate": 1.0, "retry_after": 0.5}, TransientError, {"429"}),
        ({"drop_rate": 1.0}, TransientError, {""}),
    ],
)
def test_emulator_faults(
    emulator: Emulator,
    emulated: BaiduIndexer,
    faults: dict[str, Any],
    cls: type[ServiceError],
    codes: set[str],
) -> None:
    emulator.set_faults(**faults)
    with pytest.raises(cls) as caught:
        emulated.push([item(1)])
    assert caught.value.code in codes


def test_emulator_unknown_app_is_a_configuration_error(emulator: Emulator) -> None:
    with httpx.Client() as client:
        indexer = BaiduIndexer(app_id="nobody", app_token="x", api_base=emulator.baidu_url, client=client)
        with pytest.raises(ConfigurationError) as caught:
            indexer.withdraw(["a1"])
    assert caught.value.code == "60000009"
