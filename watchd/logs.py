"""Logging for a daemon that lives in journald, on terminals and behind log shippers.

`setup_logging()` installs one stderr handler on the root logger (so warnings from
libraries get the same treatment) and sets the level of the "watchd" logger tree; other
loggers pass WARNING and above (only ERROR and above at level "error"). Every event is
exactly one line, whatever the layout:

- under systemd (`JOURNAL_STREAM` names our stderr): `<6>message`, the sd-daemon(3)
  priority prefix and no timestamp, since journald adds both the time and the unit;
- on a terminal: `12:00:00 INFO    message`, coloured by level unless `NO_COLOR` is set;
- otherwise, or with `fmt="text"`: `2024-05-01T12:00:00.000+00:00 INFO watchd.engine: message`;
- `fmt="json"`: one JSON object a line with ts, level, logger, msg and any `extra=` fields.

An exception is shown as one `Type: message` tail; the full traceback is added (newlines
escaped as `\\n`) only when the level is DEBUG. Before anything is formatted, the handler's
filters render the exception text and then `SecretFilter` removes every configured secret
(and its URL-encoded form) from the message, the exception text and string extras.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

LogFormat = Literal["auto", "text", "json"]

REDACTED = "***"
MIN_SECRET_LENGTH = 4

# sd-daemon(3) priorities, most severe first; anything below INFO is debug (7).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_COLOURS = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class SecretFilter(logging.Filter):
    """Replaces every secret, raw or URL-encoded, with "***" in a record's text, in place.

    Covers the formatted message (args merged in), `exc_text`, `stack_info` and string
    `extra=` values. Secrets shorter than four characters are ignored: they would redact
    ordinary words. Never drops a record.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add_secrets(secrets)

    def add_secrets(self, values: Iterable[str]) -> None:
        """Redact `values` too, from now on (a reload may bring new credentials)."""
        for value in values:
            if value and len(value) >= MIN_SECRET_LENGTH:
                self._secrets.update({value, quote(value, safe=""), quote_plus(value, safe="")})
        if self._secrets:
            # Longest first, so a secret that contains another is replaced whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def redact(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(_message(record))
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class _ExceptionText(logging.Filter):
    """Renders `exc_info` into `exc_text`: `Type: message`, or the full traceback when `full`.

    Runs before `SecretFilter`, so the secret filter sees the exact text that is printed.
    """

    def __init__(self, full: bool) -> None:
        super().__init__()
        self.full = full

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts = traceback.format_exception(exc) if self.full else traceback.format_exception_only(exc)
            record.exc_text = "".join(parts).rstrip("\n")
        return True


class _TextFormatter(logging.Formatter):
    """One human-readable line: journald (`<N>` prefix), terminal, or timestamped plain text."""

    def __init__(self, layout: Literal["journal", "tty", "plain"], colour: bool = False) -> None:
        super().__init__()
        self.layout = layout
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = one_line(_body(record))
        if self.layout == "journal":
            return f"<{_priority(record.levelno)}>{text}"
        if self.layout == "plain":
            return f"{_timestamp(record)} {record.levelname} {record.name}: {text}"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = f"{record.levelname:<8}"
        if self.colour:
            code = _COLOURS.get(record.levelname, "0")
            level = f"\x1b[{code}m{level}\x1b[0m"
            if record.levelno >= logging.WARNING:
                text = f"\x1b[{code}m{text}\x1b[0m"
        return f"\x1b[2m{stamp}\x1b[0m {level}{text}" if self.colour else f"{stamp} {level}{text}"


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update(_extras(record))
        if record.exc_text:
            event["exc"] = record.exc_text
        if record.stack_info:
            event["stack"] = record.stack_info
        return json.dumps(event, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler[TextIO]):
    """The handler `setup_logging` owns; a marker so that a second call replaces it."""


def setup_logging(level: str = "info", fmt: LogFormat = "auto", secrets: Iterable[str] = ()) -> None:
    """Send the "watchd" logger tree at `level` (and other loggers' warnings, unless `level`
    is "error") to stderr; nothing below `level` is shown, whatever a logger's own level.

    Idempotent: a second call replaces the handler of the first (the CLI calls it again
    once the config, and so the secrets, are known). Raise ValueError for an unknown level.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    stream = sys.stderr
    handler = _Handler(stream)
    # The handler filters too: a logger whose level is set explicitly (the watcher lets
    # watchdog's overflow warnings through to hear them) must not show more than asked for.
    handler.setLevel(numeric)
    handler.setFormatter(_formatter(fmt, stream))
    handler.addFilter(_ExceptionText(full=numeric <= logging.DEBUG))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("watchd").setLevel(numeric)


def add_secrets(values: Iterable[str]) -> None:
    """Redact `values` as well in everything logged from now on (used at config reload)."""
    for handler in logging.getLogger().handlers:
        for filt in handler.filters:
            if isinstance(filt, SecretFilter):
                filt.add_secrets(values)


def redact(text: str) -> str:
    """`text` with every secret the log filter knows replaced: for text kept outside the
    logs (a failure reason in the journal, shown by `status`)."""
    for handler in logging.getLogger().handlers:
        for filt in handler.filters:
            if isinstance(filt, SecretFilter):
                return filt.redact(text)
    return text


def _formatter(fmt: LogFormat, stream: TextIO) -> logging.Formatter:
    if fmt == "json":
        return _JsonFormatter()
    if fmt == "text":
        return _TextFormatter("plain")
    if _is_journal(stream):
        return _TextFormatter("journal")
    if stream.isatty():
        return _TextFormatter("tty", colour=not os.environ.get("NO_COLOR"))
    return _TextFormatter("plain")


def _is_journal(stream: TextIO) -> bool:
    """True when JOURNAL_STREAM ("dev:inode") names `stream`, as systemd sets it for journald."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):  # no fd (a StringIO), or no/garbled JOURNAL_STREAM
        return False


def _message(record: logging.LogRecord) -> str:
    """The message with its args merged; a mismatch must not crash the caller of log.info()."""
    try:
        return record.getMessage()
    except Exception:  # the record is still worth printing
        return f"{record.msg!r} (unformattable arguments: {record.args!r})"


def _body(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_text:
        text = f"{text}: {record.exc_text}"
    if record.stack_info:
        text = f"{text}\n{record.stack_info}"
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """`text` on one line with no control characters. A file name may hold any of them but
    "/" and NUL: a newline would split a journald entry, an escape sequence would drive the
    terminal of whoever reads the log or `status`. Newlines become `\\n`, the rest `\\x1b`."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


def _priority(levelno: int) -> int:
    return next((priority for threshold, priority in _PRIORITIES if levelno >= threshold), 7)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
