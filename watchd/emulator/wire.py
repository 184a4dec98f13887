"""Request bodies as the two APIs read them, and the shape of an API's answer.

Bodies are parsed the way a PHP-style backend sees them: fields by name, the last of a
repeated name wins, and a body that cannot be parsed is simply a body without fields (the
API then answers "no data" or "parameter error", as the real services do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import HTTP
from urllib.parse import parse_qsl

_HEADER_PARSER = HeaderParser(policy=HTTP)


@dataclass(frozen=True)
class Part:
    """One form field: its raw bytes, and the filename when it was sent as a file."""

    value: bytes
    filename: str | None = None

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Answer:
    """What an API decided: the JSON payload, its code as text, and the auth scheme seen.

    `code` is the ImageBan error code ("105") or "200" on success, or the Baidu errno ("0").
    `auth` is how the caller authenticated (see `RequestRecord.auth`).
    """

    payload: object
    code: str
    auth: str


def media_type(content_type: str) -> tuple[str, Message]:
    """The lower-cased media type of a Content-Type header, and the header for its params."""
    header = Message()
    header["Content-Type"] = content_type or "application/octet-stream"
    return header.get_content_type(), header


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """Fields of a multipart/form-data or application/x-www-form-urlencoded body; else {}."""
    kind, header = media_type(content_type)
    if kind == "multipart/form-data":
        boundary = header.get_param("boundary")
        return _multipart(body, boundary) if isinstance(boundary, str) and boundary else {}
    if kind == "application/x-www-form-urlencoded":
        return {name: Part(value.encode()) for name, value in _urlencoded(body).items()}
    return {}


def parse_object(content_type: str, body: bytes) -> dict[str, object] | None:
    """A JSON object body (any charset parameter) or a form-encoded one; None if neither."""
    kind, _ = media_type(content_type)
    if kind == "application/json":
        try:
            value = json.loads(body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    if kind == "application/x-www-form-urlencoded":
        return dict(_urlencoded(body))
    return None


def is_json_int(value: object) -> bool:
    """A JSON integer: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _urlencoded(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return {}
    return dict(parse_qsl(text, keep_blank_values=True))


def _multipart(body: bytes, boundary: str) -> dict[str, Part]:
    """Parse per RFC 7578; a body without its closing delimiter yields no fields at all."""
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    fields: dict[str, Part] = {}
    for section in sections[1:]:  # sections[0] is the preamble
        if section.startswith(b"--"):
            return fields
        rest = section.lstrip(b" \t")
        if not rest.startswith(b"\r\n"):
            return {}
        head, sep, value = rest[2:].partition(b"\r\n\r\n")
        if not sep:
            return {}
        headers = _HEADER_PARSER.parsestr(head.decode("utf-8", errors="replace") + "\r\n")
        disposition = headers.get("content-disposition")
        params = getattr(disposition, "params", {})
        name = params.get("name")
        if name:
            fields[name] = Part(value, params.get("filename"))
    return {}
