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
httpx's own transport for that proxy, and a proxy that cannot be reached is reported as
such (`ProxyUnreachable`), not as the service.
"""

from __future__ import annotations

import ssl
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from watchd import __version__
from watchd.errors import TransientError, display_url
from watchd.transport import PooledTransport

DEFAULT_HEADERS = {
    "User-Agent": f"watchd/{__version__}",
    "Accept": "*/*",
    "Accept-Encoding": "identity",  # the answers are a few hundred bytes; a compressed one could be a bomb
}
MAX_PARSED_URLS = 64


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
        extensions: Mapping[str, Any] | None = None,
    ) -> httpx.Response: ...


class ProxyUnreachable(httpx.ConnectError):
    """No connection could be made to the proxy that `variable` (e.g. "HTTPS_PROXY") names;
    `proxy` is its URL as messages may show it (`display_url`). Nothing was sent."""

    def __init__(self, message: str, *, request: httpx.Request, proxy: str, variable: str) -> None:
        super().__init__(message, request=request)
        self.proxy = proxy
        self.variable = variable


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
        # (scheme, host) -> its transport, and the key in `_proxies` of its proxy ("" if direct)
        self._via: dict[tuple[str, str], tuple[httpx.BaseTransport, str]] = {}
        self._by_proxy: dict[str, httpx.BaseTransport] = {}
        self._urls: dict[str, httpx.URL] = {}  # parsed once: each service posts to one or two
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
        extensions: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one POST and return its whole response. `extensions` go to the transport as
        httpx's do (e.g. `IDEMPOTENT`: a request that may be sent again after a lost answer).

        httpx's exceptions pass through, except that failing to connect to a proxy raises
        `ProxyUnreachable` (a TLS failure through it is the service's, and passes through).
        """
        timeouts = self._timeouts if timeout is None else _timeouts(timeout, self._connect_timeout)
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) < MAX_PARSED_URLS:
                self._urls[url] = parsed
        request = httpx.Request(
            "POST",
            parsed,
            headers={**DEFAULT_HEADERS, **headers},
            content=content,
            data=data,
            files=files,
            extensions={**(extensions or {}), "timeout": timeouts},
        )
        transport, proxy_key = self._transport_for(request.url)
        try:
            response = transport.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not proxy_key or _tls_failure(exc):
                raise
            variable = f"{proxy_key.upper()}_PROXY"
            proxy = display_url(self._proxies[proxy_key])
            raise ProxyUnreachable(str(exc), request=request, proxy=proxy, variable=variable) from exc
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

    def _transport_for(self, url: httpx.URL) -> tuple[httpx.BaseTransport, str]:
        """The direct transport, or the one for the proxy the environment names for `url`;
        and the key in `_proxies` of that proxy ("" for none)."""
        if not self._proxies:
            return self._direct, ""
        key = (url.scheme, url.host)
        with self._lock:
            route = self._via.get(key)
            if route is None:
                route = self._via[key] = self._choose(url)
            return route

    def _choose(self, url: httpx.URL) -> tuple[httpx.BaseTransport, str]:
        proxy_key = url.scheme if self._proxies.get(url.scheme) else "all"
        proxy = self._proxies.get(proxy_key)
        if not proxy or _bypassed(url.host, self._no_proxy):
            return self._direct, ""
        if proxy not in self._by_proxy:
            self._by_proxy[proxy] = httpx.HTTPTransport(proxy=proxy)
        return self._by_proxy[proxy], proxy_key


# httpx's errors after which the request cannot have reached the service (nothing was sent),
# and those after which it went out whole without a usable answer: it may have been carried out.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_UNANSWERED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.DecodingError)


def network_error(exc: httpx.HTTPError, *, where: str, reason: str, service: str) -> TransientError:
    """What a service client raises for httpx's `exc` (`reason`: its text, secrets scrubbed).

    `reached` is False when no connection was made: the request cannot have reached the
    service. `unanswered` is True when it was sent and no usable answer came (a read timeout
    or error, a dropped or garbled answer), not for a failure to connect or to send the whole
    request, nor for any answer (a 5xx or 429 is no `httpx.HTTPError` here).
    """
    text = reason or type(exc).__name__
    if isinstance(exc, ProxyUnreachable):
        return TransientError(
            f"cannot reach the proxy {exc.proxy} ({exc.variable}) on the way to {where}: {text}; "
            f"check {exc.variable} and NO_PROXY in watchd's environment",
            service=service,
            reached=False,
        )
    reached = not isinstance(exc, _NOT_SENT)
    unanswered = isinstance(exc, _UNANSWERED)
    if isinstance(exc, httpx.ReadTimeout):
        message = f"timed out waiting for an answer from {where}"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"timed out talking to {where}"
    elif unanswered:
        message = f"no answer from {where}: {text}"
    else:
        message = f"cannot reach {where}: {text}"
    return TransientError(message, service=service, reached=reached, unanswered=unanswered)


def _timeouts(timeout: float, connect_timeout: float) -> dict[str, float]:
    """httpx's `timeout` extension: `timeout` for every step, connecting within the shorter."""
    return {"connect": min(connect_timeout, timeout), "read": timeout, "write": timeout, "pool": timeout}


def _tls_failure(exc: BaseException) -> bool:
    """Whether `exc` was caused by TLS (a certificate refused), not by a failure to connect."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether `NO_PROXY` exempts `host` (the standard library's reading of it)."""
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 (untyped in typeshed)
    return bool(bypass(host, {"no": no_proxy}))
