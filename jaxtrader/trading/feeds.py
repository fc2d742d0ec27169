"""Candle feeds for the strategy runner: replay of a candle file, and closed candles from ccxt.

A feed yields raw `Candle`s in time order and does not judge them: the manager validates each one
(`data.candle_problem`, order, duplicates, gaps), so a bad candle from any feed is skipped with an
event instead of crashing the runner. `warmup(n, before)` gives the history that only fills the
rolling buffer. Both feeds stop promptly when their `stop` event is set.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from jaxtrader.data import format_interval, load_candles
from jaxtrader.errors import DataError
from jaxtrader.logs import get_logger, log_event

_log = get_logger(__name__)

# ccxt's network-error family (RateLimitExceeded and DDoSProtection are subclasses of
# NetworkError there). Matched by class name through the MRO so the retry logic works with the real
# library and with fakes at the network boundary alike, and without importing ccxt.
_NETWORK_ERRORS = {"NetworkError", "RequestTimeout", "ExchangeNotAvailable", "OnMaintenance"}
_RATE_LIMIT_ERRORS = {"RateLimitExceeded", "DDoSProtection"}


@dataclass(frozen=True)
class Candle:
    """One candle as a feed delivered it (values unchecked; ts is the UTC open time)."""

    ts: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float


class Feed(Protocol):
    interval: pd.Timedelta
    symbol: str

    def warmup(self, n: int, before: pd.Timestamp | None) -> list[Candle]: ...

    def candles(self, after: pd.Timestamp | None) -> Iterator[Candle]: ...


def _wait(stop: threading.Event | None, seconds: float) -> bool:
    """Sleeps up to `seconds`; True when a stop was requested meanwhile."""
    if seconds <= 0:
        return stop is not None and stop.is_set()
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


class ReplayFeed:
    """Plays a candle file in order: `speed="max"` as fast as possible, `"realtime"` one candle per
    interval. Gaps are left as holes (the manager handles them as a live feed would)."""

    def __init__(
        self,
        path: str | Path,
        *,
        interval: str | None = None,
        symbol: str | None = None,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        speed: str = "max",
        stop: threading.Event | None = None,
    ) -> None:
        candles = load_candles(path, interval=interval, gaps="drop", symbol=symbol)
        self.frame = candles.frame
        self.interval = candles.interval
        self.symbol = candles.symbol
        self.source = candles.source
        self.start = self.frame.index[0] if start is None else start
        self.end = self.frame.index[-1] if end is None else end
        if self.start > self.end:
            raise DataError(f"replay range is empty: start {self.start} is after end {self.end}")
        if not ((self.frame.index >= self.start) & (self.frame.index <= self.end)).any():
            raise DataError(
                f"{path} has no candles between {self.start} and {self.end} "
                f"(the file spans {self.frame.index[0]} to {self.frame.index[-1]}); check "
                "--start/--end"
            )
        self.speed = speed
        self.stop = stop

    def warmup(self, n: int, before: pd.Timestamp | None = None) -> list[Candle]:
        """The `n` candles before the replay start (or `before`): never traded, only buffered."""
        cut = self.start if before is None else before
        return _rows(self.frame[self.frame.index < cut].tail(n))

    def candles(self, after: pd.Timestamp | None = None) -> Iterator[Candle]:
        mask = (self.frame.index >= self.start) & (self.frame.index <= self.end)
        if after is not None:
            mask &= self.frame.index > after
        pause = self.interval.total_seconds() if self.speed == "realtime" else 0.0
        for i, candle in enumerate(_rows(self.frame[mask])):
            if (i and _wait(self.stop, pause)) or (self.stop is not None and self.stop.is_set()):
                return
            yield candle

    def remaining(self, after: pd.Timestamp | None = None) -> int:
        mask = (self.frame.index >= self.start) & (self.frame.index <= self.end)
        if after is not None:
            mask &= self.frame.index > after
        return int(mask.sum())


def _rows(frame: pd.DataFrame) -> list[Candle]:
    cols = [frame[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")]
    return [
        Candle(ts, float(o), float(h), float(lo), float(c), float(v))
        for ts, o, h, lo, c, v in zip(frame.index, *cols, strict=True)
    ]


def _error_family(exc: BaseException) -> str | None:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _RATE_LIMIT_ERRORS:
        return "rate_limit"
    if names & _NETWORK_ERRORS:
        return "network"
    return None


def make_exchange(exchange_id: str) -> Any:
    """A public (key-less) ccxt exchange with ccxt's own rate limiter on."""
    try:
        import ccxt  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            "the ccxt feed needs the ccxt package, which is not installed; "
            "pip install 'jaxtrader[live]'"
        ) from None
    cls = getattr(ccxt, exchange_id, None)
    if cls is None:
        raise DataError(f"unknown ccxt exchange '{exchange_id}'; see ccxt.exchanges for the names")
    return cls({"enableRateLimit": True})


class CcxtFeed:
    """Polls closed candles of a public market. The still-forming candle is always dropped.

    Network errors and rate limits are retried with exponential backoff (capped at `max_backoff`
    seconds); `max_retries=None` retries forever, as a live runner should. The exchange object is
    injectable so tests can fake the network boundary; `clock` returns epoch seconds.
    """

    def __init__(
        self,
        exchange_id: str,
        symbol: str,
        interval: pd.Timedelta,
        *,
        exchange: Any = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_retries: int | None = None,
        settle_seconds: float = 2.0,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.exchange = make_exchange(exchange_id) if exchange is None else exchange
        self.exchange_id = exchange_id
        self.symbol = symbol
        self.interval = interval
        self.stop = stop
        self.clock = clock
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retries = max_retries
        self.settle_seconds = settle_seconds
        # Returns True when a stop was requested during the sleep.
        self.sleep = sleep or (lambda seconds: _wait(self.stop, seconds))
        self.timeframe = format_interval(interval)  # ccxt spells timeframes the same way
        self.retries = 0  # total retried calls, for the status line and tests

    def _fetch(self, since_ms: int | None, limit: int | None) -> list[list[Any]] | None:
        attempt = 0
        while True:
            try:
                return list(
                    self.exchange.fetch_ohlcv(
                        self.symbol, self.timeframe, since=since_ms, limit=limit
                    )
                )
            except Exception as e:
                family = _error_family(e)
                if family is None:
                    raise DataError(
                        f"ccxt {self.exchange_id} {self.symbol} {self.timeframe}: "
                        f"{type(e).__name__}: {e}"
                    ) from None
                attempt += 1
                self.retries += 1
                if self.max_retries is not None and attempt > self.max_retries:
                    raise DataError(
                        f"ccxt {self.exchange_id}: still failing after {self.max_retries} "
                        f"retries ({type(e).__name__}: {e}); check the network"
                    ) from None
                delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                if family == "rate_limit":
                    delay = max(delay, getattr(self.exchange, "rateLimit", 1000) / 1000.0)
                log_event(_log, "feed_retry", kind=family, attempt=attempt, delay_s=delay,
                          error=f"{type(e).__name__}: {e}")  # fmt: skip
                if self.sleep(delay):
                    return None

    def _closed(self, rows: list[list[Any]]) -> list[Candle]:
        """Rows whose candle has closed by now, as Candles (bad values pass through unjudged)."""
        now_ms = self.clock() * 1000.0
        step_ms = self.interval.total_seconds() * 1000.0
        out = []
        for r in rows:
            if r is None or len(r) < 6 or r[0] is None:
                continue
            if float(r[0]) + step_ms > now_ms:
                continue  # still forming
            vals = [math.nan if x is None else float(x) for x in r[1:6]]
            out.append(Candle(pd.Timestamp(int(r[0]), unit="ms", tz="UTC"), *vals))
        return out

    def warmup(self, n: int, before: pd.Timestamp | None = None) -> list[Candle]:
        rows = self._fetch(None, n + 1) or []
        closed = [c for c in self._closed(rows) if before is None or c.ts < before]
        return closed[-n:]

    def candles(self, after: pd.Timestamp | None = None) -> Iterator[Candle]:
        last = after
        step_s = self.interval.total_seconds()
        while not (self.stop is not None and self.stop.is_set()):
            since = None if last is None else int((last + self.interval).value // 1_000_000)
            rows = self._fetch(since, None)
            if rows is None:
                return
            for c in self._closed(rows):
                if last is None or c.ts > last:
                    last = c.ts
                    yield c
            # Sleep until the next candle should have closed, plus a margin for the exchange.
            now = self.clock()
            next_close = now + step_s if last is None else (last + 2 * self.interval).value / 1e9
            if self.sleep(max(next_close - now, 0.0) + self.settle_seconds):
                return
