"""Retrying transient failures: short retries inside one call, and the delay before the next one.

Clients never retry by themselves; the pipeline and the batcher wrap each single call in
`RetryPolicy.call` (a few quick attempts with tenacity), and when those are exhausted they
store a next-attempt time from `RetryPolicy.next_attempt_at` in the journal, so long waits
never hold a worker.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from watchd.config import RetrySettings

from watchd.errors import TransientError

T = TypeVar("T")

# Items in a row (no success between) that failed even after their quick retries before the
# service itself is taken to be down: one can be a bad item, two in a row are the service.
OUTAGE_AFTER = 2
# The longest Retry-After honoured, in seconds. A server can ask for any wait (a
# misconfigured one sends `Retry-After: 999999999`), which would park the queue for decades;
# by a day later the daily quotas have reset and an operator has seen the log, so work is
# tried again by then at the latest.
MAX_RETRY_AFTER = 24 * 3600.0

log = logging.getLogger(__name__)


def call_with_retry(
    fn: Callable[[], T],
    *,
    attempts: int = 3,
    initial: float = 0.5,
    maximum: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    describe: str = "",
    idempotent: bool = True,
    keep_trying: Callable[[], bool] | None = None,
) -> T:
    """Return `fn()`, calling it up to `attempts` times while it raises `TransientError`.

    Waits between attempts are exponential with full jitter (uniform in 0..initial·2ⁿ⁻¹,
    capped at `maximum`) and never shorter than the error's `retry_after`. When the server
    asks for a longer wait than `maximum`, no further attempt is made: the error is raised
    at once so the caller can defer by `retry_after` instead of blocking. Unless `fn` is
    `idempotent`, an error after which the service may have carried the request out
    (`TransientError.unanswered`) is raised at once too, with a WARNING saying so: an
    upload repeated then would be stored twice, while the caller's deferral comes after a
    backoff long enough for a slow service to finish. No retry is made once `keep_trying`
    says False (the service was paused meanwhile). Each retry is logged once at
    WARNING, a success after retries once at INFO. Raise the last `TransientError` when
    attempts are exhausted; any other exception passes through at once.
    """
    try:  # the common case, a first success, without tenacity's bookkeeping (~40 µs a call)
        return fn()
    except TransientError as exc:
        what = describe or getattr(fn, "__name__", "call")
        if not _repeatable(exc, idempotent, what) or attempts <= 1 or (exc.retry_after or 0.0) > maximum:
            raise
        first_failure: TransientError | None = exc
        last_failure: TransientError = exc

    def again() -> T:
        """`fn`, except that the first attempt is the failure that already happened, and none
        is made once `keep_trying` says no (the service was paused, or watchd is stopping,
        while this retry slept)."""
        nonlocal first_failure, last_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure
        if keep_trying is not None and not keep_trying():
            raise _GaveUp(last_failure)
        try:
            return fn()
        except TransientError as failure:
            last_failure = failure
            raise

    # Only now: a first success (nearly every call) never needs tenacity, and importing it
    # costs ~50 ms of every `watchd sync`'s start-up.
    from tenacity import Retrying, retry_if_exception, wait_random_exponential

    jitter = wait_random_exponential(multiplier=initial, max=maximum)

    def stop(state: RetryCallState) -> bool:
        paused = keep_trying is not None and not keep_trying()
        return state.attempt_number >= attempts or _retry_after(state) > maximum or paused

    def wait(state: RetryCallState) -> float:
        return max(jitter(state), _retry_after(state))

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        code = f" code {error.code}" if isinstance(error, TransientError) and error.code else ""
        log.warning(
            "%s: attempt %d/%d failed (%s%s: %s); retrying in %.1f s",
            what,
            state.attempt_number,
            attempts,
            type(error).__name__,
            code,
            error,
            delay,
        )

    retrying = Retrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception(lambda error: _repeatable(error, idempotent, what)),
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        result = retrying(again)
    except _GaveUp as gave_up:
        raise gave_up.failure from None
    tries = retrying.statistics.get("attempt_number", 1)
    if tries > 1:
        log.info("%s: succeeded on attempt %d/%d", what, tries, attempts)
    return result


class _GaveUp(Exception):
    """No retry was made after all (see `call_with_retry`): `failure` is what to raise."""

    def __init__(self, failure: TransientError) -> None:
        super().__init__(str(failure))
        self.failure = failure


def backoff_delay(attempt: int, *, initial: float = 30.0, maximum: float = 3600.0) -> float:
    """Return the seconds to wait before attempt number `attempt + 1` of queued work.

    Exponential (initial·2ⁿ⁻¹, capped at `maximum`) with "equal jitter": at least half the
    step, so a queue never comes back almost at once, and spread over the other half so
    items deferred together do not all return together.
    """
    doublings = min(max(0, attempt - 1), 64)  # past the cap anyway; 2.0 ** 1024 overflows
    step = min(maximum, initial * 2.0**doublings)
    return step / 2 + random.uniform(0, step / 2)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the seconds an HTTP `Retry-After` header asks for, or None if absent or unreadable.

    The header holds either delta-seconds (fractions tolerated) or an HTTP date; a date in
    the past means 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(text)
        return seconds if 0 <= seconds < float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _repeatable(error: BaseException, idempotent: bool, what: str) -> bool:
    """Whether `error` may be followed by another attempt at once (see `call_with_retry`)."""
    if not isinstance(error, TransientError):
        return False
    if error.unanswered and not idempotent:
        log.warning(
            "%s: %s; the request was sent, so %s may have carried it out: not repeated at once "
            "(that could do it twice), it is tried again later from the queue",
            what,
            error,
            error.service or "the service",
        )
        return False
    return True


def _retry_after(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, TransientError) and error.retry_after is not None:
        return error.retry_after
    return 0.0


class RetryPolicy:
    """The configured retries (`retry:`), shared by the upload workers and the Baidu batcher,
    and the outages they reveal: a service that fails item after item is left alone for a
    growing backoff instead of being tried once per queued item."""

    def __init__(
        self, settings: RetrySettings, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._failures: Counter[str] = Counter()  # per service: items in a row that failed
        self._outages: Counter[str] = Counter()  # per service: outage pauses in a row
        self._paused_until: dict[str, float] = {}
        self._not_before: dict[str, float] = {}  # per service: until when its Retry-After holds

    def note_failure(self, service: str, error: BaseException) -> float | None:
        """An item for `service` failed even after its quick retries. From the `OUTAGE_AFTER`th
        in a row, return until when to leave the service alone (the backoff, longer with each
        outage in a row, never shorter than a Retry-After); None while it may be the item, or
        while the pause announced last is still running."""
        with self._lock:
            self._failures[service] += 1
            if self._failures[service] < OUTAGE_AFTER or self.clock() < self._paused_until.get(service, 0):
                return None
            self._outages[service] += 1
            until = self.next_attempt_at(self._outages[service], error)
            self._paused_until[service] = until
            return until

    def note_success(self, service: str) -> None:
        """`service` answered: whatever failed before was not an outage, or it is over."""
        with self._lock:
            self._failures.pop(service, None)
            self._outages.pop(service, None)

    def call(
        self,
        fn: Callable[[], T],
        describe: str,
        *,
        service: str,
        paused: Callable[[], bool],
        idempotent: bool = True,
    ) -> T:
        """`fn()`, a request to `service`, with the quick retries of transient errors
        (`call_with_retry`); pass `idempotent=False` for a request that must not be repeated
        when its answer is lost.

        A `Retry-After` holds back every request to the service until it has passed, not only
        the one it answered: the other workers wait too (or, for a wait longer than the quick
        retries allow, are deferred without sending). No quick retry is made once `paused`
        says the service is (another worker found it down, out of quota or refusing the key),
        not even one that was already waiting to be made.
        """
        policy = self.settings

        def attempt() -> T:
            self._hold_back(service, paused)
            try:
                return fn()
            except TransientError as exc:
                if exc.retry_after:
                    until = self.clock() + min(exc.retry_after, MAX_RETRY_AFTER)
                    with self._lock:
                        self._not_before[service] = max(until, self._not_before.get(service, 0.0))
                raise

        return call_with_retry(
            attempt,
            attempts=policy.attempts,
            initial=policy.initial,
            maximum=policy.maximum,
            sleep=self.sleep,
            describe=describe,
            idempotent=idempotent,
            keep_trying=lambda: not paused(),
        )

    def _hold_back(self, service: str, paused: Callable[[], bool]) -> None:
        """Wait out the service's Retry-After, or if that is longer than a quick retry may
        wait, or the service was `paused` meanwhile, raise without sending (nothing reached
        the service: no quota is used)."""
        with self._lock:
            wait = self._not_before.get(service, 0.0) - self.clock()
        if wait <= 0:
            return
        if wait > self.settings.maximum:
            raise TransientError(
                f"asked to wait {wait:.0f} s more before the next request (Retry-After)",
                service=service,
                retry_after=wait,
                reached=False,
            )
        self.sleep(wait)
        if paused():
            raise TransientError("paused while waiting for its Retry-After", service=service, reached=False)

    def next_attempt_at(self, attempt: int, error: BaseException | None = None) -> float:
        """When queued work that failed `attempt` rounds in a row is tried again: the jittered
        backoff, and never sooner than a server's Retry-After (up to `MAX_RETRY_AFTER`)."""
        policy = self.settings
        delay = backoff_delay(attempt, initial=policy.requeue_initial, maximum=policy.requeue_maximum)
        if isinstance(error, TransientError) and error.retry_after:
            delay = max(delay, min(error.retry_after, MAX_RETRY_AFTER))
        return self.clock() + delay
