"""Deadline and TimeoutRunner: values and errors come back, overruns turn into DeadlineExceeded."""

from __future__ import annotations

import threading
import time

import pytest

from jaxtrader.errors import DeadlineExceeded, DeepLearningError
from jaxtrader.timeouts import Deadline, TimeoutRunner, call_with_timeout


def test_deadline_counts_down_on_its_clock() -> None:
    now = [100.0]
    d = Deadline(10.0, clock=lambda: now[0])
    assert d.remaining() == 10.0 and not d.expired()
    now[0] = 107.5
    assert d.elapsed() == 7.5 and d.remaining() == 2.5
    now[0] = 110.0
    assert d.expired()
    assert Deadline(None, clock=lambda: now[0]).remaining() == float("inf")


def test_runner_returns_values_and_reraises_errors_on_one_worker() -> None:
    runner = TimeoutRunner()
    try:
        threads = {runner.call(lambda: threading.get_ident(), 1.0) for _ in range(50)}
        assert len(threads) == 1 and threading.get_ident() not in threads
        assert [runner.call(lambda i=i: i * i, 1.0) for i in range(5)] == [0, 1, 4, 9, 16]

        def boom() -> None:
            raise ValueError("bad input row 7")

        with pytest.raises(ValueError, match="bad input row 7"):
            runner.call(boom, 1.0)
        assert runner.call(lambda: "still works", 1.0) == "still works"
    finally:
        runner.close()


def test_overrun_raises_and_the_next_call_does_not_queue_behind_it() -> None:
    runner = TimeoutRunner()
    release = threading.Event()
    try:
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match=r"model prediction did not finish within 50 ms"):
            runner.call(release.wait, 0.05, "model prediction")
        assert 0.04 <= time.perf_counter() - start < 1.0
        # The stuck call still holds its worker; a fresh one answers at once.
        start = time.perf_counter()
        assert runner.call(lambda: 42, 1.0) == 42
        assert time.perf_counter() - start < 0.5
    finally:
        release.set()
        runner.close()
    assert issubclass(DeadlineExceeded, DeepLearningError)


def test_abandoned_and_closed_workers_exit_and_are_daemons() -> None:
    before = {t for t in threading.enumerate() if t.name == "jaxtrader-timeout"}
    runner = TimeoutRunner()
    release = threading.Event()
    with pytest.raises(DeadlineExceeded):
        runner.call(release.wait, 0.01)
    runner.call(lambda: None, 1.0)
    workers = {t for t in threading.enumerate() if t.name == "jaxtrader-timeout"} - before
    assert len(workers) == 2 and all(t.daemon for t in workers)  # never blocks interpreter exit
    release.set()
    runner.close()
    for t in workers:
        t.join(timeout=2.0)
    assert not any(t.is_alive() for t in workers)


def test_call_with_timeout_one_off() -> None:
    assert call_with_timeout(lambda: "ok", 1.0) == "ok"
    with pytest.raises(DeadlineExceeded, match="sleep did not finish within 20 ms"):
        call_with_timeout(lambda: time.sleep(0.5), 0.02, "sleep")


def test_close_returns_once_the_workers_exited_or_its_wait_is_over() -> None:
    runner = TimeoutRunner()
    runner.call(lambda: None, 1.0)
    assert all(t.is_alive() for t in runner._workers)
    runner.close()
    assert not any(t.is_alive() for t in runner._workers)
    # An abandoned worker still in its call is waited for, up to the wait given.
    runner = TimeoutRunner()
    with pytest.raises(DeadlineExceeded):
        runner.call(lambda: time.sleep(0.3), 0.01)
    start = time.perf_counter()
    runner.close(wait_s=2.0)
    assert 0.1 < time.perf_counter() - start < 1.5
    assert not any(t.is_alive() for t in runner._workers)
    stuck = TimeoutRunner()
    release = threading.Event()
    with pytest.raises(DeadlineExceeded):
        stuck.call(release.wait, 0.01)
    start = time.perf_counter()
    stuck.close(wait_s=0.2)  # a call stuck for good does not hold the close longer
    assert time.perf_counter() - start < 1.0
    release.set()


def test_a_sub_millisecond_budget_is_named_with_its_value() -> None:
    """`--model-timeout-ms 0.01` was reported as "did not finish within 0 ms" (formatted :.0f)."""
    with pytest.raises(
        DeadlineExceeded, match=r"^model prediction did not finish within 0\.01 ms;"
    ):
        call_with_timeout(lambda: time.sleep(0.2), 0.01 / 1e3, "model prediction")
