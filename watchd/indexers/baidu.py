"""The Baidu image-search bulk API client: payload validation, pushPic/delPic, errno mapping.

Requests are exactly as PROTOCOLS.md describes: a JSON body whose `image_list` /
`delete_list` is a *string* holding compact JSON. Items that fail local validation get an
error result and are never sent. Every answer is classified in `_classify` (errno, from
the one `_ERRNO` table; an answer without one goes to `_without_errno`, by HTTP status);
httpx's exceptions are translated in `_post`. Baidu answers a whole call with one errno,
so when it says "a parameter is wrong" (2, 301001) the batch is split in halves and each
half sent again, down to the single bad items, which fail alone while the others go through.
"""

from __future__ import annotations

import contextlib
import json
import re
import string
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from watchd.errors import (
    AlreadyDoneError,
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
    TransientError,
    display_url,
)
from watchd.http import HttpPoster, network_error
from watchd.indexers.base import ItemResult, PushItem
from watchd.retry import parse_retry_after
from watchd.transport import IDEMPOTENT

DEFAULT_API_BASE = "https://baijiahao.baidu.com/builderinner/open/resource/image"
SERVICE = "baidu"
MIN_TITLE = 9  # "more than 8 characters", counted in code points

_ID = re.compile(r"[A-Za-z0-9]+")
_URL_START = re.compile(r"https?://", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s")  # what str.isspace() calls whitespace
_HEX = frozenset(string.hexdigits)

Item = TypeVar("Item", PushItem, str)


# errno -> (class, meaning); None is success. PROTOCOLS.md, "Baidu ... Answers".
# PermanentFileError is a payload problem: the batch is bisected down to the bad items.
_ERRNO: dict[int, tuple[type[ServiceError] | None, str]] = {
    0: (None, "success"),
    2: (PermanentFileError, "Baidu refused a parameter of this item"),
    4: (TransientError, "Baidu database error"),
    5: (TransientError, "Baidu database error"),
    10002: (ConfigurationError, "no permission for this API: check the Baidu account"),
    10003: (TransientError, "Baidu database error"),
    10005: (TransientError, "Baidu internal service error"),
    60000006: (TransientError, "Baidu internal service error"),
    60000020: (TransientError, "Baidu internal service error"),
    301001: (PermanentFileError, "Baidu found no valid data in this item"),
    301002: (QuotaError, "today's Baidu image quota is used up"),
    301003: (AlreadyDoneError, "already stored by Baidu (duplicate)"),
    60000005: (ConfigurationError, "Baidu account not approved or muted: check its state with Baidu"),
    60000009: (ConfigurationError, "Baidu account does not exist: check app_id"),
    60001001: (ConfigurationError, "Baidu authorisation failed: check app_id and app_token"),
}
# 301004 is seen only in answers to delPic (in public SDKs); on pushPic it is an unknown errno.
_ERRNO_DELETE = {
    **_ERRNO,
    301004: (AlreadyDoneError, "not stored by Baidu (nothing to delete)"),
}

# HTTP status without a Baidu answer -> (class, message); anything else >= 300 is transient.
_HTTP_STATUS: dict[int, tuple[type[ServiceError], str]] = {
    404: (ConfigurationError, "no Baidu API at this address: check baidu.api_base"),
    405: (ConfigurationError, "no Baidu API at this address: check baidu.api_base"),
    410: (ConfigurationError, "no Baidu API at this address any more: check baidu.api_base"),
}


def validate_push_item(item: PushItem) -> None:
    """Return if Baidu can accept `item`; raise `PermanentFileError` saying why it cannot.

    Rules: id of ASCII letters and digits; title of more than 8 code points; objurl and
    fromurl starting with http(s)://, without whitespace or non-ASCII (see `encode_url`);
    no tag empty or containing "#"; edit_time a non-negative integer.
    """
    problems: list[str] = []
    if not _ID.fullmatch(item.id):
        problems.append(f"id {item.id!r} must be ASCII letters and digits only")
    if len(item.title) < MIN_TITLE:
        problems.append(f"title {item.title!r} must be longer than 8 characters")
    for field in ("objurl", "fromurl"):
        url: str = getattr(item, field)
        if not _URL_START.match(url):
            problems.append(f"{field} {url!r} must start with http:// or https://")
        elif not url.isascii() or _WHITESPACE.search(url):
            problems.append(f"{field} {url!r} must be percent-encoded (no spaces or non-ASCII)")
    for tag in item.tags:
        if not tag.strip() or "#" in tag:
            problems.append(f"tag {tag!r} must be non-empty and must not contain '#'")
    if isinstance(item.edit_time, bool) or not isinstance(item.edit_time, int) or item.edit_time < 0:
        problems.append(f"edit_time {item.edit_time!r} must be a non-negative integer")
    if problems:
        raise PermanentFileError("not submitted to Baidu: " + "; ".join(problems), service=SERVICE)


def make_title(rendered: str, folder: str) -> str:
    """Return a title Baidu accepts (more than 8 code points) from the rendered title template.

    Documented fallback: a rendered title of 8 code points or fewer gets " - {folder}"
    appended (just the folder name when it is empty), and if that is still too short,
    " image" as well: "cat.png" in folder "pets" becomes "cat.png - pets", "cat" in
    folder "x" becomes "cat - x image".
    """
    title = rendered.strip()
    if len(title) < MIN_TITLE:
        title = f"{title} - {folder}" if title else folder
    if len(title) < MIN_TITLE:
        title = f"{title} image"
    return title


def encode_url(url: str) -> str:
    """Return `url` in the form Baidu accepts: ASCII only, no whitespace.

    Leading and trailing whitespace is dropped; a non-ASCII host name becomes IDNA
    ("xn--…"); every other non-ASCII or whitespace character is percent-encoded as UTF-8.
    Existing %XX escapes and reserved characters are kept; a lone "%" becomes "%25".
    Idempotent: encoding an encoded URL changes nothing.
    """
    text = url.strip()
    if text.isascii() and text.isprintable() and " " not in text and "%" not in text:
        return text  # the usual case, and per-character work below is slow in Python
    try:
        netloc = urlsplit(text).netloc
    except ValueError:  # e.g. an unbalanced "[": nothing to do for the host
        netloc = ""
    if not netloc.isascii():
        userinfo, at, hostport = netloc.rpartition("@")
        host, colon, port = hostport.partition(":")
        with contextlib.suppress(UnicodeError):  # not a valid IDNA name: percent-encoded below
            ascii_host = host.encode("idna").decode("ascii")
            text = text.replace(netloc, f"{userinfo}{at}{ascii_host}{colon}{port}", 1)
    out: list[str] = []
    for i, char in enumerate(text):
        if char == "%" and set(text[i + 1 : i + 3]) <= _HEX and len(text[i + 1 : i + 3]) == 2:
            out.append(char)
        elif char == "%" or char.isspace() or not char.isascii() or not char.isprintable():
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


def _push_entry(item: PushItem) -> dict[str, Any]:
    """The JSON object Baidu expects for one `pushPic` item (tags omitted when there are none)."""
    entry: dict[str, Any] = {
        "id": item.id,
        "title": item.title,
        "objurl": item.objurl,
        "fromurl": item.fromurl,
        "edit_time": int(item.edit_time),
    }
    if item.tags:
        entry["tags"] = "#".join(item.tags)
    entry["copyright"] = 1 if item.copyright else 0
    entry["extra"] = {"modify": "1" if item.modify else "0"}
    return entry


def _validate_withdraw_id(item_id: str) -> None:
    if not _ID.fullmatch(item_id):
        raise PermanentFileError(
            f"not withdrawn from Baidu: id {item_id!r} must be ASCII letters and digits only", service=SERVICE
        )


class BaiduIndexer:
    """Submits images to (`push`) and withdraws them from (`withdraw`) Baidu image search.

    `push` takes at most 20 items, `withdraw` at most 10 ids (more is a programming error:
    `ValueError`). Both return one `ItemResult` per item, in order: None on success,
    `AlreadyDoneError` when Baidu already had it (duplicate push, delete of a missing id),
    `PermanentFileError` for an item that fails validation or that Baidu refuses alone.
    Quota, configuration and transient answers concern the whole call and are raised;
    after a bisection some halves may already be stored, which is harmless: sending them
    again is answered "duplicate", i.e. already done.

    The `client` belongs to the caller, so `close` leaves it open; `timeout` (seconds) is
    Baidu's own, whatever the client's default.
    """

    name = SERVICE
    max_push = 20
    max_withdraw = 10

    def __init__(
        self, *, app_id: str, app_token: str, api_base: str, client: HttpPoster, timeout: float = 30.0
    ) -> None:
        self._app_id = app_id
        self._app_token = app_token
        self._api_base = api_base.rstrip("/")
        self._where = display_url(self._api_base).rstrip("/")  # its login or a key in its query are secrets
        self._client = client
        self._timeout = timeout

    def push(self, items: list[PushItem]) -> list[ItemResult]:
        """Submit up to 20 items (re-submissions carry `modify=True`); one result per item."""
        return self._batch("pushPic", "image_list", items, self.max_push, validate_push_item, _push_entry)

    def withdraw(self, ids: list[str]) -> list[ItemResult]:
        """Withdraw up to 10 previously pushed ids; one result per id."""
        return self._batch(
            "delPic", "delete_list", ids, self.max_withdraw, _validate_withdraw_id, _delete_entry
        )

    def close(self) -> None:
        """Nothing to release: the HTTP client is owned (and closed) by the caller."""

    def _batch(
        self,
        endpoint: str,
        list_key: str,
        items: Sequence[Item],
        limit: int,
        validate: Callable[[Item], None],
        to_entry: Callable[[Item], dict[str, Any]],
    ) -> list[ItemResult]:
        if len(items) > limit:
            raise ValueError(f"{endpoint} takes at most {limit} items, got {len(items)}")
        results: list[ItemResult | None] = [None] * len(items)
        sendable: list[tuple[int, str, dict[str, Any]]] = []
        for index, item in enumerate(items):
            item_id = item if isinstance(item, str) else item.id
            try:
                validate(item)
            except PermanentFileError as exc:
                results[index] = ItemResult(item_id, exc)
                continue
            sendable.append((index, item_id, to_entry(item)))
        if sendable:
            self._send(endpoint, list_key, sendable, results)
        done = [result for result in results if result is not None]
        assert len(done) == len(items), "every item gets exactly one result"
        return done

    def _send(
        self,
        endpoint: str,
        list_key: str,
        batch: list[tuple[int, str, dict[str, Any]]],
        results: list[ItemResult | None],
    ) -> None:
        """Send `batch`, bisecting on payload problems, and fill in `results` for its items."""
        error = self._call(endpoint, list_key, [entry for _, _, entry in batch])
        if isinstance(error, PermanentFileError) and len(batch) > 1:
            middle = len(batch) // 2
            self._send(endpoint, list_key, batch[:middle], results)
            self._send(endpoint, list_key, batch[middle:], results)
            return
        for index, item_id, _ in batch:
            results[index] = ItemResult(item_id, error)

    def _call(self, endpoint: str, list_key: str, entries: list[dict[str, Any]]) -> ServiceError | None:
        body = {
            "app_id": self._app_id,
            "app_token": self._app_token,
            list_key: json.dumps(entries, ensure_ascii=False, separators=(",", ":")),
        }
        response = self._post(endpoint, json.dumps(body, ensure_ascii=False).encode("utf-8"))
        return self._classify(endpoint, response)

    def _post(self, endpoint: str, content: bytes) -> httpx.Response:
        """Send one request; the one place httpx's exceptions are translated."""
        headers = {"Content-Type": "application/json;charset=utf-8"}
        where = f"{self._where}/{endpoint}"
        url = f"{self._api_base}/{endpoint}"
        try:
            # Idempotent: Baidu counts an item it already has as done (301003), so a call whose
            # kept-alive connection died under it is sent again at once.
            extensions = {IDEMPOTENT: True}
            return self._client.post(
                url, content=content, headers=headers, timeout=self._timeout, extensions=extensions
            )
        except httpx.HTTPError as exc:
            reason = str(exc).replace(self._app_token, "***")
            raise network_error(exc, where=where, reason=reason, service=SERVICE) from exc

    def _classify(self, endpoint: str, response: httpx.Response) -> ServiceError | None:
        """Classify an answer: return what it means for the items of the call, raise the rest.

        Return None (done), `PermanentFileError` (a payload problem: bisect) or
        `AlreadyDoneError`; raise `TransientError`, `QuotaError` or `ConfigurationError`.
        """
        try:
            body: Any = response.json()
        except (ValueError, RecursionError):  # not JSON, not even text, or nested too deep
            body = None
        errno_value = body.get("errno") if isinstance(body, dict) else None
        if errno_value is None:
            raise _without_errno(response)
        errmsg = str(body.get("errmsg") or "").replace(self._app_token, "***")
        try:
            errno = int(str(errno_value).strip())
        except ValueError:
            errno = -1
        table = _ERRNO_DELETE if endpoint == "delPic" else _ERRNO
        cls, meaning = table.get(errno, (TransientError, f"unknown Baidu errno {errno_value}: {errmsg}"))
        if cls is None:
            return None
        if cls is PermanentFileError and errmsg:
            meaning = f"{meaning}: {errmsg}"
        code = str(errno_value).strip()
        if cls is TransientError:  # an errno the API answered with: nothing was stored
            raise TransientError(meaning, service=SERVICE, code=code, refused=True)
        error = cls(meaning, service=SERVICE, code=code)
        if isinstance(error, PermanentFileError | AlreadyDoneError):
            return error
        raise error


def _without_errno(response: httpx.Response) -> ServiceError:
    """The error an answer without an errno means: by HTTP status, else a malformed answer."""
    status = response.status_code
    if status < 300:
        return TransientError("malformed answer from Baidu (no errno)", service=SERVICE)
    cls, meaning = _HTTP_STATUS.get(status, (TransientError, f"HTTP {status} from Baidu"))
    if cls is TransientError:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        refused = status == 429  # turned away unread; a 5xx may come after the work
        return TransientError(
            meaning, service=SERVICE, code=str(status), retry_after=retry_after, refused=refused
        )
    return cls(meaning, service=SERVICE, code=str(status))


def _delete_entry(item_id: str) -> dict[str, Any]:
    return {"type": "id", "key": item_id}
