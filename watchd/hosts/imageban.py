"""The ImageBan upload API v1 client: request building, response parsing, error mapping.

One upload is one multipart POST to `api_url` (see PROTOCOLS.md). Every way it can go wrong
becomes one class of the `watchd.errors` taxonomy, in two places only: `_post` translates
httpx's exceptions (and keys no HTTP header can carry), `_interpret` classifies answers
(API codes in `_API_CODES`, HTTP status in `_HTTP_STATUS`, malformed or incomplete bodies).
Messages are built from codes and the API's own message, never from the keys, which are
additionally scrubbed from anything the server echoes back.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from watchd.errors import (
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
    TransientError,
    display_url,
)
from watchd.hosts.base import Uploaded, UploadRequest
from watchd.http import HttpPoster, network_error
from watchd.imagefile import ImageInfo, inspect_image
from watchd.retry import parse_retry_after

DEFAULT_API_URL = "https://api.imageban.ru/v1"

# API error code -> (class, what it means and what to do). PROTOCOLS.md, "ImageBan ... Errors".
_API_CODES: dict[str, tuple[type[ServiceError], str]] = {
    "100": (ConfigurationError, "invalid client id"),
    "101": (PermanentFileError, "image larger than ImageBan allows: resize or recompress it"),
    "102": (PermanentFileError, "ImageBan received no image data: copy the file again"),
    "103": (PermanentFileError, "ImageBan says this is not an image: convert it to JPEG, PNG or GIF"),
    "104": (TransientError, "ImageBan failed to store the image"),
    "105": (ConfigurationError, "invalid secret key"),
    "106": (PermanentFileError, "wrong image URL"),
    "107": (TransientError, "ImageBan could not fetch the image URL"),
    "108": (QuotaError, "guest daily upload limit for this IP reached"),
    "109": (QuotaError, "account daily upload limit reached"),
    "110": (ConfigurationError, "ImageBan received no credentials"),
}
# Answers about the credentials: their advice names the one this host sends.
_CREDENTIAL_CODES = frozenset({"100", "105", "110", "401", "403"})

# HTTP status without an API error body -> (class, message); anything else >= 300 is transient.
_HTTP_STATUS: dict[int, tuple[type[ServiceError], str]] = {
    401: (ConfigurationError, "credentials refused"),
    403: (ConfigurationError, "access forbidden"),
    404: (ConfigurationError, "no API at this address: check api_url"),
    405: (ConfigurationError, "no upload API at this address: check api_url"),
    410: (ConfigurationError, "no API at this address any more: check api_url"),
    413: (PermanentFileError, "image refused as too large: resize or recompress it"),
    429: (TransientError, "too many requests"),
}

_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_EXTENSION = {"jpeg": "jpg", "png": "png", "gif": "gif"}


class ImageBanHost:
    """Uploads to ImageBan as a guest (`client_id`) or into an account (`secret_key`).

    `secret_key` wins when both are given (`Authorization: Bearer`); otherwise `client_id`
    (`Authorization: TOKEN`). The old `secret_key` form field is never sent. `album` is sent
    only with account auth; for a guest it is dropped (ImageBan would refuse it).

    The `client` belongs to the caller (shared by every host), so `close` leaves it open;
    `timeout` (seconds) is this host's own, whatever the client's default.
    Stateless apart from it, so safe to use from several threads.
    """

    def __init__(
        self,
        name: str,
        *,
        api_url: str = DEFAULT_API_URL,
        client: HttpPoster,
        client_id: str | None = None,
        secret_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if not secret_key and not client_id:
            raise ValueError(f"ImageBan host {name!r} needs secret_key or client_id")
        self.name = name
        self.service = f"imageban:{name}"
        self._api_url = api_url
        self._where = display_url(api_url)  # its login or a key in its query are secrets
        self._client = client
        self._timeout = timeout
        self._secrets = tuple(key for key in (secret_key, client_id) if key)
        self._authorization = f"Bearer {secret_key}" if secret_key else f"TOKEN {client_id}"

    @property
    def auth_scheme(self) -> str:
        """ "account" (secret key, Bearer) or "guest" (client id, TOKEN): for status and logs."""
        return "account" if self._authorization.startswith("Bearer ") else "guest"

    def upload(self, request: UploadRequest) -> Uploaded:
        """Upload one file; return where it now lives.

        The file is checked first (JPEG/PNG/GIF, ≤ 10 MB, complete; from `request.image`
        when the caller already inspected it) and refused with `PermanentFileError`
        before any request. It is sent from `request.content` when the caller read it
        (small files), otherwise streamed from disk, never read whole.
        Raise only `ServiceError` subclasses, plus `FileNotFoundError` if the file is gone.
        Not idempotent: each call that succeeds creates a new image on ImageBan.
        """
        try:
            info = request.image or inspect_image(request.path)
        except PermanentFileError as exc:
            raise PermanentFileError(exc.message, service=self.service) from exc
        if not info.complete:
            raise PermanentFileError(
                f"{request.path.name} is a truncated {info.kind.upper()}: "
                "the file ends before the image does; copy it again",
                service=self.service,
            )
        fields = {"name": request.name}
        if request.album and self.auth_scheme == "account":
            fields["album"] = request.album
        filename = _ascii_filename(request.name, info)
        if request.content is not None:
            response = self._post(data=fields, files={"image": (filename, request.content, info.mime)})
        else:
            with request.path.open("rb") as fileobj:
                response = self._post(data=fields, files={"image": (filename, fileobj, info.mime)})
        return self._interpret(response, info)

    def close(self) -> None:
        """Nothing to release: the HTTP client is owned (and closed) by the caller."""

    def _post(self, **kwargs: Any) -> httpx.Response:
        """Send the request; the one place httpx's exceptions are translated.

        A key httpx cannot encode fails while the request is built, in an error whose repr
        holds the key: it is replaced (`from None`) by one that does not.
        """
        try:
            return self._client.post(
                self._api_url, headers={"Authorization": self._authorization}, timeout=self._timeout, **kwargs
            )
        except UnicodeEncodeError:
            raise ConfigurationError(
                "the secret key or client id holds a character that cannot be sent in an HTTP header "
                "(non-ASCII?): copy it again",
                service=self.service,
            ) from None
        except httpx.HTTPError as exc:
            raise network_error(
                exc, where=self._where, reason=self._scrub(str(exc)), service=self.service
            ) from exc

    def _interpret(self, response: httpx.Response, info: ImageInfo) -> Uploaded:
        """Turn an answer into `Uploaded`, or raise the one error class it means."""
        try:
            body: Any = response.json()
        except (ValueError, RecursionError):  # not JSON, not even text, or nested too deep
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and "code" in error:
            code = str(error["code"]).strip()
            api_message = self._scrub(str(error.get("message") or ""))
            cls, meaning = _API_CODES.get(code, (TransientError, f"unknown ImageBan error: {api_message}"))
            if cls is TransientError:  # an error the API answered with: nothing was stored
                raise TransientError(meaning, service=self.service, code=code, refused=True)
            raise cls(self._advised(meaning, code), service=self.service, code=code)
        status = response.status_code
        if status >= 300:
            cls, meaning = _HTTP_STATUS.get(status, (TransientError, f"HTTP {status} from ImageBan"))
            if cls is TransientError:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                refused = status == 429  # turned away unread; a 5xx may come after the work
                raise TransientError(
                    meaning, service=self.service, code=str(status), retry_after=retry_after, refused=refused
                )
            raise cls(self._advised(meaning, str(status)), service=self.service, code=str(status))
        if not isinstance(body, dict):
            raise self._malformed("not a JSON object")
        data = body.get("data")
        if isinstance(data, list) and data:
            data = data[0]
        if not isinstance(data, dict):
            raise self._malformed("no upload data")
        return self._uploaded(data, info)

    def _malformed(self, what: str) -> TransientError:
        """A success status with a body that says nothing usable (a PHP notice before the JSON,
        a proxy's page): the image may well be stored, so it is not sent again at once."""
        message = f"malformed answer from ImageBan ({what})"
        return TransientError(message, service=self.service, unanswered=True)

    def _uploaded(self, data: dict[str, Any], info: ImageInfo) -> Uploaded:
        """`size` and `resolution` fall back to the local file's; id and both links are required."""
        remote_id, link, short_link = (_text(data.get(key)) for key in ("id", "link", "short_link"))
        if not remote_id or not link.startswith("http") or not short_link.startswith("http"):
            raise self._malformed("no id or links")
        size_text = _text(data.get("size"))
        size = int(size_text) if size_text.isdigit() else info.size
        match = _RESOLUTION.match(_text(data.get("resolution")))
        width, height = (int(match[1]), int(match[2])) if match else (info.width, info.height)
        return Uploaded(
            remote_id=remote_id,
            link=link,
            short_link=short_link,
            size=size,
            resolution=f"{width}x{height}",
            delete_hash=_text(data.get("delete_hash")) or None,
        )

    def _advised(self, meaning: str, code: str) -> str:
        """`meaning`, for an answer about the credentials with what to check: the one sent."""
        if code not in _CREDENTIAL_CODES:
            return meaning
        key = "secret_key" if self.auth_scheme == "account" else "client_id"
        return f"{meaning}: check {key} (or {key}_file) of host {self.name!r} in the config"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _text(value: Any) -> str:
    """A string or number from the answer as stripped text ("" for anything else)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value).strip()


def _ascii_filename(name: str, info: ImageInfo) -> str:
    """A multipart file name that survives any server: ASCII letters, digits, "._-" only.

    The real (possibly Cyrillic or Chinese) name travels in the `name` field instead.
    """
    stem = name.rsplit(".", 1)[0] if "." in name else name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return f"{safe or 'image'}.{_EXTENSION[info.kind]}"
