"""HTTP for the service clients: POSTs sent straight to an httpx transport.

The hosts and indexers need one thing from HTTP: `post(url, headers=..., content | data +
files, timeout=...)` returning an `httpx.Response`, or raising httpx's exceptions (`HttpPoster`),
which `network_error` turns into the `TransientError` they raise.
`httpx.Client` offers that and is what tests hand them (with `httpx.MockTransport`); the
daemon hands them an `HttpClient`, which skips what the Client does on every request and
watchd never uses (cookie jars, auth flows, redirects, URL and header merging: about half
a millisecond of CPU per upload, see docs/benchmarks.md) and sends through the lean
`PooledTransport`.

Proxies are honoured as httpx honours them: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`
from the environment, except for hosts in `NO_PROXY`; a proxied request goes through
httpx's own transport for that proxy.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from watchd import __version__
from watchd.errors import TransientError
from watchd.transport import PooledTransport

DEFAULT_HEADERS = {
    "User-Agent": f"watchd/{__version__}",
    "Accept": "*/*",
    "Accept-Encoding": "identity",  # the answers are a few hundred bytes; a compressed one could be a bomb
}


class HttpPoster(Protocol):
    """What a service client needs: `httpx.Client` and `HttpClient` both are one.

    Each service passes its own `timeout` (seconds): services sharing one client keep their
    own limits. (None means the client's default to `HttpClient`, no limit to `httpx.Client`.)
    """

    def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response: ...


class HttpClient:
    """Sends each POST directly to a transport; safe for several threads.

    `timeout` is the read/write/pool timeout and `connect_timeout` the longest wait to connect;
    a `post` given its own `timeout` uses that instead (see `PooledTransport` for what each means).
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        environ_proxies: Mapping[str, str] | None = None,
    ) -> None:
        self._direct = transport or PooledTransport()
        self._connect_timeout = connect_timeout
        self._timeouts = _timeouts(timeout, connect_timeout)
        proxies = urllib.request.getproxies_environment() if environ_proxies is None else environ_proxies
        self._proxies = {scheme: url for scheme, url in proxies.items() if scheme != "no"}
        self._no_proxy = proxies.get("no", "")
        self._via: dict[tuple[str, str], httpx.BaseTransport] = {}  # (scheme, host) -> transport
        self._by_proxy: dict[str, httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one POST and return its whole response (httpx's exceptions pass through)."""
        timeouts = self._timeouts if timeout is None else _timeouts(timeout, self._connect_timeout)
        request = httpx.Request(
            "POST",
            url,
            headers={**DEFAULT_HEADERS, **headers},
            content=content,
            data=data,
            files=files,
            extensions={"timeout": timeouts},
        )
        response = self._transport_for(request.url).handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response

    def close(self) -> None:
        self._direct.close()
        with self._lock:
            proxied, self._by_proxy = self._by_proxy, {}
        for transport in proxied.values():
            transport.close()

    def _transport_for(self, url: httpx.URL) -> httpx.BaseTransport:
        """The direct transport, or the one for the proxy the environment names for `url`."""
        if not self._proxies:
            return self._direct
        key = (url.scheme, url.host)
        with self._lock:
            transport = self._via.get(key)
            if transport is None:
                transport = self._via[key] = self._choose(url)
            return transport

    def _choose(self, url: httpx.URL) -> httpx.BaseTransport:
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if proxy is None or _bypassed(url.host, self._no_proxy):
            return self._direct
        if proxy not in self._by_proxy:
            self._by_proxy[proxy] = httpx.HTTPTransport(proxy=proxy)
        return self._by_proxy[proxy]


def network_error(exc: httpx.HTTPError, *, where: str, reason: str, service: str) -> TransientError:
    """What a service client raises for httpx's `exc` (`reason`: its text, secrets scrubbed).

    `reached` is False when no connection was made: the request cannot have reached the service.
    """
    reached = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"timed out talking to {where}", service=service, reached=reached)
    return TransientError(
        f"cannot reach {where}: {reason or type(exc).__name__}", service=service, reached=reached
    )


def _timeouts(timeout: float, connect_timeout: float) -> dict[str, float]:
    """httpx's `timeout` extension: `timeout` for every step, connecting within the shorter."""
    return {"connect": min(connect_timeout, timeout), "read": timeout, "write": timeout, "pool": timeout}


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether `NO_PROXY` exempts `host` (the standard library's reading of it)."""
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 (untyped in typeshed)
    return bool(bypass(host, {"no": no_proxy}))
