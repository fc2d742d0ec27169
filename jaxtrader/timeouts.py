"""Time budgets: a wall-clock deadline for loops and a hard timeout for single calls.

Training checks a `Deadline` between steps so it can stop cleanly and still save. Inference runs the
model through `call_with_timeout` so a stuck call turns into a neutral trading signal instead of a
hung strategy.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from jaxtrader.errors import DeadlineExceeded

T = TypeVar("T")


@dataclass
class Deadline:
    """A wall-clock budget; `seconds=None` never expires."""

    seconds: float | None
    clock: Callable[[], float] = time.monotonic
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        if self.seconds is None:
            return float("inf")
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0.0


class TimeoutRunner:
    """Runs calls on one reusable worker thread with a timeout.

    A call that overruns is abandoned (Python cannot kill a thread); the runner then starts a fresh
    worker so the next call is not queued behind the stuck one.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def call(self, fn: Callable[[], T], timeout_s: float, what: str = "call") -> T:
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            raise DeadlineExceeded(
                f"{what} did not finish within {timeout_s * 1000:.0f} ms; "
                "raise the timeout or use a smaller model"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str = "call") -> T:
    """One-off timed call; prefer a long-lived `TimeoutRunner` on hot paths."""
    runner = TimeoutRunner()
    try:
        return runner.call(fn, timeout_s, what)
    finally:
        runner.close()
