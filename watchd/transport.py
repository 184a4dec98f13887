"""A lean HTTP/1.1 transport for httpx: kept-alive sockets, one write per small request.

Why: for the small multipart POSTs watchd makes by the thousand, httpcore's machinery costs
about 0.6 ms of CPU per request and `http.client`'s header parsing (through the `email`
package) about 0.2 ms, more than everything else watchd does for an image (measured
against the emulator, see docs/benchmarks.md). The services answer small JSON bodies, so
a small request is one `sendall` (headers and body together) and the answer is read with
a buffered reader: status line, headers, then a body delimited by Content-Length, chunked
encoding or the end of the connection. The rest of watchd keeps speaking httpx (requests,
responses, errors, `MockTransport` in tests); only the bytes on the wire go through here.

Timeouts (httpx's `timeout` extension): `connect` to connect; `write` for each piece of a
larger request to make progress (a slow but steady uplink is never cut off); `read` for the
whole answer once the request is sent (a server trickling bytes cannot hold a worker).

Every failure is raised as the httpx exception httpx's own transport raises for it, so
callers translate errors in one place whatever the transport.
"""

from __future__ import annotations

import io
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO, Literal, NoReturn

import httpx

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_IDLE_PER_ORIGIN = 16
JOIN_BODY_BELOW = 4 * 1024 * 1024  # smaller bodies are kept whole (they can be sent again)
PIECE = 64 * 1024  # a request up to this size is one write; a larger one goes a piece at a time
MAX_LINE = 65536  # longest status or header line accepted
MAX_HEADERS = 100
MAX_BODY = 16 * 1024 * 1024  # the services answer a few hundred bytes of JSON; anything huge is wrong
# Content-Encoding -> zlib's wbits; answers should not be compressed (we ask for identity) but may be.
_DECODERS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
_HEX = re.compile(rb"[0-9A-Fa-f]+")

IDEMPOTENT = "watchd.idempotent"  # request extension: True if carrying it out twice does no harm
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_Origin = tuple[str, str, int]
# The step a failure happened in. It says what the server can have seen: nothing (connect),
# part of the request (write), or all of it, which it may have carried out (read).
_Stage = Literal["connect", "write", "read"]


class _Receiver(io.RawIOBase):
    """The socket's receiving side, no read of which waits past `deadline` (when set)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


class _Connection:
    """One socket, its buffered reader, and when it was last returned to the pool."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._receiver = _Receiver(sock)
        self.reader: BinaryIO = io.BufferedReader(self._receiver)
        self.idle_since = time.monotonic()

    def send_within(self, timeout: float | None) -> None:
        """From now on each write waits at most `timeout` for progress."""
        self._receiver.deadline = None
        self.sock.settimeout(timeout)

    def answer_within(self, timeout: float | None) -> None:
        """From now on the whole answer must arrive within `timeout`."""
        self._receiver.deadline = None if timeout is None else time.monotonic() + timeout
        self.sock.settimeout(timeout)

    def usable(self) -> bool:
        """Not expired, and the server has not closed it (an idle socket that reads is at EOF)."""
        if time.monotonic() - self.idle_since > KEEPALIVE_EXPIRY:
            return False
        poller = select.poll()  # not select(): a daemon's sockets may be numbered past 1024
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def replayable(request: httpx.Request) -> bool:
    """Whether `request` may be sent again after the server received it whole and hung up:
    an idempotent method, or a POST its sender marked idempotent (`IDEMPOTENT` extension).

    A server that closed an idle kept-alive connection just as a request went out looks the
    same on the wire as one that carried the request out and died before answering; an
    upload sent again then would be stored twice (RFC 9110, 9.2.2).
    """
    return request.method in _IDEMPOTENT_METHODS or request.extensions.get(IDEMPOTENT) is True


class _StaleConnection(Exception):
    """A reused connection died before any answer: the request can be sent again, if the
    server cannot have received it whole or may carry it out twice (`replayable`).

    `stage` is the step it died in (see `_raise_translated`), should it die again."""

    def __init__(self, cause: Exception, stage: _Stage) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.stage = stage


class _NoAnswer(ConnectionError):
    """The server closed the connection without sending a status line."""


class PooledTransport(httpx.BaseTransport):
    """Sends each request over a kept-alive connection; safe for several threads.

    `timeout` (read/write) and `connect_timeout` apply to requests without httpx's
    `timeout` extension (`HttpClient` and `httpx.Client` always set it). A server that
    answers early (413, 401) and closes while the request is still going out has its
    answer returned, as httpcore does.
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        limits = (timeouts.get("write", self._timeout), timeouts.get("read", self._timeout))
        body = _Body(request)
        connection = self._checkout(origin)
        if connection is not None:
            try:
                return self._exchange(origin, connection, request, body, limits)
            except _StaleConnection:
                pass  # closed by the server while idle: a fresh connection
        connection = self._open(origin, request, timeouts.get("connect", self._connect_timeout))
        try:
            return self._exchange(origin, connection, request, body, limits)
        except _StaleConnection as stale:
            _raise_translated(stale.cause, request, stale.stage)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _exchange(
        self,
        origin: _Origin,
        connection: _Connection,
        request: httpx.Request,
        body: _Body,
        limits: tuple[float | None, float | None],
    ) -> httpx.Response:
        """One request and its whole answer; the connection goes back to the pool if kept.

        `limits` are the write and read timeouts. A send cut off by the server may have met an
        early answer: it is read, and only without one does the send fail (as a write error:
        the server cannot have carried out a request it did not receive whole).
        """
        write_timeout, read_timeout = limits
        unsent: OSError | None = None  # why the request could not be sent whole
        answered = False
        stage: _Stage = "write"
        try:
            connection.send_within(write_timeout)
            try:
                body.send(connection.sock, _head(request, body))
                stage = "read"
            except (ConnectionError, ssl.SSLError) as exc:
                unsent = exc
            connection.answer_within(read_timeout)
            try:
                status, reason, headers, keep_alive = _read_head(connection.reader)
            except Exception:
                if unsent is None:
                    raise
                raise unsent from None  # no answer to explain it: the send's own failure
            answered = True
            stage = "read"  # an early answer's too, though its request was cut short
            content = _read_body(connection.reader, request.method, status, headers)
            content, headers = _decoded(content, headers)
        except Exception as exc:
            connection.close()
            resendable = stage == "write" or replayable(request)
            if not answered and not body.streamed and isinstance(exc, _DEAD_CONNECTION) and resendable:
                raise _StaleConnection(exc, stage) from exc
            _raise_translated(exc, request, stage)
        except BaseException:
            connection.close()
            raise
        if keep_alive and unsent is None and _delimited(request.method, status, headers):
            self._checkin(origin, connection)
        else:
            connection.close()
        response = httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
            request=request,
        )
        response._content = content  # already read and decoded: `read()` need not stream it again
        return response

    def _checkout(self, origin: _Origin) -> _Connection | None:
        while True:
            with self._lock:
                connections = self._idle.get(origin)
                if not connections:
                    return None
                connection = connections.pop()
            if connection.usable():
                return connection
            connection.close()

    def _checkin(self, origin: _Origin, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            connections = self._idle.setdefault(origin, [])
            if len(connections) < MAX_IDLE_PER_ORIGIN:
                connections.append(connection)
                return
        connection.close()

    def _open(self, origin: _Origin, request: httpx.Request, timeout: float) -> _Connection:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if scheme == "https":
                    if self._ssl_context is None:  # made once: loading the CA bundle takes ms
                        self._ssl_context = httpx.create_ssl_context()
                    sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        except Exception as exc:
            _raise_translated(exc, request, "connect")
        return _Connection(sock)


# A reused connection that fails like this before any answer was closed by the server while idle.
_DEAD_CONNECTION = (_NoAnswer, ConnectionResetError, BrokenPipeError)


class _Body:
    """A request's body as it goes on the wire: kept whole and sent with its headers when its
    length is known and modest (then it can be sent again), streamed when large, measured
    when its length is unknown."""

    def __init__(self, request: httpx.Request) -> None:
        self.chunks: Iterable[bytes] = request.stream  # type: ignore[assignment]
        length = request.headers.get("content-length")
        self.streamed = length is not None and int(length) > JOIN_BODY_BELOW
        self.data = b"" if self.streamed else b"".join(self.chunks)
        self.measured = length is None and bool(self.data)

    def send(self, sock: socket.socket, head: bytes) -> None:
        _send(sock, head + self.data)
        if self.streamed:
            for chunk in self.chunks:
                _send(sock, chunk)


def _send(sock: socket.socket, data: bytes) -> None:
    """Write `data` up to `PIECE` at a time (a small request is one write), the socket's timeout
    bounding each wait for progress, not the whole (which a slow uplink could never send in time)."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        sent += sock.send(view[sent : sent + PIECE])


def _head(request: httpx.Request, body: _Body) -> bytes:
    """The request line and headers as httpx built them (chunked replaced by a measured length)."""
    lines = [request.method.encode("ascii") + b" " + request.url.raw_path + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if body.measured and name.lower() == b"transfer-encoding":
            continue
        lines.append(name + b": " + value)
    if body.measured:
        lines.append(b"Content-Length: " + str(len(body.data)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _read_line(reader: BinaryIO) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise httpx.RemoteProtocolError("answer line too long")
    return line


def _read_head(reader: BinaryIO) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    """Status, reason, headers and whether the connection stays open (1xx answers skipped)."""
    while True:
        line = _read_line(reader)
        if not line:
            raise _NoAnswer("Server disconnected without sending a response.")
        version, _, rest = line.rstrip(b"\r\n").partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit() or len(code) != 3:
            raise httpx.RemoteProtocolError(f"malformed status line {line[:80]!r}")
        headers: list[tuple[bytes, bytes]] = []
        while True:
            line = _read_line(reader)
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = line.partition(b":")
            if not colon or len(headers) >= MAX_HEADERS:
                raise httpx.RemoteProtocolError("malformed or too many header lines")
            headers.append((name.strip(), value.strip()))
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue): the real one follows
        tokens = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
        keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
        return status, reason, headers, keep_alive


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    values = [value for key, value in headers if key.lower() == name]
    return b",".join(values) if values else None


def _delimited(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body's end is known without the connection closing (so it can be reused)."""
    return (
        method == "HEAD"
        or status in (204, 304)
        or _header(headers, b"content-length") is not None
        or b"chunked" in (_header(headers, b"transfer-encoding") or b"").lower()
    )


def _read_body(reader: BinaryIO, method: str, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    if b"chunked" in (_header(headers, b"transfer-encoding") or b"").lower():
        return _read_chunked(reader)
    length = _header(headers, b"content-length")
    if length is None:
        content = reader.read(MAX_BODY + 1)  # until the server closes
        _check_size(len(content))
        return content
    digits = length.split(b",")[0].strip()
    if not digits.isdigit():  # ASCII digits only: no sign, which would read until the end
        raise httpx.RemoteProtocolError(f"bad Content-Length {length[:40]!r}")
    size = int(digits)
    _check_size(size)
    content = reader.read(size)
    if len(content) < size:
        raise httpx.RemoteProtocolError(f"answer ended after {len(content)} of {size} bytes")
    return content


def _read_chunked(reader: BinaryIO) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = _read_line(reader)
        digits = line.split(b";")[0].strip()
        if not _HEX.fullmatch(digits):  # hex digits only: no sign, which would read until the end
            raise httpx.RemoteProtocolError(f"bad chunk size line {line[:40]!r}")
        size = int(digits, 16)
        if size == 0:
            while _read_line(reader) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        total += size
        _check_size(total)
        chunk = reader.read(size)
        if len(chunk) < size:
            raise httpx.RemoteProtocolError("answer ended inside a chunk")
        parts.append(chunk)
        reader.readline(3)  # the CRLF after the chunk


def _decoded(content: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body without its Content-Encoding, decoded here so the size cap holds for what is decoded."""
    encoding = (_header(headers, b"content-encoding") or b"identity").lower()
    if encoding == b"identity":
        return content, headers
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        raise httpx.RemoteProtocolError(f"unsupported Content-Encoding {encoding[:40]!r}")
    decompressor = zlib.decompressobj(wbits)
    try:
        decoded = decompressor.decompress(content, MAX_BODY + 1)
    except zlib.error as exc:
        raise httpx.RemoteProtocolError(f"bad {encoding.decode('ascii', 'replace')} body: {exc}") from None
    _check_size(len(decoded))
    if not decompressor.eof:
        raise httpx.RemoteProtocolError("answer ended inside its compressed body")
    return decoded, [(name, value) for name, value in headers if name.lower() != b"content-encoding"]


def _check_size(size: int) -> None:
    if size > MAX_BODY:
        raise httpx.RemoteProtocolError(f"answer body larger than {MAX_BODY // 1024 // 1024} MB")


_TIMEOUTS: dict[_Stage, type[httpx.TimeoutException]] = {
    "connect": httpx.ConnectTimeout,
    "write": httpx.WriteTimeout,
    "read": httpx.ReadTimeout,
}
_ERRORS: dict[_Stage, type[httpx.NetworkError]] = {
    "connect": httpx.ConnectError,
    "write": httpx.WriteError,
    "read": httpx.ReadError,
}


def _raise_translated(exc: Exception, request: httpx.Request, stage: _Stage) -> NoReturn:
    """Raise the httpx exception httpx's own transport would raise for `exc` (with it as cause)
    in `stage`: connecting, writing the request, or reading the answer once it was sent."""
    if isinstance(exc, httpx.HTTPError):
        raise exc
    message = str(exc) or type(exc).__name__
    translated: httpx.TransportError
    if isinstance(exc, (socket.timeout, TimeoutError)):
        translated = _TIMEOUTS[stage](message, request=request)
    elif isinstance(exc, _NoAnswer):
        translated = httpx.RemoteProtocolError(message, request=request)
    elif isinstance(exc, OSError):  # refused, reset, unreachable, TLS failures
        translated = _ERRORS[stage](message, request=request)
    else:
        raise exc
    raise translated from exc
