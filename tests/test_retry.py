"""The retry wrapper: what is retried, how long it waits, what it logs; and the queue backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from watchd.config import RetrySettings
from watchd.errors import ConfigurationError, PermanentFileError, QuotaError, TransientError
from watchd.retry import MAX_RETRY_AFTER, RetryPolicy, backoff_delay, call_with_retry, parse_retry_after


def failing(errors: list[Exception], result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """A function that raises `errors` in turn, then returns `result`; and its call counter."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def transient(code: str = "503", retry_after: float | None = None) -> TransientError:
    return TransientError("busy", service="imageban:me", code=code, retry_after=retry_after)


def unanswered() -> TransientError:
    """What a read timeout becomes: sent whole, no answer, so maybe carried out."""
    return TransientError("timed out waiting for an answer", service="imageban:me", unanswered=True)


def test_success_first_time_does_not_sleep() -> None:
    sleeps: list[float] = []
    fn, calls = failing([])
    assert call_with_retry(fn, sleep=sleeps.append) == "ok"
    assert (len(calls), sleeps) == (1, [])


def test_transient_then_success(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    fn, calls = failing([transient(), transient()])
    with caplog.at_level(logging.INFO, logger="watchd.retry"):
        assert call_with_retry(fn, sleep=sleeps.append, describe="upload of cat.png") == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("upload of cat.png: attempt 1/3 failed (TransientError code 503: ")
    assert "retrying in" in warnings[0]
    assert "attempt 2/3" in warnings[1]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["upload of cat.png: succeeded on attempt 3/3"]


def test_exhausted_reraises_last_transient() -> None:
    sleeps: list[float] = []
    errors: list[Exception] = [transient("500"), transient("502"), transient("504"), transient("999")]
    fn, calls = failing(errors)
    with pytest.raises(TransientError) as caught:
        call_with_retry(fn, attempts=3, sleep=sleeps.append)
    assert caught.value.code == "504"
    assert (len(calls), len(sleeps)) == (3, 2)


@pytest.mark.parametrize(
    "error",
    [
        QuotaError("q", code="108"),
        ConfigurationError("c", code="105"),
        PermanentFileError("p", code="103"),
        ValueError("a bug"),
        FileNotFoundError("gone"),
    ],
)
def test_non_transient_errors_pass_through_at_once(error: Exception) -> None:
    sleeps: list[float] = []
    fn, calls = failing([error])
    with pytest.raises(type(error)) as caught:
        call_with_retry(fn, sleep=sleeps.append)
    assert caught.value is error
    assert (len(calls), sleeps) == (1, [])


def test_backoff_is_exponential_with_full_jitter_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pin the jitter to its upper bound to see the exponential envelope.
    monkeypatch.setattr("random.uniform", lambda low, high: high)
    sleeps: list[float] = []
    fn, _ = failing([transient() for _ in range(5)])
    call_with_retry(fn, attempts=6, initial=0.5, maximum=3.0, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_within_envelope() -> None:
    sleeps: list[float] = []
    fn, _ = failing([transient() for _ in range(40)])
    call_with_retry(fn, attempts=41, initial=0.5, maximum=4.0, sleep=sleeps.append)
    assert all(0 <= s <= 4.0 for s in sleeps)
    assert len(set(sleeps)) > 30  # jittered, not a fixed schedule


def test_retry_after_is_a_floor() -> None:
    sleeps: list[float] = []
    fn, _ = failing([transient("429", retry_after=7.0)])
    assert call_with_retry(fn, initial=0.1, maximum=30.0, sleep=sleeps.append) == "ok"
    assert sleeps == [7.0]


def test_retry_after_longer_than_maximum_gives_up_at_once() -> None:
    sleeps: list[float] = []
    fn, calls = failing([transient("429", retry_after=600.0)])
    with pytest.raises(TransientError) as caught:
        call_with_retry(fn, maximum=30.0, sleep=sleeps.append)
    assert caught.value.retry_after == 600.0
    assert (len(calls), sleeps) == (1, [])


@pytest.mark.parametrize("first", [[], [transient()]], ids=["at first", "after a 503"])
def test_an_unanswered_call_that_is_not_idempotent_is_not_repeated(
    first: list[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    sleeps: list[float] = []
    fn, calls = failing([*first, unanswered(), unanswered()])
    with caplog.at_level(logging.WARNING, logger="watchd.retry"), pytest.raises(TransientError) as caught:
        call_with_retry(fn, attempts=5, sleep=sleeps.append, describe="upload of cat.png", idempotent=False)
    assert caught.value.unanswered
    assert (len(calls), len(sleeps)) == (len(first) + 1, len(first))
    said = caplog.records[-1].getMessage()
    assert said.startswith("upload of cat.png: imageban:me: timed out waiting for an answer; ")
    assert "imageban:me may have carried it out: not repeated at once" in said
    assert "tried again later from the queue" in said


def test_other_transient_errors_of_a_call_that_is_not_idempotent_are_retried() -> None:
    fn, calls = failing([transient(), transient("104")])
    assert call_with_retry(fn, sleep=lambda _: None, idempotent=False) == "ok"
    assert len(calls) == 3


def test_an_unanswered_idempotent_call_is_retried() -> None:
    fn, calls = failing([unanswered(), unanswered()])  # a Baidu push: a repeat is answered "duplicate"
    assert call_with_retry(fn, sleep=lambda _: None) == "ok"
    assert len(calls) == 3


def test_retry_log_holds_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    fn, _ = failing([transient()])
    with caplog.at_level(logging.WARNING, logger="watchd.retry"):
        call_with_retry(fn, sleep=lambda _: None, describe="Baidu push of 3")
    (record,) = caplog.records
    assert "imageban:me: busy (code 503)" in record.getMessage()


def test_works_with_a_fake_host(tmp_path) -> None:
    from tests.fakes import FakeHost
    from tests.imagegen import png
    from watchd.hosts.base import UploadRequest

    path = tmp_path / "a.png"
    path.write_bytes(png(3, 3))
    host = FakeHost("fake")
    host.fail_next.append(transient("104"))
    uploaded = call_with_retry(lambda: host.upload(UploadRequest(path, "a.png")), sleep=lambda _: None)
    assert uploaded.resolution == "3x3"
    assert host.calls == 2


def test_a_huge_retry_after_is_honoured_for_a_day_at_most() -> None:
    now = 1_000_000.0
    policy = RetryPolicy(RetrySettings(), clock=lambda: now, sleep=lambda _: None)
    huge = transient("429", retry_after=999_999_999.0)  # parked until 2057 without the cap
    assert policy.next_attempt_at(1, huge) == now + MAX_RETRY_AFTER == now + 24 * 3600
    assert policy.note_failure("imageban:me", huge) is None  # the first failure may be the item's
    assert policy.note_failure("imageban:me", huge) == now + MAX_RETRY_AFTER  # the outage pause
    assert policy.next_attempt_at(1, transient("429", retry_after=7200.0)) == now + 7200.0


class FakeTime:
    """A clock that `sleep` moves on, and the sleeps it was asked for."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_retry_after_holds_back_every_request_to_the_service_not_only_the_one_it_answered() -> None:
    time_ = FakeTime()
    policy = RetryPolicy(RetrySettings(initial=0.001), clock=lambda: time_.now, sleep=time_.sleep)
    slowed, _ = failing([transient("429", retry_after=5.0)])
    assert policy.call(slowed, "upload 1", service="imageban:me", paused=lambda: False) == "ok"
    assert time_.sleeps == [5.0]
    time_.now -= 3.0  # another worker's upload, sent 2 s after the 429 arrived
    other, calls = failing([])
    assert policy.call(other, "upload 2", service="imageban:me", paused=lambda: False) == "ok"
    assert time_.sleeps == [5.0, 3.0] and calls == [1]  # it waited for the rest of the 5 s
    elsewhere, _ = failing([])
    policy.call(elsewhere, "push", service="baidu", paused=lambda: False)  # another service: no wait
    assert time_.sleeps == [5.0, 3.0]


def test_a_retry_after_longer_than_a_quick_retry_defers_the_other_requests_unsent() -> None:
    time_ = FakeTime()
    policy = RetryPolicy(RetrySettings(), clock=lambda: time_.now, sleep=time_.sleep)
    slowed, _ = failing([transient("429", retry_after=600.0)])
    with pytest.raises(TransientError):
        policy.call(slowed, "upload 1", service="imageban:me", paused=lambda: False)
    other, calls = failing([])
    with pytest.raises(TransientError) as caught:
        policy.call(other, "upload 2", service="imageban:me", paused=lambda: False)
    assert calls == [] and time_.sleeps == []
    assert caught.value.retry_after == 600.0 and not caught.value.may_have_used_quota


def test_no_quick_retry_once_the_service_is_paused() -> None:
    time_ = FakeTime()
    policy = RetryPolicy(RetrySettings(attempts=5), clock=lambda: time_.now, sleep=time_.sleep)
    paused = [False]

    def down() -> str:
        paused[0] = True  # meanwhile another worker found the service down and paused it
        raise transient()

    with pytest.raises(TransientError):
        policy.call(down, "upload", service="imageban:me", paused=lambda: paused[0])
    assert time_.sleeps == []  # not tried again


def test_a_quick_retry_that_wakes_up_to_a_pause_or_a_stop_is_not_made() -> None:
    time_ = FakeTime()
    paused = [False]

    def sleep(seconds: float) -> None:
        time_.sleep(seconds)
        paused[0] = True  # while it slept, another worker paused the service, or watchd is stopping

    policy = RetryPolicy(RetrySettings(attempts=5), clock=lambda: time_.now, sleep=sleep)
    fn, calls = failing([transient("503"), transient("503")])
    with pytest.raises(TransientError) as caught:
        policy.call(fn, "upload", service="imageban:me", paused=lambda: paused[0])
    assert calls == [1] and len(time_.sleeps) == 1 and caught.value.code == "503"


@pytest.mark.parametrize("attempt", [1, 2, 5, 20])
def test_backoff_delay_equal_jitter(attempt: int) -> None:
    step = min(3600.0, 30.0 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt) for _ in range(200)]
    assert all(step / 2 <= d <= step for d in delays)
    assert max(delays) - min(delays) > step / 10


def test_backoff_delay_custom_bounds_and_attempt_zero() -> None:
    assert 5.0 <= backoff_delay(0, initial=10.0) <= 10.0
    assert 50.0 <= backoff_delay(99, initial=10.0, maximum=100.0) <= 100.0


def test_backoff_delay_after_weeks_of_failures_stays_at_the_cap() -> None:
    for attempt in (1025, 10**6):  # 2.0 ** 1024 would overflow
        assert 1800.0 <= backoff_delay(attempt) <= 3600.0


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("0.2") == 0.2
    assert parse_retry_after("-5") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime(2026, 1, 1, 12, 1, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=now) == 90.0
    earlier = format_datetime(datetime(2026, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
