"""Feeds: replay ranges and warm-up; ccxt polling with a fake exchange at the network boundary."""

from __future__ import annotations

import itertools
import math
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from jaxtrader.data import synth_candles, write_candles
from jaxtrader.errors import DataError
from jaxtrader.trading import feeds
from jaxtrader.trading.feeds import CcxtFeed, ReplayFeed

H = pd.Timedelta(1, unit="h")


@pytest.fixture
def candle_file(tmp_path: Path) -> Path:
    frame = synth_candles(rows=50).frame
    frame = frame.drop(frame.index[20])  # a real gap: the replay must leave it as a hole
    return write_candles(frame, tmp_path / "c.csv")


def test_replay_range_warmup_and_resume(candle_file: Path) -> None:
    frame = synth_candles(rows=50).frame
    start, end = frame.index[10], frame.index[30]
    feed = ReplayFeed(candle_file, start=start, end=end)
    got = list(feed.candles())
    assert got[0].ts == start and got[-1].ts == end
    assert len(got) == 20  # 21 stamps minus the hole
    assert frame.index[20] not in {c.ts for c in got}
    assert got[0].close == pytest.approx(frame["close"].iloc[10])
    warm = feed.warmup(5)
    assert [c.ts for c in warm] == list(frame.index[5:10])
    resumed = list(feed.candles(after=frame.index[25]))
    assert [c.ts for c in resumed] == list(frame.index[26:31])
    assert feed.remaining(frame.index[25]) == 5


def test_replay_empty_range_is_an_error(candle_file: Path) -> None:
    with pytest.raises(DataError, match="no candles between"):
        ReplayFeed(
            candle_file,
            start=pd.Timestamp("2030-01-01T00:00Z"),
            end=pd.Timestamp("2031-01-01T00:00Z"),
        )
    with pytest.raises(DataError, match="replay range is empty"):
        ReplayFeed(candle_file, start=pd.Timestamp("2030-01-01T00:00Z"))


def test_realtime_replay_waits_and_stops_promptly(candle_file: Path) -> None:
    stop = threading.Event()
    feed = ReplayFeed(candle_file, speed="realtime", stop=stop)
    got = []
    start = time.monotonic()
    for c in feed.candles():
        got.append(c)
        threading.Timer(0.05, stop.set).start()  # the 1 h wait must end on the stop request
    assert len(got) == 1 and time.monotonic() - start < 5


def test_replay_stops_when_asked(candle_file: Path) -> None:
    stop = threading.Event()
    feed = ReplayFeed(candle_file, stop=stop)
    out = []
    for c in feed.candles():
        out.append(c)
        if len(out) == 3:
            stop.set()
    assert len(out) == 3


class ExchangeError(Exception):
    """Not a network error: must not be retried."""


class FakeExchange:
    """Mimics ccxt's fetch_ohlcv: rows [ms, o, h, l, c, v], the last one still forming."""

    rateLimit = 1500

    def __init__(self, clock: list[float], script: list[Any]) -> None:
        self.clock = clock
        self.script = script
        self.calls: list[tuple[Any, ...]] = []

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: Any = None, limit: Any = None) -> Any:
        self.calls.append((symbol, timeframe, since, limit))
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        now_ms = self.clock[0] * 1000
        first = since
        rows = []
        t = first
        while t <= now_ms:  # includes the forming candle
            rows.append([t, 100.0, 101.0, 99.0, 100.5, 1.0])
            t += 3_600_000
        if limit is not None:
            rows = rows[:limit]  # ccxt: the first `limit` candles from `since`
        return rows


def _feed(
    clock: list[float], script: list[Any], **kw: Any
) -> tuple[CcxtFeed, FakeExchange, list[float]]:
    ex = FakeExchange(clock, script)
    slept: list[float] = []

    def sleep(s: float) -> bool:
        slept.append(s)
        clock[0] += s
        return False

    return (
        CcxtFeed("fake", "BTC/USDT", H, exchange=ex, clock=lambda: clock[0], sleep=sleep, **kw),
        ex,
        slept,
    )


def test_ccxt_drops_forming_candle_and_polls_next_close() -> None:
    clock = [10 * 3600 + 600.0]  # 10:10, candle 10:00 is forming
    feed, ex, slept = _feed(clock, [])
    warm = feed.warmup(3)
    assert [c.ts.hour for c in warm] == [7, 8, 9]
    got = list(itertools.islice(feed.candles(after=warm[-1].ts), 3))
    assert [c.ts.hour for c in got] == [10, 11, 12]
    assert ex.calls[1][2] == 10 * 3_600_000  # polled since the candle after the last one
    assert all(c.ts + H <= pd.Timestamp(clock[0], unit="s", tz="UTC") for c in got)
    assert slept[0] == pytest.approx(3000 + 2.0)  # until 11:00 close plus the settle margin


def test_ccxt_warmup_pages_through_a_capped_exchange() -> None:
    clock = [30 * 3600 + 60.0]  # 06:01 on day 2; 30 closed candles since the epoch
    feed, ex, _ = _feed(clock, [], page_limit=7)
    warm = feed.warmup(20)
    assert [c.ts.value // 3_600_000_000_000 for c in warm] == list(range(10, 30))
    assert all(call[3] <= 7 for call in ex.calls) and len(ex.calls) >= 3


def test_ccxt_retries_network_errors_with_backoff() -> None:
    clock = [5 * 3600 + 60.0]
    feed, _, slept = _feed(clock, [ConnectionError("down"), TimeoutError("slow"), "ok"])
    warm = feed.warmup(2)
    assert [c.ts.hour for c in warm] == [3, 4]
    assert slept == [1.5, 3.0]  # exponential from the exchange's rate limit (1.5 s)
    assert feed.retries == 2


def test_ccxt_gives_up_after_max_retries_and_other_errors_are_clear() -> None:
    feed, _, _ = _feed([3600.0], [ConnectionError("x")] * 3, max_retries=2)
    with pytest.raises(DataError, match="failed after 3 attempts"):
        feed.warmup(1)
    feed, _, _ = _feed([3600.0], [ExchangeError("bad symbol")])
    with pytest.raises(ExchangeError, match="bad symbol"):
        feed.warmup(1)  # without ccxt installed, only network errors are known; others propagate


def test_ccxt_passes_bad_values_through_as_nan() -> None:
    clock = [7200.0 + 10]

    class Bad(FakeExchange):
        def fetch_ohlcv(self, *a: Any, **k: Any) -> Any:
            return [[0, None, 1.0, 1.0, 1.0, 1.0], [3_600_000, 1, 1, 1, 1, 1]]

    feed = CcxtFeed("fake", "X/Y", H, exchange=Bad(clock, []), clock=lambda: clock[0])
    got = feed.warmup(5)
    assert len(got) == 2 and math.isnan(got[0].open) and got[1].open == 1.0


def test_missing_ccxt_is_one_line_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ccxt(name: str, *a: Any, **k: Any) -> Any:
        if name == "ccxt":
            raise ImportError("no ccxt")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ccxt)
    with pytest.raises(DataError, match=r"pip install 'jaxtrader\[live\]'"):
        feeds.make_exchange("binance")


def test_stop_during_retry_ends_the_feed() -> None:
    clock = [3600.0 * 3 + 5]
    stop_after_first = [True]
    ex = FakeExchange(clock, [ConnectionError("down")] * 5)
    feed = CcxtFeed("fake", "X/Y", H, exchange=ex, clock=lambda: clock[0],
                    sleep=lambda s: stop_after_first[0])  # fmt: skip
    assert list(feed.candles(after=None)) == []
    assert feed.retries == 1


def test_ccxt_stale_market_is_logged_and_polled_often(caplog: pytest.LogCaptureFixture) -> None:
    clock = [5 * 3600 + 60.0]

    class Frozen(FakeExchange):
        """Serves candles only up to 05:00: the exchange stopped updating."""

        def fetch_ohlcv(self, *a: Any, **k: Any) -> Any:
            saved = self.clock[0]
            self.clock[0] = min(saved, 5 * 3600 + 60.0)
            try:
                return super().fetch_ohlcv(*a, **k)
            finally:
                self.clock[0] = saved

    slept: list[float] = []

    def sleep(s: float) -> bool:
        slept.append(s)
        clock[0] += s
        return len(slept) > 70  # about an hour of late polls

    feed = CcxtFeed("fake", "X/Y", H, exchange=Frozen(clock, []), clock=lambda: clock[0],
                    sleep=sleep)  # fmt: skip
    got = list(feed.candles(after=pd.Timestamp(3 * 3600, unit="s", tz="UTC")))
    assert [c.ts.hour for c in got] == [4, 5]  # then nothing new arrives
    assert slept[:3] == [3542.0, 3600.0, 60.0]  # to each close, then every minute while late
    assert set(slept[2:]) == {60.0}
    assert any(r.message == "feed_stale" for r in caplog.records)


def test_ccxt_a_hole_or_a_nan_seen_once_is_fetched_again_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exchanges serve a page with a missing candle or a NaN once; before the fix the candle was
    skipped for good (a hole filled with a flat candle, or a `bad_candle`)."""
    clock = [10 * 3600 + 60.0]

    class Glitchy(FakeExchange):
        def fetch_ohlcv(self, *a: Any, **k: Any) -> Any:
            rows = super().fetch_ohlcv(*a, **k)
            if len(self.calls) == 1:
                del rows[2]  # 07:00 missing
            if len(self.calls) == 2 and len(rows) > 2:  # the refetch from 07:00
                rows[2] = [rows[2][0], math.nan, *rows[2][2:]]  # 09:00 open is NaN
            return rows

    def sleep(s: float) -> bool:
        clock[0] += s
        return False

    ex = Glitchy(clock, [])
    feed = CcxtFeed("fake", "X/Y", H, exchange=ex, clock=lambda: clock[0], sleep=sleep)
    got = list(itertools.islice(feed.candles(after=pd.Timestamp(4 * 3600, unit="s", tz="UTC")), 5))
    assert [c.ts.hour for c in got] == [5, 6, 7, 8, 9]
    assert all(not math.isnan(c.open) for c in got)
    assert [r.message for r in caplog.records if r.message.startswith("feed_")] == [
        "feed_gap",
        "feed_invalid_candle",
    ]
    # A problem that is still there on the next answer is accepted: the manager handles it.
    clock[0] = 10 * 3600 + 60.0

    class Holey(FakeExchange):
        def fetch_ohlcv(self, *a: Any, **k: Any) -> Any:
            return [r for r in super().fetch_ohlcv(*a, **k) if r[0] != 7 * 3_600_000]

    feed = CcxtFeed("fake", "X/Y", H, exchange=Holey(clock, []), clock=lambda: clock[0],
                    sleep=sleep)  # fmt: skip
    got = list(itertools.islice(feed.candles(after=pd.Timestamp(5 * 3600, unit="s", tz="UTC")), 3))
    assert [c.ts.hour for c in got] == [6, 8, 9]
