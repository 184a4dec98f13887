"""Fault injection for the emulator: what can go wrong, and the seeded dice that decide when."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from watchd.emulator.wire import is_json_int

T = TypeVar("T")

_RATES = ("http_error_rate", "drop_rate", "transient_rate")


@dataclass
class Faults:
    """Faults injected into API calls (never into link GETs or admin endpoints).

    Every field defaults to "no fault". Fields may be assigned at any time from any thread;
    `Emulator.set_faults` (and `POST /_emulator/faults`) validate before assigning.
    `retry_after` may be fractional (e.g. "0.2") so that tests stay quick.
    """

    latency: float = 0.0
    http_error_rate: float = 0.0
    drop_rate: float = 0.0
    transient_rate: float = 0.0
    imageban_quota: int | None = None
    baidu_quota: int | None = None
    retry_after: float | None = None
    data_as_list: bool = False
    seed: int = 0
    reject_titles_containing: str | None = None  # Baidu answers errno 2 for a call holding such a title

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a number in [0, 1]" for name in _RATES if not _is_rate(getattr(self, name))
        ]
        if not _is_number(self.latency) or self.latency < 0:
            problems.append("latency must be a number >= 0")
        if self.retry_after is not None and (not _is_number(self.retry_after) or self.retry_after < 0):
            problems.append("retry_after must be null or a number >= 0")
        for name in ("imageban_quota", "baidu_quota"):
            value = getattr(self, name)
            if value is not None and (not is_json_int(value) or value < 0):
                problems.append(f"{name} must be null or an integer >= 0")
        if not isinstance(self.data_as_list, bool):
            problems.append("data_as_list must be true or false")
        if not is_json_int(self.seed):
            problems.append("seed must be an integer")
        if self.reject_titles_containing is not None and not isinstance(self.reject_titles_containing, str):
            problems.append("reject_titles_containing must be null or a string")
        if problems:
            raise ValueError("; ".join(problems))


def _is_number(value: object) -> bool:
    return is_json_int(value) or isinstance(value, float)


def _is_rate(value: object) -> bool:
    return _is_number(value) and 0 <= value <= 1  # type: ignore[operator]


class Dice:
    """The live `Faults` and a seeded RNG; thread-safe.

    The RNG is re-seeded when `update` sets a seed and whenever `faults.seed` was assigned
    another value, so a given seed and sequence of calls always injects the same faults.
    A rate of 0 draws nothing and a rate of 1 always hits.
    """

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._lock = threading.Lock()
        self._rng = random.Random(faults.seed)
        self._seeded_with = faults.seed

    def update(self, **changes: Any) -> None:
        """Validate `changes` as a whole, then assign them. Raise ValueError naming what is wrong."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Faults)})
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        with self._lock:
            checked = dataclasses.replace(self.faults, **changes)
            for name in changes:
                setattr(self.faults, name, getattr(checked, name))
            if "seed" in changes:  # setting a seed, even the same one, restarts its sequence
                self._rng.seed(self.faults.seed)
                self._seeded_with = self.faults.seed

    def clear(self) -> None:
        """Back to "no fault" and a fresh RNG (in place: whoever holds `faults` sees it)."""
        self.update(**dataclasses.asdict(Faults()))

    def hit(self, rate: float) -> bool:
        """True with probability `rate`."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._lock:
            return self._reseeded().random() < rate

    def pick(self, options: Sequence[T]) -> T:
        with self._lock:
            return self._reseeded().choice(options)

    def _reseeded(self) -> random.Random:
        if self.faults.seed != self._seeded_with:
            self._rng.seed(self.faults.seed)
            self._seeded_with = self.faults.seed
        return self._rng
