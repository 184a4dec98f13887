"""The ImageBan client against a mock transport: requests it builds, answers it maps, errors it raises."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.imagegen import gif, jpeg, png
from watchd.emulator import Emulator
from watchd.errors import (
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
    TransientError,
)
from watchd.hosts.base import Uploaded, UploadRequest
from watchd.hosts.imageban import ImageBanHost
from watchd.http import HttpClient, HttpPoster
from watchd.retry import call_with_retry

API = "https://api.example/v1"
SECRET = "s3cr3t-KEY-value"
CLIENT_ID = "cl13nt-ID-value"

SUCCESS = {
    "data": {
        "id": "JTXBeN4",
        "date": "2022.07.13",
        "server": "i5.imageban.ru",
        "views": "0",
        "size": "355593",
        "resolution": "2000x3234",
        "link": "https://i5.imageban.ru/out/2022/07/13/8b23.jpeg",
        "short_link": "http://ibn.im/i/JTXBeN4",
    },
    "success": True,
    "status": 200,
}


class Recorder:
    """A mock transport answering each request with `answer(request)`, keeping the requests."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.answer(request)


def answering(status: int = 200, body: Any = SUCCESS, headers: dict[str, str] | None = None) -> Recorder:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Recorder(lambda _: httpx.Response(status, content=content, headers=headers))


def make_host(recorder: Recorder, **auth: str) -> ImageBanHost:
    client = httpx.Client(transport=httpx.MockTransport(recorder))
    return ImageBanHost("me", api_url=API, client=client, **(auth or {"secret_key": SECRET}))


def parts(request: httpx.Request) -> dict[str, tuple[str | None, str, bytes]]:
    """The multipart fields of `request`: name -> (filename, content type, payload)."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_filename(),
            part.get_content_type(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(png(20, 10))
    return path


# -- requests -----------------------------------------------------------------------------


def test_account_upload_request(image: Path) -> None:
    recorder = answering()
    host = make_host(recorder, secret_key=SECRET)
    host.upload(UploadRequest(image, "cat.png", album="srXiv43"))
    (request,) = recorder.requests
    assert (request.method, str(request.url)) == ("POST", API)
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    fields = parts(request)
    assert set(fields) == {"image", "name", "album"}
    assert fields["image"] == ("cat.png", "image/png", image.read_bytes())
    assert fields["name"][2] == b"cat.png"
    assert fields["album"][2] == b"srXiv43"
    assert host.auth_scheme == "account"


def test_guest_upload_uses_token_and_drops_album(image: Path) -> None:
    recorder = answering()
    host = make_host(recorder, client_id=CLIENT_ID)
    host.upload(UploadRequest(image, "cat.png", album="srXiv43"))
    (request,) = recorder.requests
    assert request.headers["Authorization"] == f"TOKEN {CLIENT_ID}"
    assert set(parts(request)) == {"image", "name"}
    assert host.auth_scheme == "guest"


def test_secret_key_wins_and_is_never_a_form_field(image: Path) -> None:
    recorder = answering()
    host = make_host(recorder, secret_key=SECRET, client_id=CLIENT_ID)
    host.upload(UploadRequest(image, "cat.png"))
    (request,) = recorder.requests
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET.encode() not in request.content
    assert b"secret_key" not in request.content


def test_no_credentials_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs secret_key or client_id"):
        ImageBanHost("me", api_url=API, client=httpx.Client())


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("котик.jpg", "image.jpg"),
        ("mislabelled.png", "mislabelled.jpg"),  # the extension follows the content
        ("猫 照片.jpeg", "image.jpg"),
        ("holiday photo (1).JPG", "holiday_photo_1.jpg"),
        ("no-extension", "no-extension.jpg"),
    ],
)
def test_multipart_filename_is_ascii_and_real_name_is_sent(tmp_path: Path, name: str, filename: str) -> None:
    path = tmp_path / name
    path.write_bytes(jpeg(8, 8))
    recorder = answering()
    make_host(recorder).upload(UploadRequest(path, name))
    fields = parts(recorder.requests[0])
    assert fields["image"][:2] == (filename, "image/jpeg")
    assert fields["name"][2] == name.encode()


def test_file_is_streamed_not_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_sizes: list[int]
) -> None:
    path = tmp_path / "big.gif"
    path.write_bytes(gif(8, 8, extra_bytes=3 * 1024 * 1024))
    recorder = answering()
    make_host(recorder).upload(UploadRequest(path, "big.gif"))
    assert max(read_sizes) <= 1024 * 1024
    assert sum(read_sizes) > 3 * 1024 * 1024
    monkeypatch.undo()
    assert parts(recorder.requests[0])["image"][2] == path.read_bytes()


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"just text, not an image", "looks like text"), (b"", "is empty"), (png(4, 4)[:-3], "truncated PNG")],
)
def test_bad_file_refused_before_any_request(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    recorder = answering()
    with pytest.raises(PermanentFileError, match=reason) as caught:
        make_host(recorder).upload(UploadRequest(path, "x.png"))
    assert caught.value.service == "imageban:me"
    assert recorder.requests == []


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    recorder = answering()
    with pytest.raises(FileNotFoundError):
        make_host(recorder).upload(UploadRequest(tmp_path / "gone.png", "gone.png"))
    assert recorder.requests == []


# -- successful answers ---------------------------------------------------------------------


def test_success_object(image: Path) -> None:
    uploaded = make_host(answering()).upload(UploadRequest(image, "cat.png"))
    assert uploaded == Uploaded(
        remote_id="JTXBeN4",
        link="https://i5.imageban.ru/out/2022/07/13/8b23.jpeg",
        short_link="http://ibn.im/i/JTXBeN4",
        size=355593,
        resolution="2000x3234",
        delete_hash=None,
    )


def test_success_list_numbers_and_delete_hash(image: Path) -> None:
    data = {**SUCCESS["data"], "size": 1234, "id": 987, "delete_hash": "abc123"}
    uploaded = make_host(answering(body={"data": [data], "success": True})).upload(UploadRequest(image, "c"))
    assert (uploaded.remote_id, uploaded.size, uploaded.delete_hash) == ("987", 1234, "abc123")


def test_size_and_resolution_fall_back_to_the_local_file(image: Path) -> None:
    data = {key: SUCCESS["data"][key] for key in ("id", "link", "short_link")}
    recorder = answering(body={"data": {**data, "resolution": "big"}})
    uploaded = make_host(recorder).upload(UploadRequest(image, "c"))
    assert (uploaded.size, uploaded.resolution) == (image.stat().st_size, "20x10")


# -- error mapping ----------------------------------------------------------------------------

API_CODES: list[tuple[str, type[ServiceError]]] = [
    ("100", ConfigurationError),
    ("101", PermanentFileError),
    ("102", PermanentFileError),
    ("103", PermanentFileError),
    ("104", TransientError),
    ("105", ConfigurationError),
    ("106", PermanentFileError),
    ("107", TransientError),
    ("108", QuotaError),
    ("109", QuotaError),
    ("110", ConfigurationError),
]


@pytest.mark.parametrize(("code", "cls"), API_CODES)
@pytest.mark.parametrize("as_int", [False, True])
@pytest.mark.parametrize("status", [200, 400])
def test_api_error_codes(image: Path, code: str, cls: type[ServiceError], as_int: bool, status: int) -> None:
    body = {"error": {"code": int(code) if as_int else code, "message": "whatever"}}
    with pytest.raises(ServiceError) as caught:
        make_host(answering(status, body)).upload(UploadRequest(image, "cat.png"))
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.service) == (code, "imageban:me")


def test_api_error_messages_say_what_to_do(image: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_host(answering(body={"error": {"code": "105", "message": "Invalid secret key"}})).upload(
            UploadRequest(image, "c")
        )
    assert str(caught.value) == (
        "imageban:me: invalid secret key: "
        "check secret_key (or secret_key_file) of host 'me' in the config (code 105)"
    )


@pytest.mark.parametrize(
    ("auth", "answer", "advice"),
    [
        ({"secret_key": SECRET}, {"error": {"code": "100"}}, "check secret_key (or secret_key_file)"),
        ({"client_id": "guest-id"}, {"error": {"code": "105"}}, "check client_id (or client_id_file)"),
        ({"client_id": "guest-id"}, None, "check client_id (or client_id_file)"),
    ],
)
def test_credential_advice_names_the_credential_the_host_sends(
    image: Path, auth: dict[str, str], answer: dict[str, object] | None, advice: str
) -> None:
    """An account host told "invalid client id" has no client_id to check: its secret key was refused."""
    with pytest.raises(ConfigurationError) as caught:
        make_host(answering(401 if answer is None else 200, answer), **auth).upload(UploadRequest(image, "c"))
    assert f"{advice} of host 'me' in the config" in str(caught.value)


def test_unknown_api_code_is_transient_with_scrubbed_message(image: Path) -> None:
    body = {"error": {"code": "199", "message": f"odd failure for key {SECRET}"}}
    with pytest.raises(TransientError) as caught:
        make_host(answering(body=body)).upload(UploadRequest(image, "c"))
    assert caught.value.code == "199"
    assert "odd failure for key ***" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_429_honours_retry_after(image: Path) -> None:
    with pytest.raises(TransientError) as caught:
        make_host(answering(429, b"slow down", {"Retry-After": "12"})).upload(UploadRequest(image, "c"))
    assert (caught.value.code, caught.value.retry_after) == ("429", 12.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(image: Path, status: int) -> None:
    with pytest.raises(TransientError) as caught:
        make_host(answering(status, b"<html>Bad Gateway</html>")).upload(UploadRequest(image, "c"))
    assert (caught.value.code, caught.value.retry_after) == (str(status), None)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, ConfigurationError),
        (403, ConfigurationError),
        (404, ConfigurationError),
        (413, PermanentFileError),
        (400, TransientError),
    ],
)
def test_other_http_statuses(image: Path, status: int, cls: type[ServiceError]) -> None:
    with pytest.raises(cls) as caught:
        make_host(answering(status, b"nope")).upload(UploadRequest(image, "c"))
    assert caught.value.code == str(status)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        json.dumps({"success": True}).encode(),
        json.dumps({"data": []}).encode(),
        json.dumps({"data": {"id": "x", "link": "https://a/b.png"}}).encode(),
        json.dumps({"data": {"id": "", "link": "https://a/b.png", "short_link": "http://s/x"}}).encode(),
        json.dumps({"data": {"id": "x", "link": "ftp://a/b.png", "short_link": "http://s/x"}}).encode(),
        json.dumps({"error": "no code"}).encode(),
        b"[" * 100_000,  # json raises RecursionError, not ValueError
    ],
)
def test_malformed_answers_are_transient_and_not_repeated_at_once(image: Path, body: bytes) -> None:
    """A success status with a garbled body may come after the image was stored."""
    with pytest.raises(TransientError, match="malformed answer") as caught:
        make_host(answering(200, body)).upload(UploadRequest(image, "c"))
    assert caught.value.unanswered


# -- transport failures over real sockets ------------------------------------------------------


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://proxyuser:proxypass@127.0.0.1:{port}/v1"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_connection_refused_is_transient(image: Path, refused_url: str, http: HttpPoster) -> None:
    host = ImageBanHost("me", api_url=refused_url, client=http, secret_key=SECRET)
    with pytest.raises(TransientError, match="cannot reach") as caught:
        host.upload(UploadRequest(image, "c"))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.reached is False  # nothing was sent: no upload counted
    assert SECRET not in str(caught.value)
    assert "proxypass" not in str(caught.value)
    assert "http://127.0.0.1:" in str(caught.value)


def test_a_proxy_that_cannot_be_reached_is_named_not_the_api(image: Path, refused_url: str) -> None:
    port = httpx.URL(refused_url).port  # closed: the proxy is down
    client = HttpClient(timeout=5, environ_proxies={"https": f"http://proxyuser:proxypass@127.0.0.1:{port}"})
    host = ImageBanHost("me", api_url="https://api.imageban.invalid/v1", client=client, secret_key=SECRET)
    try:
        with pytest.raises(TransientError) as caught:
            host.upload(UploadRequest(image, "c"))
    finally:
        client.close()
    message = str(caught.value)
    assert f"cannot reach the proxy http://127.0.0.1:{port} (HTTPS_PROXY) on the way to " in message
    assert "https://api.imageban.invalid/v1" in message
    assert "check HTTPS_PROXY and NO_PROXY" in message
    assert "proxyuser" not in message and "proxypass" not in message
    assert caught.value.reached is False  # nothing was sent: no upload counted


def test_a_key_in_the_api_urls_query_stays_out_of_messages(image: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1?key={SECRET}#{CLIENT_ID}"
    client = HttpClient(timeout=5, environ_proxies={})
    host = ImageBanHost("me", api_url=url, client=client, client_id="c")
    try:
        with pytest.raises(TransientError, match="cannot reach") as caught:
            host.upload(UploadRequest(image, "c"))
    finally:
        client.close()
    assert SECRET not in str(caught.value) and CLIENT_ID not in str(caught.value)
    assert f"{url.split('?')[0]}: " in str(caught.value)


@pytest.mark.parametrize("client", [httpx.Client(timeout=30), HttpClient(timeout=30)], ids=type)
def test_timeout_is_the_hosts_own_and_transient(image: Path, silent_url: str, client: HttpPoster) -> None:
    host = ImageBanHost("me", api_url=silent_url, client=client, secret_key=SECRET, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out") as caught:
        host.upload(UploadRequest(image, "c"))
    assert time.monotonic() - started < 5  # the host's 0.3 s, not the client's 30 s
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    assert caught.value.reached is True  # the upload may have been counted
    assert caught.value.unanswered is True  # and stored: it must not be sent again at once


@pytest.mark.parametrize("auth", ["secret_key", "client_id"])
def test_a_key_no_header_can_carry_is_a_configuration_error(image: Path, auth: str) -> None:
    key = "s3cr3t-clé-value"
    with pytest.raises(ConfigurationError, match="cannot be sent in an HTTP header") as caught:
        make_host(answering(), **{auth: key}).upload(UploadRequest(image, "c"))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert key not in str(caught.value) and key not in repr(caught.value)


# -- against the emulator, over loopback -------------------------------------------------------


@pytest.fixture(params=["httpx.Client", "HttpClient"])
def http(request: pytest.FixtureRequest) -> Iterator[HttpPoster]:
    """Both clients the hosts are given: httpx's, and the daemon's lean one."""
    client = httpx.Client(timeout=10) if request.param == "httpx.Client" else HttpClient(timeout=10)
    yield client
    client.close()


def emulated(emulator: Emulator, http: HttpPoster, **auth: str) -> ImageBanHost:
    return ImageBanHost("emu", api_url=emulator.imageban_url, client=http, **auth)


def test_emulator_sees_real_name_ascii_filename_and_album(
    emulator: Emulator, http: HttpPoster, tmp_path: Path
) -> None:
    path = tmp_path / "котик.jpg"
    path.write_bytes(jpeg(12, 9))
    account = emulated(emulator, http, secret_key="demo-secret")
    guest = emulated(emulator, http, client_id="demo-client")
    first = account.upload(UploadRequest(path, "котик.jpg", album="srXiv43"))
    guest.upload(UploadRequest(path, "котик.jpg", album="srXiv43"))
    records = emulator.uploads()
    assert [(r.auth, r.name, r.filename, r.album, r.source) for r in records] == [
        ("account", "котик.jpg", "image.jpg", "srXiv43", "file"),
        ("guest", "котик.jpg", "image.jpg", None, "file"),
    ]
    assert (records[0].remote_id, records[0].link, records[0].size) == (
        first.remote_id,
        first.link,
        first.size,
    )
    assert httpx.get(first.link).content == path.read_bytes()


def test_emulator_data_as_list(emulator: Emulator, http: HttpPoster, image: Path) -> None:
    emulator.set_faults(data_as_list=True)
    uploaded = emulated(emulator, http, secret_key="demo-secret").upload(UploadRequest(image, "cat.png"))
    assert (uploaded.resolution, uploaded.size) == ("20x10", image.stat().st_size)


@pytest.mark.parametrize(
    ("auth", "code"), [({"secret_key": "demo-secret"}, "109"), ({"client_id": "demo-client"}, "108")]
)
def test_emulator_quota(
    emulator: Emulator, http: HttpPoster, image: Path, auth: dict[str, str], code: str
) -> None:
    emulator.set_faults(imageban_quota=0)
    with pytest.raises(QuotaError) as caught:
        emulated(emulator, http, **auth).upload(UploadRequest(image, "cat.png"))
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("faults", "code", "retry_after", "unanswered"),
    [
        ({"http_error_rate": 1.0, "retry_after": 0.2}, "429", 0.2, False),  # turned away: no quota used
        ({"transient_rate": 1.0}, "104", None, False),
        ({"drop_rate": 1.0}, "", None, True),  # read whole, then hung up on: may have been stored
    ],
)
def test_emulator_faults_are_transient(
    emulator: Emulator,
    http: HttpPoster,
    image: Path,
    faults: dict[str, Any],
    code: str,
    retry_after: float | None,
    unanswered: bool,
) -> None:
    emulator.set_faults(**faults)
    with pytest.raises(TransientError) as caught:
        emulated(emulator, http, secret_key="demo-secret").upload(UploadRequest(image, "cat.png"))
    assert (caught.value.code, caught.value.retry_after) == (code, retry_after)
    assert caught.value.unanswered is unanswered
    assert caught.value.may_have_used_quota is unanswered  # an answer, even 429, says nothing was stored


def test_emulator_5xx_then_recovery_through_the_retry_wrapper(
    emulator: Emulator, http: HttpPoster, image: Path
) -> None:
    emulator.set_faults(http_error_rate=1.0)
    host = emulated(emulator, http, client_id="demo-client")

    def heal(_: float) -> None:
        emulator.set_faults(http_error_rate=0.0)

    uploaded = call_with_retry(lambda: host.upload(UploadRequest(image, "cat.png")), sleep=heal)
    assert uploaded.remote_id == emulator.uploads()[0].remote_id
