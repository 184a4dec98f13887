"""The emulator of ImageBan and Baidu, over real loopback sockets with httpx."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.imagegen import gif, jpeg, png
from watchd.emulator import Emulator, Faults

ACCOUNT = {"Authorization": "Bearer demo-secret"}
GUEST = {"Authorization": "TOKEN demo-client"}
MIB_10 = 10 * 1024 * 1024
MOSCOW = timezone(timedelta(hours=3))
SHANGHAI = timezone(timedelta(hours=8))


class Clock:
    """An injectable clock the test moves by hand."""

    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emu(shared_emulator: Emulator) -> Emulator:
    """One emulator for the module, reset before each test (which also exercises `reset`)."""
    shared_emulator.reset()
    return shared_emulator


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def upload(
    client: httpx.Client,
    emu: Emulator,
    headers: dict[str, str] | None = None,
    files: dict[str, Any] | None = None,
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST /v1 (account auth unless `headers` say otherwise); the answer must be HTTP 200 JSON."""
    response = client.post(
        emu.imageban_url, headers=ACCOUNT if headers is None else headers, files=files, data=data
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    answer: dict[str, Any] = response.json()
    return answer


def error_code(answer: dict[str, Any]) -> str:
    assert set(answer) == {"error"}, answer
    code: str = answer["error"]["code"]
    return code


# --- ImageBan: successful uploads ------------------------------------------------------------


def test_account_file_upload_answers_the_documented_shape_with_numbers_as_strings(
    emu: Emulator, client: httpx.Client
) -> None:
    image = png(37, 21)
    answer = upload(client, emu, files={"image": ("cat.png", image)}, data={"album": "srXiv43"})
    assert answer["success"] is True and answer["status"] == 200
    data = answer["data"]
    assert set(data) == {
        *("id", "date", "name", "server", "views", "description", "img_name", "favorite"),
        *("size", "resolution", "link", "short_link"),
    }
    assert re.fullmatch(r"[A-Za-z0-9]{7}", data["id"])
    assert re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", data["date"])
    assert re.fullmatch(r"[0-9a-f]{32}\.png", data["name"])
    assert data["size"] == str(len(image)) and data["views"] == "0" and data["favorite"] is False
    assert data["resolution"] == "37x21" and data["img_name"] == "cat.png"
    assert data["server"] == emu.url.removeprefix("http://")
    assert data["link"] == f"{emu.url}/out/{data['date'].replace('.', '/')}/{data['name']}"
    assert data["short_link"] == f"{emu.url}/i/{data['id']}"
    [record] = emu.uploads()
    assert (record.auth, record.source, record.album, record.filename) == (
        "account",
        "file",
        "srXiv43",
        "cat.png",
    )
    assert (record.remote_id, record.link, record.size) == (data["id"], data["link"], len(image))
    assert record.key_hint == "de…"


def test_guest_upload_has_a_delete_hash_and_its_album_is_ignored(emu: Emulator, client: httpx.Client) -> None:
    answer = upload(client, emu, GUEST, files={"image": ("a.gif", gif(3, 2))}, data={"album": "srXiv43"})
    assert answer["data"]["delete_hash"]
    [record] = emu.uploads()
    assert (record.auth, record.album) == ("guest", None)


@pytest.mark.parametrize(
    ("make", "content_type", "ext"),
    [(png, "image/png", "png"), (jpeg, "image/jpeg", "jpeg"), (gif, "image/gif", "gif")],
)
def test_link_serves_the_same_bytes_and_the_short_link_a_page(
    emu: Emulator, client: httpx.Client, make: Any, content_type: str, ext: str
) -> None:
    image = make(19, 11)
    data = upload(client, emu, files={"image": ("x", image)})["data"]
    assert data["resolution"] == "19x11" and data["name"].endswith("." + ext)
    for url in (data["link"], data["link"].replace("/out/", "/thumbs/")):
        served = client.get(url)
        assert served.status_code == 200 and served.content == image
        assert served.headers["content-type"] == content_type
    page = client.get(data["short_link"])
    assert page.status_code == 200 and data["link"] in page.text
    assert client.get(emu.url + "/out/2020/01/01/missing.png").status_code == 404
    assert client.get(emu.url + "/i/nope").status_code == 404


def test_base64_upload_as_form_field_urlencoded_or_multipart(emu: Emulator, client: httpx.Client) -> None:
    image = jpeg(9, 8)
    text = base64.b64encode(image).decode()
    urlencoded = upload(client, emu, GUEST, data={"image": text, "name": "имя_файла.jpg"})["data"]
    multipart = upload(client, emu, GUEST, files={"image": (None, text)})["data"]
    assert urlencoded["img_name"] == "имя_файла.jpg" and urlencoded["resolution"] == "9x8"
    assert multipart["img_name"] == "image.jpeg"
    assert [(r.source, r.filename) for r in emu.uploads()] == [("base64", None), ("base64", None)]
    assert client.get(multipart["link"]).content == image


def test_url_upload_fetches_the_image(emu: Emulator, client: httpx.Client) -> None:
    first = upload(client, emu, files={"image": ("a.png", png(4, 4))})["data"]
    answer = upload(client, emu, files={"url": (None, first["link"])})
    assert answer["data"]["size"] == first["size"] and answer["data"]["img_name"] == first["name"]
    assert emu.uploads()[-1].source == "url"


def test_name_field_overrides_the_file_name(emu: Emulator, client: httpx.Client) -> None:
    data = upload(client, emu, files={"image": ("a.png", png(2, 2))}, data={"name": "shown.png"})["data"]
    assert data["img_name"] == "shown.png" and emu.uploads()[0].filename == "a.png"


def test_data_as_list_switch_answers_the_seed_shape(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(data_as_list=True)
    answer = upload(client, emu, files={"image": ("a.png", png(2, 2))})
    assert isinstance(answer["data"], list) and answer["data"][0]["resolution"] == "2x2"


def test_exactly_10_mib_is_accepted(emu: Emulator, client: httpx.Client) -> None:
    image = png(1, 1, extra_bytes=MIB_10 - len(png(1, 1)) - 20)  # tEXt chunk: 12 + len("Comment\0")
    assert len(image) == MIB_10
    assert upload(client, emu, files={"image": ("big.png", image)})["data"]["size"] == str(MIB_10)


# --- ImageBan: every error code -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code", "auth"),
    [
        ({}, "110", "none"),
        ({"Authorization": "Basic ZGVtbzpkZW1v"}, "110", "none"),
        ({"Authorization": "token demo-client"}, "110", "none"),
        ({"Authorization": "TOKEN wrong"}, "100", "guest"),
        ({"Authorization": "Bearer wrong"}, "105", "account"),
    ],
)
def test_auth_errors(
    emu: Emulator, client: httpx.Client, headers: dict[str, str], code: str, auth: str
) -> None:
    answer = upload(client, emu, headers, files={"image": ("a.png", png(2, 2))})
    assert error_code(answer) == code
    assert emu.requests()[-1].auth == auth and emu.requests()[-1].code == code
    assert emu.uploads() == []


def test_error_messages_are_the_seeds(emu: Emulator, client: httpx.Client) -> None:
    answer = upload(client, emu, {"Authorization": "Bearer wrong"}, files={"image": ("a.png", png(2, 2))})
    assert answer == {"error": {"code": "105", "message": "Invalid secret key"}}


@pytest.mark.parametrize("headers", [{}, ACCOUNT])
def test_the_retired_secret_key_field_is_answered_110(
    emu: Emulator, client: httpx.Client, headers: dict[str, str]
) -> None:
    answer = upload(
        client, emu, headers, files={"image": ("a.png", png(2, 2))}, data={"secret_key": "demo-secret"}
    )
    assert error_code(answer) == "110"
    assert emu.requests()[-1].auth == "secret_key_field" and emu.uploads() == []


@pytest.mark.parametrize(
    ("files", "data"),
    [
        (None, None),
        (None, {"name": "a.png"}),
        ({"image": ("a.png", b"")}, None),
        ({"image": (None, "")}, None),
        (None, {"image": "data:image/png;base64," + base64.b64encode(png(2, 2)).decode()}),
        (None, {"image": "not base64!"}),
    ],
    ids=["nothing", "name-only", "empty-file", "empty-base64", "data-url-prefix", "invalid-base64"],
)
def test_no_image_data_is_102(emu: Emulator, client: httpx.Client, files: Any, data: Any) -> None:
    assert error_code(upload(client, emu, files=files, data=data)) == "102"


def test_multipart_without_its_closing_delimiter_has_no_fields_so_102(
    emu: Emulator, client: httpx.Client
) -> None:
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + png(2, 2)
    headers = {**ACCOUNT, "Content-Type": "multipart/form-data; boundary=xyz"}
    truncated = client.post(emu.imageban_url, headers=headers, content=body).json()
    assert error_code(truncated) == "102"
    complete = client.post(emu.imageban_url, headers=headers, content=body + b"\r\n--xyz--\r\n").json()
    assert complete["data"]["img_name"] == "a.png"


def test_larger_than_10_mib_is_101(emu: Emulator, client: httpx.Client) -> None:
    image = png(1, 1, extra_bytes=MIB_10 - len(png(1, 1)) - 19)
    assert len(image) == MIB_10 + 1
    assert error_code(upload(client, emu, files={"image": ("big.png", image)})) == "101"


@pytest.mark.parametrize(
    "content",
    [b"plain text", b"BM\x36\x00\x00\x00", b"GIF88a" + bytes(20), png(3, 3)[1:], b"\xff\xd8"],
    ids=["text", "bmp", "bad-gif-version", "png-without-first-byte", "jpeg-soi-only"],
)
def test_not_jpeg_png_or_gif_by_magic_bytes_is_103(
    emu: Emulator, client: httpx.Client, content: bytes
) -> None:
    assert error_code(upload(client, emu, files={"image": ("a.png", content)})) == "103"


def test_url_errors_106_107_and_103(emu: Emulator, client: httpx.Client) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/a.png"
    page = upload(client, emu, files={"image": ("a.png", png(2, 2))})["data"]["short_link"]
    cases = {
        "ftp://example.com/a.png": "106",
        "not a url": "106",
        "http://": "106",
        dead: "107",
        emu.url + "/out/2020/01/01/missing.png": "107",
        page: "103",  # an HTML page is not an image
    }
    for url, code in cases.items():
        assert error_code(upload(client, emu, files={"url": (None, url)})) == code, url


def test_transient_fault_is_104_and_stores_nothing(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(transient_rate=1.0)
    for _ in range(3):
        assert error_code(upload(client, emu, files={"image": ("a.png", png(2, 2))})) == "104"
    assert emu.uploads() == []
    emu.faults.transient_rate = 0.0  # fields may also be assigned directly
    assert upload(client, emu, files={"image": ("a.png", png(2, 2))})["success"] is True


def test_daily_quota_per_key_108_109_resets_at_moscow_midnight(client: httpx.Client) -> None:
    clock = Clock(datetime(2025, 3, 1, 23, 59, 0, tzinfo=MOSCOW))
    emulator = Emulator(secret_keys=("k1", "k2"), clock=clock, guest_quota=1, account_quota=2)
    with emulator as emu:

        def send(headers: dict[str, str]) -> dict[str, Any]:
            return upload(client, emu, headers, files={"image": ("a.png", png(2, 2))})

        assert [send({"Authorization": "Bearer k1"}).get("success") for _ in range(2)] == [True, True]
        assert error_code(send({"Authorization": "Bearer k1"})) == "109"
        assert send({"Authorization": "Bearer k2"})["success"] is True  # per key
        assert send(GUEST)["success"] is True
        assert error_code(send(GUEST)) == "108"
        emu.set_faults(imageban_quota=5)  # the fault overrides both defaults
        assert send(GUEST)["success"] is True
        emu.set_faults(imageban_quota=None)
        clock.set(datetime(2025, 3, 1, 23, 59, 59, tzinfo=MOSCOW))
        assert error_code(send({"Authorization": "Bearer k1"})) == "109"
        clock.set(datetime(2025, 3, 2, 0, 0, 1, tzinfo=MOSCOW))
        answer = send({"Authorization": "Bearer k1"})
        assert answer["data"]["date"] == "2025.03.02" and "/out/2025/03/02/" in answer["data"]["link"]


# --- Baidu --------------------------------------------------------------------------------------


def item(image_id: str = "abc1", **fields: Any) -> dict[str, Any]:
    """A valid pushPic item; `fields` override or add (None removes)."""
    base = {
        "id": image_id,
        "title": "a picture of a cat",
        "objurl": f"http://img.example/{image_id}.png",
        "fromurl": f"http://img.example/i/{image_id}",
        "edit_time": 1488892004,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def baidu(
    client: httpx.Client, emu: Emulator, endpoint: str, items: Any, *, raw_list: bool = False, **fields: Any
) -> dict[str, Any]:
    """One call with the demo credentials; `items` is JSON-encoded into a string unless `raw_list`."""
    field = "image_list" if endpoint == "pushPic" else "delete_list"
    body = {"app_id": "demo-app", "app_token": "demo-token", field: items if raw_list else json.dumps(items)}
    body.update(fields)
    response = client.post(
        f"{emu.baidu_url}/{endpoint}", json={k: v for k, v in body.items() if v is not None}
    )
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def errno(answer: dict[str, Any]) -> int:
    assert set(answer) == {"errno", "errmsg", "data"} and answer["data"] is None
    assert isinstance(answer["errno"], int)
    return answer["errno"]


def test_push_stores_items_and_answers_errno_0(emu: Emulator, client: httpx.Client) -> None:
    items = [item("a1"), item("b2", tags="x#y", copyright=1, extra={"modify": "0", "note": 1}, unknown="ok")]
    assert baidu(client, emu, "pushPic", items) == {"errno": 0, "errmsg": "", "data": None}
    assert emu.baidu_index() == {"a1": items[0], "b2": items[1]}
    [call] = emu.baidu_calls()
    assert (call.endpoint, call.items, call.errno) == ("pushPic", items, 0)
    assert emu.requests()[-1].auth == "app_token" and emu.requests()[-1].code == "0"


def test_push_accepts_form_encoded_and_json_with_a_charset(emu: Emulator, client: httpx.Client) -> None:
    fields = {"app_id": "demo-app", "app_token": "demo-token", "image_list": json.dumps([item("f1")])}
    assert errno(client.post(f"{emu.baidu_url}/pushPic", data=fields).json()) == 0
    fields["image_list"] = json.dumps([item("j1", title="九个汉字的图片标题呀")], ensure_ascii=False)
    response = client.post(
        f"{emu.baidu_url}/pushPic",
        content=json.dumps(fields, ensure_ascii=False).encode(),
        headers={"Content-Type": "application/json;charset=utf-8"},
    )
    assert errno(response.json()) == 0
    assert set(emu.baidu_index()) == {"f1", "j1"}


def test_image_list_as_a_real_json_array_is_errno_2(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [item()], raw_list=True)) == 2
    assert emu.baidu_index() == {} and emu.baidu_calls()[0].items == []


@pytest.mark.parametrize(
    "bad",
    [
        item(id=None),
        item(id=""),
        item(id="test_id"),
        item(id="ид1"),
        item(id=12),
        item(title="12345678"),
        item(title=None),
        item(title=123456789),
        item(objurl="ftp://img.example/a.png"),
        item(objurl="http://img.example/a b.png"),
        item(objurl="http://img.example/猫.png"),
        item(fromurl="https://img.example/\tpage"),
        item(fromurl=None),
        item(edit_time="1488892004"),
        item(edit_time=True),
        item(edit_time=1.5),
        item(edit_time=None),
        item(tags=["a", "b"]),
        item(copyright=True),
        item(copyright="1"),
        item(extra={"modify": 1}),
        item(extra={"modify": "2"}),
        item(extra="modify"),
        "not an object",
    ],
)
def test_any_invalid_item_rejects_the_whole_call_with_errno_2(
    emu: Emulator, client: httpx.Client, bad: Any
) -> None:
    answer = baidu(client, emu, "pushPic", [item("good1"), bad])
    assert errno(answer) == 2 and answer["errmsg"]
    assert emu.baidu_index() == {}


def test_push_list_limits_and_required_fields(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [])) == 301001
    assert errno(baidu(client, emu, "pushPic", [item(f"n{n}") for n in range(21)])) == 2
    assert errno(baidu(client, emu, "pushPic", "not json", raw_list=True)) == 2
    assert errno(baidu(client, emu, "pushPic", json.dumps({"id": "x"}), raw_list=True)) == 2
    assert errno(baidu(client, emu, "pushPic", None, raw_list=True)) == 2
    assert errno(baidu(client, emu, "pushPic", [item()], app_id=None)) == 2
    assert errno(baidu(client, emu, "pushPic", [item()], app_token=None)) == 2
    assert emu.baidu_index() == {}
    assert errno(baidu(client, emu, "pushPic", [item(f"n{n}") for n in range(20)])) == 0
    assert len(emu.baidu_index()) == 20


def test_unknown_app_and_wrong_token(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [item()], app_id="other")) == 60000009
    assert errno(baidu(client, emu, "pushPic", [item()], app_token="wrong")) == 60001001
    assert errno(baidu(client, emu, "delPic", [{"type": "id", "key": "x"}], app_token="wrong")) == 60001001
    garbage = client.post(
        f"{emu.baidu_url}/pushPic", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert errno(garbage.json()) == 2
    assert emu.baidu_index() == {}


def test_duplicate_is_301003_and_the_others_are_stored(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [item("a1"), item("b2")])) == 0
    assert errno(baidu(client, emu, "pushPic", [item("a1", title="a changed title"), item("c3")])) == 301003
    index = emu.baidu_index()
    assert set(index) == {"a1", "b2", "c3"} and index["a1"]["title"] == "a picture of a cat"


def test_modify_1_replaces_a_stored_item(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [item("a1")])) == 0
    changed = item("a1", title="a changed title", extra={"modify": "1"})
    assert errno(baidu(client, emu, "pushPic", [changed])) == 0
    assert emu.baidu_index()["a1"] == changed


def test_delete_by_id_and_objurl_and_301004_for_a_missing_key(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [item("a1"), item("b2"), item("c3")])) == 0
    deletes = [{"type": "id", "key": "a1"}, {"type": "objurl", "key": item("b2")["objurl"]}]
    assert errno(baidu(client, emu, "delPic", deletes)) == 0
    assert set(emu.baidu_index()) == {"c3"}
    assert (
        errno(baidu(client, emu, "delPic", [{"type": "id", "key": "c3"}, {"type": "id", "key": "zz"}]))
        == 301004
    )
    assert emu.baidu_index() == {}
    assert emu.baidu_calls()[-1].items == [{"type": "id", "key": "c3"}, {"type": "id", "key": "zz"}]


@pytest.mark.parametrize(
    ("deletes", "raw", "expected"),
    [
        ([], False, 301001),
        ([{"type": "id", "key": f"k{n}"} for n in range(11)], False, 2),
        ([{"type": "url", "key": "a1"}], False, 2),
        ([{"type": "id", "key": ""}], False, 2),
        ([{"type": "id"}], False, 2),
        (["a1"], False, 2),
        ([{"type": "id", "key": "a1"}], True, 2),
    ],
    ids=["empty", "eleven", "bad-type", "empty-key", "no-key", "not-object", "real-array"],
)
def test_delete_list_validation(
    emu: Emulator, client: httpx.Client, deletes: list[Any], raw: bool, expected: int
) -> None:
    assert errno(baidu(client, emu, "pushPic", [item("a1")])) == 0
    assert errno(baidu(client, emu, "delPic", deletes, raw_list=raw)) == expected
    assert set(emu.baidu_index()) == {"a1"}


def test_ten_deletes_are_allowed(emu: Emulator, client: httpx.Client) -> None:
    assert errno(baidu(client, emu, "pushPic", [item(f"k{n}") for n in range(10)])) == 0
    assert errno(baidu(client, emu, "delPic", [{"type": "id", "key": f"k{n}"} for n in range(10)])) == 0
    assert emu.baidu_index() == {}


def test_baidu_quota_301002_stores_nothing_and_resets_at_shanghai_midnight(client: httpx.Client) -> None:
    clock = Clock(datetime(2025, 3, 1, 23, 59, 0, tzinfo=SHANGHAI))
    with Emulator(clock=clock, faults=Faults(baidu_quota=3)) as emu:
        assert errno(baidu(client, emu, "pushPic", [item("a1"), item("a2")])) == 0
        assert errno(baidu(client, emu, "pushPic", [item("b1"), item("b2")])) == 301002
        assert set(emu.baidu_index()) == {"a1", "a2"}
        assert errno(baidu(client, emu, "pushPic", [item("c1")])) == 0
        # 16:00 UTC is already the next day in Shanghai (and still the same day in UTC)
        clock.set(datetime(2025, 3, 1, 16, 0, 1, tzinfo=UTC))
        assert errno(baidu(client, emu, "pushPic", [item("d1"), item("d2"), item("d3")])) == 0
        assert errno(baidu(client, emu, "pushPic", [item("e1")])) == 301002
        assert len(emu.baidu_index()) == 6


def test_baidu_transient_fault_answers_a_transient_errno_and_stores_nothing(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_faults(transient_rate=1.0)
    for _ in range(5):
        assert errno(baidu(client, emu, "pushPic", [item()])) in (10003, 10005, 60000020)
    assert emu.baidu_index() == {}


# --- Faults, admin endpoints, HTTP plumbing ---------------------------------------------------


def test_drop_closes_the_connection_without_an_answer(emu: Emulator, client: httpx.Client) -> None:
    link = upload(client, emu, files={"image": ("a.png", png(2, 2))})["data"]["link"]
    emu.set_faults(drop_rate=1.0)
    for _ in range(3):
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(emu.imageban_url, headers=ACCOUNT, files={"image": ("a.png", png(2, 2))})
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(f"{emu.baidu_url}/pushPic", json={})
    assert [r.fault for r in emu.requests()[1:]] == ["drop"] * 6
    assert client.get(link).status_code == 200  # never applied to links
    assert client.get(emu.url + "/_emulator/state").status_code == 200  # nor to admin endpoints
    assert len(emu.uploads()) == 1 and emu.baidu_calls() == []


def test_http_errors_are_5xx_without_json_or_429_with_retry_after(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_faults(http_error_rate=1.0)
    statuses = set()
    for _ in range(12):
        response = client.post(emu.imageban_url, headers=ACCOUNT, files={"image": ("a.png", png(2, 2))})
        statuses.add(response.status_code)
        assert "json" not in response.headers["content-type"]
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    emu.set_faults(retry_after=2)
    response = client.post(f"{emu.baidu_url}/pushPic", json={})
    assert (response.status_code, response.headers["retry-after"]) == (429, "2")
    emu.set_faults(retry_after=0.25)
    assert client.post(emu.imageban_url).headers["retry-after"] == "0.25"
    assert emu.uploads() == [] and emu.baidu_calls() == []
    assert {(r.fault, r.code) for r in emu.requests()} == {("http_error", "")}


def test_latency_delays_api_answers_only(emu: Emulator, client: httpx.Client) -> None:
    link = upload(client, emu, files={"image": ("a.png", png(2, 2))})["data"]["link"]
    emu.set_faults(latency=0.3)
    started = time.monotonic()
    upload(client, emu, files={"image": ("a.png", png(2, 2))})
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    client.get(link)
    assert time.monotonic() - started < 0.3


def test_fault_rates_are_seeded_and_reproducible(emu: Emulator, client: httpx.Client) -> None:
    def outcomes() -> list[int]:
        return [client.post(f"{emu.baidu_url}/pushPic", json={}).status_code for _ in range(24)]

    emu.set_faults(http_error_rate=0.5, seed=7)
    first = outcomes()
    assert 200 in first and set(first) - {200}
    emu.set_faults(seed=8)
    emu.set_faults(seed=7)
    assert outcomes() == first


def test_set_faults_validates_before_changing_anything(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown"):
        emu.set_faults(drop=1.0)
    with pytest.raises(ValueError, match="drop_rate"):
        emu.set_faults(latency=1.0, drop_rate=2)
    with pytest.raises(ValueError, match="baidu_quota"):
        Faults(baidu_quota=-1)
    assert emu.faults == Faults()


def test_admin_endpoints_steer_and_observe_from_another_process(emu: Emulator, client: httpx.Client) -> None:
    admin = emu.url + "/_emulator"
    assert client.post(admin + "/faults", json={"baidu_quota": 5}).json()["baidu_quota"] == 5
    merged = client.post(admin + "/faults", json={"data_as_list": True}).json()
    assert (merged["baidu_quota"], merged["data_as_list"]) == (5, True)
    assert emu.faults.baidu_quota == 5
    bad = client.post(admin + "/faults", json={"drop_rate": "always"})
    assert bad.status_code == 400 and "drop_rate" in bad.json()["error"]
    assert client.post(admin + "/faults", content=b"[1]").status_code == 400

    upload(client, emu, files={"image": ("a.png", png(2, 2))})
    baidu(client, emu, "pushPic", [item("a1")])
    response = client.get(admin + "/state")
    state = response.json()
    assert state["uploads"][0]["name"] == "a.png" and state["uploads"][0]["auth"] == "account"
    assert state["baidu_calls"][0]["items"][0]["id"] == "a1" and state["baidu_calls"][0]["errno"] == 0
    assert set(state["baidu_index"]) == {"a1"}
    assert [r["code"] for r in state["requests"]] == ["200", "0"]
    assert "demo-secret" not in response.text and "demo-token" not in response.text

    assert client.post(admin + "/reset").status_code == 200
    state = client.get(admin + "/state").json()
    assert (state["uploads"], state["baidu_calls"], state["baidu_index"], state["requests"]) == (
        [],
        [],
        {},
        [],
    )
    assert state["faults"] == json.loads(json.dumps(Faults().__dict__))


def test_reset_clears_records_indexes_quota_counters_and_faults(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(baidu_quota=1)
    assert errno(baidu(client, emu, "pushPic", [item("a1")])) == 0
    upload(client, emu, files={"image": ("a.png", png(2, 2))})
    emu.reset()
    assert (emu.uploads(), emu.baidu_calls(), emu.baidu_index(), emu.requests()) == ([], [], {}, [])
    assert emu.faults == Faults()
    emu.set_faults(baidu_quota=1)
    assert errno(baidu(client, emu, "pushPic", [item("a1")])) == 0  # counter and index were cleared


def test_keep_alive_serves_several_requests_on_one_connection(emu: Emulator) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", int(emu.url.rsplit(":", 1)[1]), timeout=5)
    try:
        sockets = []
        for _ in range(3):
            connection.request("POST", "/v1", body=b"", headers={"Authorization": "Bearer demo-secret"})
            response = connection.getresponse()
            assert json.loads(response.read())["error"]["code"] == "102"
            assert response.getheader("Content-Length") is not None
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets[0] is sockets[1] is sockets[2]
    finally:
        connection.close()


def test_chunked_request_bodies_are_read(emu: Emulator, client: httpx.Client) -> None:
    body = json.dumps(
        {"app_id": "demo-app", "app_token": "demo-token", "image_list": json.dumps([item("c1")])}
    )
    chunks = iter([body[:10].encode(), body[10:].encode()])
    response = client.post(
        f"{emu.baidu_url}/pushPic", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert errno(response.json()) == 0 and set(emu.baidu_index()) == {"c1"}


def test_stop_cuts_keep_alive_connections(client: httpx.Client) -> None:
    emu = Emulator().start()
    assert error_code(upload(client, emu, {})) == "110"
    emu.stop()
    with pytest.raises(httpx.TransportError):
        client.post(emu.imageban_url)


def test_serve_forever_prints_urls_and_demo_credentials_and_stops_on_ctrl_c(client: httpx.Client) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "from watchd.emulator import serve_forever; serve_forever(0)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert url, first
        lines = [process.stdout.readline() for _ in range(18)]
        text = "".join(lines)
        assert "secret_key: demo-secret" in text and "app_token: demo-token" in text
        assert f"api_url: {url.group()}/v1" in text
        answer = client.post(url.group() + "/v1", headers=GUEST, files={"image": ("a.gif", gif(2, 2))}).json()
        assert answer["success"] is True
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


# --- the image helper -----------------------------------------------------------------------------


def test_imagegen_png_is_complete_with_real_crcs() -> None:
    data = png(5, 3, extra_bytes=100)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    offset, kinds = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        assert struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        if kind == b"IDAT":
            assert len(zlib.decompress(body)) == 3 * (1 + 5)
        kinds.append(kind)
        offset += 12 + length
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]


def test_imagegen_jpeg_and_gif_are_complete_and_padding_stays_inside() -> None:
    for make, end in ((jpeg, b"\xff\xd9"), (gif, b"\x3b")):
        plain, padded = make(10, 6), make(10, 6, extra_bytes=70_000)
        assert plain.endswith(end) and padded.endswith(end)
        assert len(padded) >= len(plain) + 70_000
        assert make(10, 6) == plain and make(11, 6) != plain
    assert jpeg(4, 4).startswith(b"\xff\xd8\xff\xdb") and b"\xff\xc0\x00\x0b\x08\x00\x04\x00\x04" in jpeg(
        4, 4
    )
    assert gif(7, 5).startswith(b"GIF89a\x07\x00\x05\x00")
