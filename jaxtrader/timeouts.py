"""Time budgets: a wall-clock deadline for loops and a hard timeout for single calls.

Training checks a `Deadline` between steps so it can stop cleanly and still save. Inference runs the
model through a `TimeoutRunner` so a stuck call turns into a neutral trading signal instead of a
hung strategy.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    """Runs calls on one long-lived daemon worker thread with a timeout.

    The hand-off is a queue put and a bare lock the worker releases when done: the cheapest wake-up
    Python offers (a `concurrent.futures` Future adds a Condition and a Future per call, and its
    workers are joined at interpreter exit, so a stuck call would also hang shutdown). A call that
    overruns is abandoned (Python cannot kill a thread): its worker is told to exit after it and a
    fresh one takes the next call, so nothing queues behind the stuck one.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers = [_start_worker(self._jobs)]  # the current one last; earlier ones abandoned

    def call(self, fn: Callable[[], T], timeout_s: float, what: str = "call") -> T:
        job = _Job(fn)
        self._jobs.put(job)
        if not job.done.acquire(timeout=max(timeout_s, 0.0)):
            self._jobs.put(None)  # the stuck worker exits once its call returns, if ever
            self._jobs = queue.SimpleQueue()
            self._workers.append(_start_worker(self._jobs))
            # :g, not :.0f: a budget under 0.5 ms (--model-timeout-ms 0.01) read "within 0 ms".
            raise DeadlineExceeded(
                f"{what} did not finish within {timeout_s * 1000:g} ms; "
                "raise the timeout or use a smaller model"
            )
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def close(self, wait_s: float = 5.0) -> None:
        """Stops the worker and waits up to `wait_s` in all for it and any abandoned one to exit.

        Why wait: a daemon thread still alive when the interpreter finalizes is stopped where it
        next takes the GIL; inside a C++ call (the model on XLA) that unwinds C++ frames and can
        abort the process ("terminate called without an active exception", exit -6), seen
        intermittently at the end of `jaxtrader trade` under load."""
        self._jobs.put(None)
        deadline = time.monotonic() + max(wait_s, 0.0)
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(timeout=max(deadline - time.monotonic(), 0.0))


class _Job:
    """One call in flight: `done` is held until the worker has stored a result or an error."""

    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()


def _start_worker(jobs: queue.SimpleQueue[_Job | None]) -> threading.Thread:
    worker = threading.Thread(target=_work, args=(jobs,), name="jaxtrader-timeout", daemon=True)
    worker.start()
    return worker


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = job.fn()
        except BaseException as e:  # handed to the caller, which re-raises it
            job.error = e
        job.done.release()


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str = "call") -> T:
    """One-off timed call; prefer a long-lived `TimeoutRunner` on hot paths."""
    runner = TimeoutRunner()
    try:
        return runner.call(fn, timeout_s, what)
    finally:
        runner.close()
