"""`HttpClient` over `PooledTransport`: real loopback servers (the emulator, small stdlib ones
and raw sockets writing exact bytes), real sockets."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.imagegen import png
from watchd import transport as transport_module
from watchd.emulator import DEMO_SECRET_KEY, Emulator
from watchd.http import HttpClient, ProxyUnreachable, network_error
from watchd.transport import IDEMPOTENT, JOIN_BODY_BELOW, PIECE, PooledTransport


class Recorder(BaseHTTPRequestHandler):
    """Answers every POST with JSON describing what it received; keeps connections alive."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]
    gzip_answers = False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        record = {
            "target": self.path,
            "port": self.client_address[1],
            "length": len(body),
            "headers": dict(self.headers),
        }
        self.seen.append(record)
        answer = json.dumps(record).encode()
        self.send_response(200)
        if self.gzip_answers:
            answer = gzip.compress(answer)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(handler: type[Recorder]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (handler,), {"seen": seen}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield from serve(Recorder)


@pytest.fixture
def client() -> Iterator[HttpClient]:
    http = HttpClient(timeout=5, environ_proxies={})
    yield http
    http.close()


def test_uploads_to_the_emulator(client: HttpClient, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(png(16, 16))
    with Emulator() as emulator, image.open("rb") as body:
        response = client.post(
            emulator.imageban_url,
            headers={"Authorization": f"Bearer {DEMO_SECRET_KEY}"},
            data={"name": "cat.png"},
            files={"image": ("cat.png", body, "image/png")},
        )
        assert response.status_code == 200
        assert response.json()["data"]["link"].startswith("http")
        assert [upload.name for upload in emulator.uploads()] == ["cat.png"]


def test_keeps_the_connection_alive(client: HttpClient, recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder
    for n in range(3):
        assert client.post(f"{url}/v1?n={n}", headers={}, content=b"x").json()["target"] == f"/v1?n={n}"
    assert len({record["port"] for record in seen}) == 1
    assert seen[0]["headers"]["User-Agent"].startswith("watchd/")


class ClosesAfterEachAnswer(Recorder):
    """Keeps nothing alive, yet does not say so (as servers timing out idle connections do)."""

    def do_POST(self) -> None:
        super().do_POST()
        self.close_connection = True


def test_a_connection_the_server_closed_is_not_reused(client: HttpClient) -> None:
    for url, seen in serve(ClosesAfterEachAnswer):
        for _ in range(3):
            assert client.post(url, headers={}, content=b"x").status_code == 200
            time.sleep(0.05)  # the server's close arrives: found before sending, not after
        assert len({record["port"] for record in seen}) == 3


class HangsUpOnTheSecondRequest(Recorder):
    """Answers on a kept-alive connection, then reads the second request whole, counts it as
    carried out and hangs up without an answer (a server that crashed, or lost its answer)."""

    def do_POST(self) -> None:
        if len(self.seen) != 1:
            super().do_POST()
            return
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append({"port": self.client_address[1], "lost": True})
        self.close_connection = True


def test_a_request_the_server_may_have_carried_out_is_sent_again_only_if_idempotent(
    client: HttpClient,
) -> None:
    for url, seen in serve(HangsUpOnTheSecondRequest):  # an upload: stored twice if sent again
        client.post(url, headers={}, content=b"first")
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(url, headers={}, content=b"upload")
        assert len(seen) == 2
    for url, seen in serve(HangsUpOnTheSecondRequest):  # a Baidu call: a second time does no harm
        client.post(url, headers={}, content=b"first")
        answer = client.post(url, headers={}, content=b"push", extensions={IDEMPOTENT: True})
        assert answer.status_code == 200 and len(seen) == 3
        assert seen[1]["port"] == seen[0]["port"] != seen[2]["port"]  # the kept-alive one, then a new one


def test_a_large_body_is_streamed_whole(
    client: HttpClient, recorder: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _seen = recorder
    size = JOIN_BODY_BELOW + 12345
    payload = b"\x89" * size
    answer = client.post(url, headers={}, files={"image": ("big.png", payload, "image/png")}).json()
    assert answer["length"] > size  # the multipart envelope around it


def test_gzip_answers_are_not_asked_for_but_decoded(client: HttpClient) -> None:
    gzipped = type("Gzipped", (Recorder,), {"gzip_answers": True})
    for url, seen in serve(gzipped):
        response = client.post(url, headers={}, content=b"{}")
        assert response.json()["length"] == 2
        assert "content-encoding" not in response.headers  # decoded by the transport, not again by httpx
        assert seen[0]["headers"]["Accept-Encoding"] == "identity"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_refused_is_a_connect_error(client: HttpClient) -> None:
    with pytest.raises(httpx.ConnectError):
        client.post(f"http://127.0.0.1:{unused_port()}/v1", headers={}, content=b"x")


def test_a_silent_server_is_a_read_timeout() -> None:
    client = HttpClient(timeout=0.3, environ_proxies={})
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", headers={}, content=b"x")
    client.close()


def test_a_proxy_from_the_environment_is_used(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    proxy_url, seen = recorder  # the recorder plays the proxy: it sees absolute targets
    client = HttpClient(timeout=5, environ_proxies={"http": proxy_url})
    try:
        client.post("http://imageban.invalid/v1", headers={}, content=b"x")
    finally:
        client.close()
    assert [record["target"] for record in seen] == ["http://imageban.invalid/v1"]


def test_no_proxy_hosts_go_direct(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder
    client = HttpClient(timeout=5, environ_proxies={"http": "http://127.0.0.1:9", "no": "127.0.0.1"})
    try:
        client.post(f"{url}/v1", headers={}, content=b"x")
    finally:
        client.close()
    assert [record["target"] for record in seen] == ["/v1"]


@pytest.mark.parametrize(("scheme", "variable"), [("https", "HTTPS_PROXY"), ("all", "ALL_PROXY")])
def test_a_proxy_that_refuses_connections_is_named_without_its_login(scheme: str, variable: str) -> None:
    port = unused_port()  # closed: the proxy is down
    client = HttpClient(timeout=5, environ_proxies={scheme: f"http://proxyuser:pa55word@127.0.0.1:{port}"})
    try:
        with pytest.raises(ProxyUnreachable) as caught:
            client.post("https://imageban.invalid/v1", headers={}, content=b"x")
    finally:
        client.close()
    assert (caught.value.proxy, caught.value.variable) == (f"http://127.0.0.1:{port}", variable)
    assert isinstance(caught.value, httpx.ConnectError)  # nothing was sent
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def tunnel_to(target_port: int) -> Iterator[str]:
    """A proxy that answers one CONNECT with 200 and then pipes bytes to `target_port`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def serve_one() -> None:
        conn, _ = listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        upstream = socket.create_connection(("127.0.0.1", target_port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(timeout=5)
    listener.close()


def test_a_certificate_refused_through_a_proxy_is_not_the_proxys_fault(
    tls_server: tuple[str, trustme.CA],
) -> None:
    url, _ca = tls_server  # the system's CAs do not know its certificate
    for proxy in tunnel_to(httpx.URL(url).port or 443):
        client = HttpClient(timeout=5, environ_proxies={"https": proxy})
        try:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                client.post(url, headers={}, content=b"x")
        finally:
            client.close()
        assert not isinstance(caught.value, ProxyUnreachable)


def test_the_transport_refuses_other_schemes() -> None:
    transport = PooledTransport()
    with pytest.raises(httpx.UnsupportedProtocol):
        transport.handle_request(httpx.Request("POST", "ftp://127.0.0.1/v1"))


def raw_server(answer: bytes, pace: float = 0.0) -> Iterator[str]:
    """A server that reads one request and writes `answer` verbatim (a byte every `pace` seconds
    if given), then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(
                dict(
                    line.split(b": ", 1)
                    for line in head.split(b"\r\n")[1:]  # type: ignore[misc]
                ).get(b"Content-Length", b"0")
            )
            while len(body) < length:
                body += conn.recv(65536)
            if not pace:
                conn.sendall(answer)
                return
            for byte in answer:
                time.sleep(pace)
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client gave up
                    return

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    thread.join(timeout=5)
    listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n3;x=1\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n',
        b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        b'HTTP/1.0 200 OK\r\n\r\n{"a": 1}',
    ],
    ids=["chunked", "100-continue", "http/1.0 until close"],
)
def test_answers_are_read_however_they_are_delimited(client: HttpClient, answer: bytes) -> None:
    for url in raw_server(answer):
        assert client.post(url, headers={}, content=b"hello").json() == {"a": 1}


@pytest.mark.parametrize(
    "answer",
    [b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"a": 1}', b"SSH-2.0-OpenSSH\r\n", b""],
    ids=["cut short", "not http", "silence"],
)
def test_broken_answers_are_protocol_errors(client: HttpClient, answer: bytes) -> None:
    for url in raw_server(answer):
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(url, headers={}, content=b"hello")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, trustme.CA]]:
    """A Recorder behind TLS with a certificate for 127.0.0.1 from a throwaway CA."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Recorder,), {"seen": []}))
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/v1", ca
    server.shutdown()
    server.server_close()


def test_https_is_verified_and_kept_alive(tls_server: tuple[str, trustme.CA]) -> None:
    url, ca = tls_server
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = HttpClient(PooledTransport(ssl_context=trusting), timeout=5, environ_proxies={})
    try:
        ports = {client.post(url, headers={}, content=b"x").json()["port"] for _ in range(3)}
    finally:
        client.close()
    assert len(ports) == 1


def test_an_untrusted_certificate_is_a_connect_error(tls_server: tuple[str, trustme.CA]) -> None:
    url, _ca = tls_server
    client = HttpClient(timeout=5, environ_proxies={})  # the system's CAs: this one is unknown
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.post(url, headers={}, content=b"x")
    client.close()


def test_an_oversized_answer_is_refused(client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "MAX_BODY", 1000)
    for url in raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000):
        with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
            client.post(url, headers={}, content=b"hello")
    for url in raw_server(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 5000):
        with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
            client.post(url, headers={}, content=b"hello")
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"  # two chunks of 512 bytes: 1,024 > 1,000
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
    for url in raw_server(chunked):
        with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
            client.post(url, headers={}, content=b"hello")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 5000,
    ],
    ids=["content-length", "chunk size"],
)
def test_negative_sizes_are_refused_before_reading_on(
    client: HttpClient, monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    monkeypatch.setattr(transport_module, "MAX_BODY", 1000)  # "-1" read until the end, past any cap
    for url in raw_server(answer):
        with pytest.raises(httpx.RemoteProtocolError, match=r"bad .*-1"):
            client.post(url, headers={}, content=b"hello")


def compressed(encoding: bytes, body: bytes) -> bytes:
    packed = gzip.compress(body) if encoding == b"gzip" else zlib.compress(body)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (encoding, len(packed))
    return head + packed


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
def test_compressed_answers_are_capped_when_decoded(
    client: HttpClient, monkeypatch: pytest.MonkeyPatch, encoding: bytes
) -> None:
    for url in raw_server(compressed(encoding, b'{"a": 1}')):
        response = client.post(url, headers={}, content=b"hello")
        assert response.json() == {"a": 1}
        assert "content-encoding" not in response.headers
    monkeypatch.setattr(transport_module, "MAX_BODY", 1000)
    for url in raw_server(compressed(encoding, b" " * 5000)):  # a few dozen bytes on the wire
        with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
            client.post(url, headers={}, content=b"hello")


def test_other_encodings_are_refused(client: HttpClient) -> None:
    for url in raw_server(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}"):
        with pytest.raises(httpx.RemoteProtocolError, match="unsupported Content-Encoding"):
            client.post(url, headers={}, content=b"hello")


def test_an_answer_trickled_past_the_timeout_is_a_read_timeout() -> None:
    client = HttpClient(timeout=0.5, environ_proxies={})
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}'  # each byte well within 0.5 s
    started = time.monotonic()
    for url in raw_server(answer, pace=0.05):
        with pytest.raises(httpx.ReadTimeout):
            client.post(url, headers={}, content=b"hello")
    assert time.monotonic() - started < 1.5
    client.close()


def test_a_request_can_have_its_own_timeout(client: HttpClient) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                f"http://127.0.0.1:{silent.getsockname()[1]}/v1", headers={}, content=b"x", timeout=0.3
            )
        assert time.monotonic() - started < 2  # not the client's 5 s


@pytest.fixture
def small_send_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's sockets keep a small send buffer, as a slow uplink does."""
    create = socket.create_connection

    def create_small(*args: Any, **kwargs: Any) -> socket.socket:
        sock = create(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIECE)
        return sock

    monkeypatch.setattr(socket, "create_connection", create_small)


def scripted_server(handle: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    """A server with a small receive buffer calling `handle(connection, request head)` once."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            handle(conn, data)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    thread.join(timeout=10)
    listener.close()


def two_megabytes(monkeypatch: pytest.MonkeyPatch, streamed: bool) -> dict[str, Any]:
    """`files=` of a 2 MB image, which the transport keeps whole or (made to) stream."""
    if streamed:
        monkeypatch.setattr(transport_module, "JOIN_BODY_BELOW", 1024 * 1024)
    return {"image": ("a.jpg", b"x" * 2 * 1024 * 1024, "image/jpeg")}


@pytest.mark.usefixtures("small_send_buffer")
@pytest.mark.parametrize("streamed", [False, True], ids=["kept whole", "streamed"])
def test_a_slow_but_steady_uplink_is_not_cut_off(monkeypatch: pytest.MonkeyPatch, streamed: bool) -> None:
    def drain_slowly(conn: socket.socket, data: bytes) -> None:
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        received = len(body)
        while received < length:  # about 1 s in steps of 10 ms
            time.sleep(0.01)
            received += len(conn.recv(32768))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    client = HttpClient(timeout=0.5, environ_proxies={})
    started = time.monotonic()
    try:
        for url in scripted_server(drain_slowly):
            response = client.post(url, headers={}, files=two_megabytes(monkeypatch, streamed))
            assert response.status_code == 200
    finally:
        client.close()
    assert time.monotonic() - started > 1  # longer than the timeout, in steps much shorter


@pytest.mark.usefixtures("small_send_buffer")
@pytest.mark.parametrize("streamed", [False, True], ids=["kept whole", "streamed"])
def test_an_early_answer_is_returned_though_the_body_is_refused(
    client: HttpClient, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    def refuse(conn: socket.socket, _data: bytes) -> None:
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        time.sleep(0.05)  # then close, the body unread: the client's sending fails

    for url in scripted_server(refuse):
        response = client.post(url, headers={}, files=two_megabytes(monkeypatch, streamed))
        assert response.status_code == 413


@pytest.mark.usefixtures("small_send_buffer")
def test_a_body_refused_without_an_answer_is_a_write_error(
    client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a read error: a server that never had the whole request cannot have carried it out.
    for url in scripted_server(lambda _conn, _data: None):
        with pytest.raises(httpx.WriteError):
            client.post(url, headers={}, files=two_megabytes(monkeypatch, streamed=False))


@pytest.mark.usefixtures("small_send_buffer")
def test_a_send_that_stalls_is_a_write_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    client = HttpClient(timeout=0.3, environ_proxies={})
    try:
        for url in scripted_server(lambda _conn, _data: time.sleep(1.5)):  # reads nothing more
            with pytest.raises(httpx.WriteTimeout):
                client.post(url, headers={}, files=two_megabytes(monkeypatch, streamed=False))
    finally:
        client.close()


def test_a_request_read_whole_and_left_unanswered_is_a_protocol_error(client: HttpClient) -> None:
    for url in raw_server(b""):  # reads the whole request, then hangs up
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(url, headers={}, content=b"hello")


@pytest.mark.parametrize(
    ("exc", "reached", "unanswered", "message"),
    [
        (httpx.ConnectError("refused"), False, False, "cannot reach http://h/v1: refused"),
        (httpx.ConnectTimeout("t"), False, False, "timed out talking to http://h/v1"),
        (httpx.PoolTimeout("t"), False, False, "timed out talking to http://h/v1"),
        (httpx.WriteError("reset"), True, False, "cannot reach http://h/v1: reset"),
        (httpx.WriteTimeout("t"), True, False, "timed out talking to http://h/v1"),
        (httpx.ReadTimeout("t"), True, True, "timed out waiting for an answer from http://h/v1"),
        (httpx.ReadError("reset"), True, True, "no answer from http://h/v1: reset"),
        (httpx.RemoteProtocolError("Server disconnected"), True, True, "no answer from http://h/v1: Server"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_network_errors_say_whether_the_request_may_have_been_carried_out(
    exc: httpx.HTTPError, reached: bool, unanswered: bool, message: str
) -> None:
    error = network_error(exc, where="http://h/v1", reason=str(exc), service="imageban:me")
    assert (error.reached, error.unanswered) == (reached, unanswered)
    assert error.message.startswith(message)
