"""The one error taxonomy of watchd, shared by every host and indexer client.

Clients translate every failure (HTTP status, API code, network error) into exactly one
of these classes, in one place per client; the pipeline decides what to do from the class
alone and never looks at status codes or errno values::

    WatchdError
    ├── ServiceError                 something a remote service (or the way to it) answered
    │   ├── TransientError           retry with backoff, then keep queued with a next-attempt time
    │   ├── QuotaError               stop sending to that service until its daily reset
    │   ├── ConfigurationError       stop using that service, report loudly, keep work queued
    │   ├── PermanentFileError       this file (or payload item) can never succeed: fail it
    │   └── AlreadyDoneError         the service already has it: record as done
    └── ConfigError                  the local configuration is invalid (watchd check)

Messages never contain secrets: clients build them from codes and API messages only, and
name an address only as `display_url` shows it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class WatchdError(Exception):
    """Base of every error watchd raises on purpose."""


class ServiceError(WatchdError):
    """A failure talking to a remote service, already classified.

    `service` names the service ("imageban:me", "baidu"); `code` is the API's own code
    (or HTTP status) as text, for logs and `status`, or "" when there is none.
    """

    def __init__(self, message: str, *, service: str = "", code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.code = code

    @property
    def kind(self) -> str:
        """Short class name used in the journal and in `status` ("transient", "quota", …)."""
        return _kind_of(self)

    def __str__(self) -> str:
        where = f"{self.service}: " if self.service else ""
        code = f" (code {self.code})" if self.code else ""
        return f"{where}{self.message}{code}"

    @property
    def may_have_used_quota(self) -> bool:
        """Whether the service may have counted this request against its daily quota.

        A refusal (bad credentials, quota used up, a file or item it cannot take) stores
        nothing, so its unit goes back; what it already holds stays counted.
        """
        return isinstance(self, AlreadyDoneError)


class TransientError(ServiceError):
    """Network errors, timeouts, HTTP 5xx/429 and the APIs' own "try again" codes.

    `retry_after` is the server's Retry-After in seconds when it sent one. `reached` is False
    only when the request cannot have reached the service (no connection was ever made), so
    nothing it counts (a quota unit) was used. `unanswered` is True when the whole request
    went out and no usable answer came back (a read timeout, a dropped connection): the
    service may have carried it out, so a request that is not idempotent (an upload) must
    not be repeated at once. `refused` is True when the API answered with its own error
    code ("failed to store the image", "database error"): it stored nothing, so its quota
    unit goes back, or a failing day would pause uploads on units never used.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        code: str = "",
        retry_after: float | None = None,
        reached: bool = True,
        unanswered: bool = False,
        refused: bool = False,
    ) -> None:
        super().__init__(message, service=service, code=code)
        self.retry_after = retry_after
        self.reached = reached
        self.unanswered = unanswered
        self.refused = refused

    @property
    def may_have_used_quota(self) -> bool:
        """A request that reached the service may have been stored before the failure, unless
        the service said it refused it."""
        return self.reached and not self.refused


class QuotaError(ServiceError):
    """The service's daily quota is used up; nothing more is sent until its reset."""


class ConfigurationError(ServiceError):
    """Credentials or account state are wrong; the service is paused until the config changes."""


# What lifts a configuration pause, for a daemon and for a `watchd sync` run from cron alike.
AFTER_THE_CONFIG_IS_FIXED = (
    "once the config is fixed: reload the daemon (systemctl reload watchd) or run the next sync"
)


class PermanentFileError(ServiceError):
    """This one file or payload item can never succeed as it is; never retried automatically."""


class AlreadyDoneError(ServiceError):
    """The service already holds what we asked for (duplicate push, delete of a missing id)."""


class ConfigError(WatchdError):
    """The local configuration is invalid; `problems` lists every problem found, one a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def display_url(url: str) -> str:
    """`url` as a message may show it: without `user:password@`, query or fragment, where a
    login or an API key may be (messages reach the journal and `status`, which are not redacted)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


_KIND: dict[type, str] = {
    TransientError: "transient",
    QuotaError: "quota",
    ConfigurationError: "configuration",
    PermanentFileError: "permanent",
    AlreadyDoneError: "already_done",
}


def _kind_of(error: ServiceError) -> str:
    for cls, name in _KIND.items():
        if isinstance(error, cls):
            return name
    return "transient"
