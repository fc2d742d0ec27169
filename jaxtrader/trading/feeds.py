"""Candle feeds for the strategy runner: replay of a candle file, and closed candles from ccxt.

A feed yields `Candle`s in time order; the manager validates each one (`data.candle_problem`,
order, duplicates, gaps), so a bad candle from any feed is skipped with an event instead of
crashing the runner. The ccxt feed also screens each page first, since an exchange's glitch is
often gone on the next poll (see `CcxtFeed`). `warmup(n, before)` gives the history that only fills
the rolling buffer. Both feeds stop promptly when their `stop` event is set; the ccxt feed's clock
and sleep are injectable (`SimClock` for tests against a local exchange).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from jaxtrader.data import candle_problem, format_interval, load_candles, parse_interval
from jaxtrader.errors import ConfigError, DataError
from jaxtrader.fetch import fetch_page, make_exchange
from jaxtrader.logs import get_logger, log_event

_log = get_logger(__name__)


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
    interval. Gaps are left as holes (the manager handles them as a live feed would); duplicate
    timestamps are an error unless `dedupe` (the last of each is kept)."""

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
        dedupe: bool = False,
    ) -> None:
        # Read at the file's own interval: the data layer's mismatch message advises --interval,
        # which trade does not have; `interval` is the model's, the one thing that must change.
        candles = load_candles(path, gaps="drop", symbol=symbol, dedupe=dedupe)
        if interval is not None and candles.interval != parse_interval(interval):
            want, got = format_interval(parse_interval(interval)), format_interval(candles.interval)
            raise DataError(
                f"{path} holds {got} candles but the model was trained on {want} candles; replay "
                f"{want} candles of the market, or use a model trained on {got} candles"
            )
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


class _Stopped(Exception):
    """Raised from a retry sleep when the runner was asked to stop."""


SIM_CLOCK_ENV = "JAXTRADER_SIM_CLOCK"


class SimClock:
    """Simulated epoch seconds in a text file, shared between processes (a test and the `trade`
    process it starts): `now()` reads the file; `sleep(s)` moves it forward at once instead of
    waiting. A number in PATH.limit caps how far sleeping may move it: at the cap the sleeper waits
    (really, in 10 ms steps) until the cap moves or a stop is requested, so a test decides how far
    a run goes. `CcxtFeed` uses it when JAXTRADER_SIM_CLOCK=PATH is set (tests against a local
    exchange server); otherwise it uses the wall clock and really sleeps.
    """

    def __init__(self, path: str | Path, stop: threading.Event | None = None) -> None:
        self.path = Path(path)
        self.limit_path = self.path.with_name(self.path.name + ".limit")
        self.stop = stop
        if not self.path.is_file():
            raise ConfigError(
                f"{SIM_CLOCK_ENV}={path}: no such file; write the simulated start time (epoch "
                "seconds) into it, or unset the variable to use the wall clock"
            )

    @staticmethod
    def write(path: str | Path, seconds: float) -> None:
        tmp = Path(f"{path}.tmp{threading.get_ident()}")
        tmp.write_text(repr(float(seconds)))
        tmp.replace(path)  # atomic: a reader never sees half a number

    def now(self) -> float:
        return float(self.path.read_text())

    def _limit(self) -> float | None:
        try:
            return float(self.limit_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def sleep(self, seconds: float) -> bool:
        """Advances the clock by `seconds` (up to the cap); True when a stop was requested."""
        target = self.now() + max(seconds, 0.0)
        while not (self.stop is not None and self.stop.is_set()):
            limit = self._limit()
            if limit is None or target <= limit:
                self.write(self.path, target)
                return False
            if self.now() < limit:
                self.write(self.path, limit)
            if _wait(self.stop, 0.01):
                break
        return True


class CcxtFeed:
    """Polls closed candles of a public market. The still-forming candle is always dropped.

    After each poll it sleeps until the next candle should have closed; while that candle is late
    it polls every min(interval / 4, 60 s), and once it is more than a candle overdue it logs
    `feed_stale`. The manager turns the missing candles into a gap (neutral signal) when they
    arrive.

    Network errors, rate limits and unparsable answers are retried with exponential backoff from
    the exchange's rate limit (at least the Retry-After of a 429), up to `max_retries` times a poll
    (about 17 minutes in all with the default 10 and a 1 s rate limit); then the run ends with a
    DataError. A page is screened before its candles are delivered: candles already delivered or
    sent twice are dropped (`feed_repeated_candles`); a hole before a candle (`feed_gap`) or a
    candle with invalid values (`feed_invalid_candle`) makes the feed deliver what came before it
    and poll again from there, since exchanges do serve such glitches once; when the next answer
    shows the same problem it is accepted and the manager handles it (fills the gap, skips the
    candle). Rows ccxt had to reorder are logged as `feed_out_of_order`. Each is one event.

    The exchange object is injectable so tests can fake the network boundary; `clock` returns epoch
    seconds; `sleep(seconds) -> stop_requested`. Without them the feed uses `SimClock` when
    JAXTRADER_SIM_CLOCK is set, else the wall clock.
    """

    def __init__(
        self,
        exchange_id: str,
        symbol: str,
        interval: pd.Timedelta,
        *,
        exchange: Any = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] | None = None,
        max_retries: int = 10,
        page_limit: int = 500,
        settle_seconds: float = 2.0,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.exchange = make_exchange(exchange_id) if exchange is None else exchange
        self.exchange_id = exchange_id
        self.symbol = symbol
        self.interval = interval
        self.stop = stop
        sim = SimClock(os.environ[SIM_CLOCK_ENV], stop) if os.environ.get(SIM_CLOCK_ENV) else None
        self.clock = clock or (sim.now if sim else time.time)
        self.max_retries = max_retries
        self.settle_seconds = settle_seconds
        self.page_limit = page_limit
        # Returns True when a stop was requested during the sleep.
        self.sleep = sleep or (sim.sleep if sim else lambda seconds: _wait(self.stop, seconds))
        self.timeframe = format_interval(interval)  # ccxt spells timeframes the same way
        self.retries = 0  # total retried calls, for the status line and tests

    def _fetch(self, since_ms: int, limit: int) -> list[list[Any]] | None:
        """One poll, retried with exponential backoff on network errors by the same code the
        `data fetch` command uses; None when a stop was requested while waiting."""

        def sleep(seconds: float) -> None:
            self.retries += 1
            if self.sleep(seconds):
                raise _Stopped

        try:
            return fetch_page(
                self.exchange, self.symbol, self.timeframe, since_ms, limit, self.max_retries, sleep
            )
        except _Stopped:
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
                log_event(_log, "feed_forming_dropped", logging.DEBUG, symbol=self.symbol,
                          ts=pd.Timestamp(int(r[0]), unit="ms", tz="UTC").isoformat())  # fmt: skip
                continue  # still forming
            vals = [math.nan if x is None else float(x) for x in r[1:6]]
            out.append(Candle(pd.Timestamp(int(r[0]), unit="ms", tz="UTC"), *vals))
        return out

    def _log_disorder(self) -> None:
        """ccxt sorts every page, so rows the exchange sent out of order are only visible in the
        raw answer (kept by `make_exchange`); a row older than one before it that is not a repeat
        of an earlier row is out of order."""
        raw = getattr(self.exchange, "last_json_response", None)
        if not isinstance(raw, list):
            return
        seen: set[Any] = set()
        newest, moved = None, 0
        for r in raw:
            t = r[0] if isinstance(r, list) and r else None
            if not isinstance(t, int | float):
                continue
            if newest is not None and t < newest and t not in seen:
                moved += 1
            seen.add(t)
            newest = t if newest is None else max(newest, t)
        if moved:
            log_event(_log, "feed_out_of_order", logging.WARNING, symbol=self.symbol, rows=moved)

    def _screen(
        self, rows: list[list[Any]], last: pd.Timestamp | None, accept: pd.Timestamp | None
    ) -> tuple[list[Candle], Candle | None, str]:
        """(the page's new closed candles up to the first suspect one, that candle, why).

        Suspect: a hole before it (after `last`) or invalid values, unless it is `accept`, the
        suspect of the previous answer, seen again: then it is delivered (the manager judges it).
        """
        self._log_disorder()
        good: list[Candle] = []
        repeated = 0
        for c in self._closed(rows):
            if last is not None and c.ts <= last:
                repeated += 1
                continue
            why = candle_problem(c.ts, c.open, c.high, c.low, c.close, c.volume)
            missing = 0 if last is None else (c.ts - last) // self.interval - 1
            if missing > 0:
                why = f"{missing} candle(s) missing after {last.isoformat()}"  # type: ignore[union-attr]
            if why is not None and c.ts != accept:
                return good, c, why
            if why is not None:
                event = "feed_gap" if missing > 0 else "feed_invalid_candle"
                log_event(_log, event, logging.WARNING, symbol=self.symbol, ts=c.ts.isoformat(),
                          problem=why, action="accepted")  # fmt: skip
            good.append(c)
            last = c.ts
        if repeated:
            log_event(_log, "feed_repeated_candles", logging.WARNING, symbol=self.symbol,
                      rows=repeated)  # fmt: skip
        return good, None, ""

    def _suspect(self, c: Candle, why: str) -> pd.Timestamp:
        event = "feed_gap" if "missing after" in why else "feed_invalid_candle"
        log_event(_log, event, logging.WARNING, symbol=self.symbol, ts=c.ts.isoformat(),
                  problem=why, action="refetch")  # fmt: skip
        return c.ts

    def warmup(self, n: int, before: pd.Timestamp | None = None) -> list[Candle]:
        """The last `n` closed candles, paged by `page_limit` (exchanges cap one response)."""
        step_ms = int(self.interval.total_seconds() * 1000)
        now_ms = int(self.clock() * 1000)
        since = now_ms - now_ms % step_ms - n * step_ms  # n closed candles plus the forming one
        closed: list[Candle] = []
        suspect = None
        while since < now_ms:
            rows = self._fetch(since, min(n + 1, self.page_limit))
            good, bad, why = self._screen(rows or [], closed[-1].ts if closed else None, suspect)
            closed += good
            if good:
                since = int(good[-1].ts.value // 1_000_000) + step_ms
            if bad is not None and rows is not None:
                suspect = self._suspect(bad, why)
                continue
            if not good:
                break
        return [c for c in closed if before is None or c.ts < before][-n:]

    def candles(self, after: pd.Timestamp | None = None) -> Iterator[Candle]:
        last = after
        suspect = None
        step_s = self.interval.total_seconds()
        while not (self.stop is not None and self.stop.is_set()):
            step_ms = int(self.interval.total_seconds() * 1000)
            now_ms = int(self.clock() * 1000)
            since = (
                now_ms - now_ms % step_ms - step_ms
                if last is None
                else int((last + self.interval).value // 1_000_000)
            )
            rows = self._fetch(since, self.page_limit)
            if rows is None:
                return
            good, bad, why = self._screen(rows, last, suspect)
            for c in good:
                last = c.ts
                yield c
            if bad is not None:  # poll again from the suspect candle after the settle margin
                suspect = self._suspect(bad, why)
                if self.sleep(self.settle_seconds):
                    return
                continue
            suspect = None
            # Sleep until the next candle should have closed, plus a margin for the exchange.
            now = self.clock()
            wait = step_s
            if last is not None:
                due = (last + 2 * self.interval).value / 1e9  # close time of the next candle
                if now < due:
                    wait = due - now + self.settle_seconds
                else:  # late: poll a few times a candle, not in a tight loop
                    wait = max(self.settle_seconds, min(step_s / 4, 60.0))
                if now > due + step_s:  # more than a candle overdue: the market data is stale
                    log_event(_log, "feed_stale", logging.WARNING, symbol=self.symbol,
                              last=last.isoformat(), lag_s=round(now - due))  # fmt: skip
            if self.sleep(wait):
                return
