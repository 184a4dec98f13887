"""A local emulator of the ImageBan upload API and Baidu's image push API, on loopback.

Faithful to the seed documents and PROTOCOLS.md, and strict: it rejects what they forbid,
so a client that works here sends well-formed requests. It injects faults on demand
(`Faults`), records every call for assertions, and can be steered from another process
through `POST /_emulator/faults`, `GET /_emulator/state` and `POST /_emulator/reset`.
Used by `watchd demo`, `watchd emulator`, the tests and the benchmarks::

    with Emulator() as emu:
        host_api_url, baidu_api_base = emu.imageban_url, emu.baidu_url
        emu.set_faults(http_error_rate=0.2)
        ...
        assert emu.uploads()[0].auth == "account"

Module map: `server` (HTTP, routes, faults, request log), `imageban`, `baidu` (the two
APIs), `wire` (request bodies), `faults` (what can go wrong and the seeded dice).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from watchd.emulator.baidu import Baidu, BaiduCall
from watchd.emulator.faults import Dice, Faults
from watchd.emulator.imageban import ImageBan, UploadRecord
from watchd.emulator.server import BAIDU_BASE_PATH, IMAGEBAN_PATH, App, EmulatorServer, RequestRecord

__all__ = ["BaiduCall", "Emulator", "Faults", "RequestRecord", "UploadRecord", "serve_forever"]

DEMO_CLIENT_ID = "demo-client"
DEMO_SECRET_KEY = "demo-secret"
DEMO_APP_ID = "demo-app"
DEMO_APP_TOKEN = "demo-token"
DEMO_APPS: Mapping[str, str] = MappingProxyType({DEMO_APP_ID: DEMO_APP_TOKEN})


class Emulator:
    """Both APIs on one loopback port, served from daemon threads.

    The socket is bound at construction (so `url` is known at once); `start` serves it and
    `stop` shuts it down and cuts open connections. An emulator is started at most once.
    `clock` gives the time for upload dates and both daily quotas (Moscow / Shanghai day);
    `guest_quota` / `account_quota` are ImageBan's uploads per key per day (the seed's limits),
    which `Faults.imageban_quota` overrides.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_ids: Iterable[str] = (DEMO_CLIENT_ID,),
        secret_keys: Iterable[str] = (DEMO_SECRET_KEY,),
        baidu_apps: Mapping[str, str] = DEMO_APPS,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        guest_quota: int = 1000,
        account_quota: int = 1500,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        dice = Dice(self.faults)

        def app_for(url: str) -> App:
            imageban = ImageBan(
                url,
                client_ids=client_ids,
                secret_keys=secret_keys,
                dice=dice,
                clock=clock,
                guest_quota=guest_quota,
                account_quota=account_quota,
            )
            return App(imageban, Baidu(baidu_apps, dice=dice, clock=clock), dice, clock)

        self._server = EmulatorServer((host, port), app_for)
        self._app = self._server.app
        self._thread: threading.Thread | None = None
        self.url: str = self._server.url
        self.imageban_url: str = self.url + IMAGEBAN_PATH
        self.baidu_url: str = self.url + BAIDU_BASE_PATH

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="watchd-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut keep-alive connections and close the socket. Idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def set_faults(self, **changes: Any) -> None:
        """Change some `Faults` fields at once; raise ValueError (nothing changed) if one is invalid."""
        self._app.dice.update(**changes)

    def uploads(self) -> list[UploadRecord]:
        """Every successful upload, oldest first."""
        return self._app.imageban.uploads()

    def baidu_calls(self) -> list[BaiduCall]:
        """Every pushPic/delPic call the API answered (copies), oldest first."""
        return self._app.baidu.calls()

    def baidu_index(self) -> dict[str, dict[str, Any]]:
        """Baidu id -> the push item currently stored under it (after modifies and deletes)."""
        return self._app.baidu.index()

    def requests(self) -> list[RequestRecord]:
        """Every API request, errors and injected faults included, oldest first."""
        return self._app.requests()

    def reset(self) -> None:
        """Clear records, stored images, the Baidu index, quota counters and faults."""
        self._app.reset()


def serve_forever(port: int, host: str = "127.0.0.1") -> None:
    """Serve both APIs until Ctrl-C or SIGTERM, after printing the URLs and a config snippet.

    Raise OSError, as binding does, if it cannot listen on `host`:`port`.

    The handlers are installed explicitly: a process started in the background by a
    non-interactive shell inherits SIGINT as ignored, and must still stop on it.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    with Emulator(host, port) as emulator:
        print(_banner(emulator), flush=True)
        stop.wait()
        print("watchd emulator: stopped", flush=True)


def _banner(emulator: Emulator) -> str:
    return f"""\
watchd emulator of ImageBan and Baidu listening on {emulator.url} (Ctrl-C stops)
  ImageBan api_url: {emulator.imageban_url}
  Baidu api_base:   {emulator.baidu_url}
  admin:            GET /_emulator/state, POST /_emulator/faults, POST /_emulator/reset

# demo credentials: paste into a watchd config
hosts:
  me:
    type: imageban
    secret_key: {DEMO_SECRET_KEY}
    api_url: {emulator.imageban_url}
  guest:
    type: imageban
    client_id: {DEMO_CLIENT_ID}
    api_url: {emulator.imageban_url}
baidu:
  app_id: {DEMO_APP_ID}
  app_token: {DEMO_APP_TOKEN}
  api_base: {emulator.baidu_url}"""
