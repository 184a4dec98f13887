"""A lean httpx transport over the standard library's `http.client`, with kept-alive connections.

Why: for the small multipart POSTs watchd makes by the thousand, httpcore's machinery costs
about 0.6 ms of CPU per request (measured against the emulator, see docs/benchmarks.md),
more than everything else watchd does for an image. `http.client` sends the same bytes for
a fraction of that. The rest of watchd keeps speaking httpx (requests, responses, errors,
`MockTransport` in tests); only the bytes on the wire go through here.

The engine mounts it for direct connections only (`all://`), so proxies named in the
environment (`HTTPS_PROXY`, `NO_PROXY`, ...) still go through httpx's own transports.
Every failure is raised as the httpx exception httpx itself would raise, so callers
translate errors in one place whatever the transport.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import NoReturn

import httpx

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_IDLE_PER_ORIGIN = 16
JOIN_BODY_BELOW = 4 * 1024 * 1024  # smaller bodies are sent with the headers in one write

_Origin = tuple[str, str, int]


class _Connection:
    """One kept-alive connection and when it was last returned to the pool."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        """Not expired, and the server has not closed it (an idle socket that reads is at EOF)."""
        sock = self.conn.sock
        if sock is None or time.monotonic() - self.idle_since > KEEPALIVE_EXPIRY:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable


class PooledTransport(httpx.BaseTransport):
    """Sends each request over a kept-alive `http.client` connection; safe for several threads.

    `timeout` (read/write) and `connect_timeout` apply to requests without httpx's
    `timeout` extension; an `httpx.Client` always sets it, from its own timeout.
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
        origin = (request.url.scheme, request.url.host, request.url.port or _default_port(request.url))
        timeouts = request.extensions.get("timeout", {})
        connect_timeout = timeouts.get("connect", self._connect_timeout)
        read_timeout = timeouts.get("read", self._timeout)
        body = _Body(request)
        connection = self._checkout(origin)
        if connection is not None:
            try:
                return self._exchange(origin, connection, request, body, read_timeout)
            except _StaleConnection:
                pass  # closed by the server while idle, before it read a byte: a fresh one
        connection = _Connection(self._open(origin, request, connect_timeout))
        try:
            return self._exchange(origin, connection, request, body, read_timeout)
        except _StaleConnection as stale:
            _raise_translated(stale.cause, request, connected=True)

    def _exchange(
        self, origin: _Origin, connection: _Connection, request: httpx.Request, body: _Body, timeout: float
    ) -> httpx.Response:
        """One request and its whole answer over `connection`, which goes back to the pool if
        the server keeps it. `_StaleConnection` when it died before any answer and the
        request can be sent again."""
        conn = connection.conn
        answered = False
        try:
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            body.send(conn, request)
            answer = conn.getresponse()
            answered = True
            content = answer.read()
        except Exception as exc:
            conn.close()
            if not answered and body.resendable and isinstance(exc, _DEAD_CONNECTION):
                raise _StaleConnection(exc) from exc
            _raise_translated(exc, request, connected=True)
        except BaseException:
            conn.close()
            raise
        response = httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason.encode("latin-1")},
            request=request,
        )
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, connection)
        return response

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.conn.close()

    # -- the pool ------------------------------------------------------------------------

    def _checkout(self, origin: _Origin) -> _Connection | None:
        while True:
            with self._lock:
                connections = self._idle.get(origin)
                if not connections:
                    return None
                connection = connections.pop()
            if connection.usable():
                return connection
            connection.conn.close()

    def _checkin(self, origin: _Origin, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            connections = self._idle.setdefault(origin, [])
            if len(connections) < MAX_IDLE_PER_ORIGIN:
                connections.append(connection)
                return
        connection.conn.close()

    def _open(self, origin: _Origin, request: httpx.Request, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            context = self._ssl_context or httpx.create_ssl_context()
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        elif scheme == "http":
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        try:
            conn.connect()
        except Exception as exc:
            conn.close()
            _raise_translated(exc, request, connected=False)
        except BaseException:
            conn.close()
            raise
        return conn


# A reused connection that fails like this before any answer was closed by the server while idle.
_DEAD_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _StaleConnection(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Body:
    """A request's body as it goes on the wire: with its headers in one write when its length
    is known and modest (then it can be sent again), streamed when large, measured when
    its length is unknown."""

    def __init__(self, request: httpx.Request) -> None:
        self.chunks: Iterable[bytes] = request.stream  # type: ignore[assignment]
        self.length = request.headers.get("content-length")
        self.streamed = self.length is not None and int(self.length) > JOIN_BODY_BELOW
        self.data = None if self.streamed else b"".join(self.chunks)
        self.resendable = not self.streamed

    def send(self, conn: http.client.HTTPConnection, request: httpx.Request) -> None:
        conn.putrequest(
            request.method, request.url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True
        )
        for name, value in request.headers.raw:
            if self.length is None and name.lower() == b"transfer-encoding":
                continue  # measured instead of chunked
            conn.putheader(name.decode("latin-1"), value)
        if self.length is None and self.data:
            conn.putheader("Content-Length", str(len(self.data)))
        conn.endheaders(self.data or None)
        if self.streamed:
            self.resendable = False
            for chunk in self.chunks:
                conn.send(chunk)


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _raise_translated(exc: Exception, request: httpx.Request, *, connected: bool) -> NoReturn:
    """Raise the httpx exception httpx's own transport would raise for `exc` (with it as cause)."""
    message = str(exc) or type(exc).__name__
    translated: httpx.TransportError
    if isinstance(exc, (socket.timeout, TimeoutError)):
        translated = (httpx.ReadTimeout if connected else httpx.ConnectTimeout)(message, request=request)
    elif isinstance(exc, http.client.HTTPException):  # RemoteDisconnected, BadStatusLine, ...
        translated = httpx.RemoteProtocolError(message, request=request)
    elif isinstance(exc, OSError):  # refused, reset, unreachable, TLS failures
        translated = (httpx.ReadError if connected else httpx.ConnectError)(message, request=request)
    else:
        raise exc
    raise translated from exc
