"""The emulator's HTTP side: routes, fault injection, the request log, and the threaded server.

`App` decides what to answer (pure request -> response, no sockets); `_Handler` only reads
requests and writes responses (HTTP/1.1 keep-alive, exact Content-Length, chunked bodies
accepted); `EmulatorServer` is a `ThreadingHTTPServer` that can cut its open connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from watchd.emulator.baidu import Baidu, Endpoint
from watchd.emulator.faults import Dice
from watchd.emulator.imageban import ImageBan
from watchd.emulator.wire import parse_form, parse_object

log = logging.getLogger(__name__)

IMAGEBAN_PATH = "/v1"
BAIDU_BASE_PATH = "/builderinner/open/resource/image"
_BAIDU_ENDPOINTS: dict[str, Endpoint] = {
    f"{BAIDU_BASE_PATH}/pushPic": "pushPic",
    f"{BAIDU_BASE_PATH}/delPic": "delPic",
}
MAX_BODY_BYTES = 64 * 1024 * 1024  # room for a 10 MiB image as base64 in a form, and then some
_SERVER_ERRORS = (500, 502, 503)


@dataclass(frozen=True)
class RequestRecord:
    """One API request, `POST` to /v1, pushPic or delPic (not link GETs or admin calls).

    `auth`: "guest" (TOKEN), "account" (Bearer), "secret_key_field" (the retired form field,
    answered 110), "app_token" (Baidu credentials in the body), "none" (missing or another
    scheme), or "" when a fault answered before the API looked. `status` is 0 for a dropped
    connection; `code` is the API's code as text ("105", "200", "301003") or "" when a fault
    answered; `fault` is "drop", "http_error" or None.
    """

    path: str
    auth: str
    status: int
    code: str
    fault: str | None
    at: float


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def _json(payload: object, status: int = 200) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Response(status, body, "application/json; charset=utf-8")


_NOT_FOUND = Response(404, b"not found\n", "text/plain; charset=utf-8")


class App:
    """Routes requests to the two APIs, the stored images and the admin endpoints; thread-safe."""

    def __init__(self, imageban: ImageBan, baidu: Baidu, dice: Dice, clock: Callable[[], float]) -> None:
        self.imageban = imageban
        self.baidu = baidu
        self.dice = dice
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []

    def handle(self, method: str, target: str, headers: Message, body: bytes) -> Response | None:
        """The response to one request, or None to close the connection without answering."""
        path = target.partition("?")[0]
        if method == "POST" and (path == IMAGEBAN_PATH or path in _BAIDU_ENDPOINTS):
            return self._api(path, headers, body)
        if method == "GET":
            return self._get(path)
        if method == "POST" and path == "/_emulator/faults":
            return self._set_faults(body)
        if method == "POST" and path == "/_emulator/reset":
            self.reset()
            return _json({"ok": True})
        return _NOT_FOUND

    def _api(self, path: str, headers: Message, body: bytes) -> Response | None:
        faults = self.dice.faults
        if faults.latency:
            time.sleep(faults.latency)
        if self.dice.hit(faults.drop_rate):
            self._record(path, "", 0, "", "drop")
            return None
        if self.dice.hit(faults.http_error_rate):
            response = self._http_error()
            self._record(path, "", response.status, "", "http_error")
            return response
        content_type = headers.get("Content-Type", "")
        if path == IMAGEBAN_PATH:
            answer = self.imageban.upload(headers.get("Authorization"), parse_form(content_type, body))
        else:
            answer = self.baidu.call(_BAIDU_ENDPOINTS[path], parse_object(content_type, body))
        self._record(path, answer.auth, 200, answer.code, None)
        return _json(answer.payload)

    def _http_error(self) -> Response:
        """A 429 with Retry-After when `retry_after` is set, else a 5xx; never JSON."""
        retry_after = self.dice.faults.retry_after
        if retry_after is not None:
            seconds = f"{retry_after:g}" if retry_after % 1 else str(int(retry_after))
            return Response(429, b"Too Many Requests\n", "text/plain", (("Retry-After", seconds),))
        status = self.dice.pick(_SERVER_ERRORS)
        return Response(status, b"<html><body><h1>Server Error</h1></body></html>\n", "text/html")

    def _get(self, path: str) -> Response:
        for prefix in ("/out/", "/thumbs/"):
            if path.startswith(prefix):
                found = self.imageban.file(path.removeprefix(prefix))
                return Response(200, found[0], found[1]) if found else _NOT_FOUND
        if path.startswith("/i/"):
            page = self.imageban.page(path.removeprefix("/i/"))
            return Response(200, page.encode(), "text/html; charset=utf-8") if page else _NOT_FOUND
        if path == "/_emulator/state":
            return _json(self.state())
        return _NOT_FOUND

    def _set_faults(self, body: bytes) -> Response:
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of Faults fields")
            self.dice.update(**changes)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(dataclasses.asdict(self.dice.faults))

    def _record(self, path: str, auth: str, status: int, code: str, fault: str | None) -> None:
        with self._lock:
            self._requests.append(RequestRecord(path, auth, status, code, fault, self._clock()))

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def state(self) -> dict[str, Any]:
        """Everything observable, as JSON-ready data (what `GET /_emulator/state` answers)."""
        return {
            "uploads": [dataclasses.asdict(r) for r in self.imageban.uploads()],
            "baidu_calls": [dataclasses.asdict(c) for c in self.baidu.calls()],
            "baidu_index": self.baidu.index(),
            "requests": [dataclasses.asdict(r) for r in self.requests()],
            "faults": dataclasses.asdict(self.dice.faults),
        }

    def reset(self) -> None:
        """Clear records, indexes, counters and faults."""
        self.imageban.reset()
        self.baidu.reset()
        self.dice.clear()
        with self._lock:
            self._requests.clear()


class EmulatorServer(ThreadingHTTPServer):
    """A threaded HTTP server that remembers its open connections, so `stop` can cut them."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], app_factory: Callable[[str], App]) -> None:
        super().__init__(address, _Handler)
        self.url = f"http://{address[0]}:{self.server_port}"
        self.app = app_factory(self.url)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut every open (keep-alive) connection: clients see the server go away."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "watchd-emulator"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections end after this
    server: EmulatorServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator serves thousands of requests in benchmarks; the records tell all."""

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        try:
            response = self.server.app.handle(self.command, self.path, self.headers, body)
        except Exception:
            log.exception("emulator: internal error answering %s %s", self.command, self.path)
            response = Response(500, b"emulator internal error\n", "text/plain")
        if response is None:
            self.close_connection = True
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering 400/413 and closing."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError as exc:
            self.close_connection = True
            self.send_error(400, f"unreadable request body: {exc}")
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self.send_error(413)
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while size := int(self.rfile.readline(1024).split(b";")[0], 16):
            if len(body) + size > MAX_BODY_BYTES:
                raise ValueError("body too large")
            body += self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF after the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return bytes(body)
