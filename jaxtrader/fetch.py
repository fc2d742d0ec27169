"""Download exchange candles through ccxt into our canonical CSV, resumably.

The exchange object is a parameter (anything with ccxt's `fetch_ohlcv(symbol, timeframe, since,
limit)`, `rateLimit` and optionally `milliseconds()` / `enableRateLimit`), so tests drive the whole
loop with a plain fake class; `make_exchange` is the only place that imports ccxt. Pages are
appended to the output as they arrive, so an interrupted download resumes after the file's last
candle. The still-forming last candle is never written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxtrader.data import (
    OHLCV,
    candle_problem,
    format_interval,
    load_candles,
    parse_interval,
    write_candles,
)
from jaxtrader.errors import DataError
from jaxtrader.logs import get_logger, log_event, progress_bar

INSTALL_HINT = "pip install 'jaxtrader[live]'"
_log = get_logger(__name__)


@dataclass(frozen=True)
class FetchResult:
    path: Path
    added: int  # candles appended by this call
    requests: int  # fetch_ohlcv calls that succeeded
    resumed: bool  # the output existed and was continued
    first: pd.Timestamp | None  # first candle appended
    last: pd.Timestamp | None  # last candle appended


def make_exchange(name: str) -> Any:
    """A ccxt exchange instance with ccxt's own throttling on; DataError if ccxt is missing."""
    try:
        import ccxt
    except ImportError:
        raise DataError(f"fetching candles needs ccxt: {INSTALL_HINT}") from None
    if name not in getattr(ccxt, "exchanges", []):
        raise DataError(
            f"unknown exchange {name!r}; use a ccxt exchange id such as binance or kraken"
        )
    return getattr(ccxt, name)({"enableRateLimit": True})


def _error_classes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(transient, fatal) exception classes at the ccxt boundary."""
    transient: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)
    try:
        import ccxt
    except ImportError:
        return transient, ()
    return (ccxt.NetworkError, *transient), (ccxt.BaseError,)


def parse_since(since: str | None) -> int | None:
    """'2024-01-01' (UTC unless an offset is given) -> epoch milliseconds."""
    if since is None:
        return None
    try:
        ts = pd.Timestamp(since)
    except (ValueError, TypeError):
        raise DataError(f"--since {since!r} is not a date; use e.g. 2024-01-01") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 10**6)


def _now_ms(exchange: Any) -> int:
    clock = getattr(exchange, "milliseconds", None)
    return int(clock()) if callable(clock) else int(time.time() * 1000)


def fetch_page(
    exchange: Any,
    symbol: str,
    timeframe: str,
    since_ms: int,
    limit: int,
    max_retries: int,
    sleep: Callable[[float], None],
) -> list[list[float]]:
    """One fetch_ohlcv call with exponential backoff on transient network errors."""
    transient, fatal = _error_classes()
    base_delay = max(float(getattr(exchange, "rateLimit", 1000)) / 1000.0, 1.0)
    name = getattr(exchange, "id", type(exchange).__name__)
    for attempt in range(max_retries + 1):
        try:
            return list(exchange.fetch_ohlcv(symbol, timeframe, since=since_ms, limit=limit))
        except transient as e:
            if attempt == max_retries:
                raise DataError(
                    f"fetching {symbol} {timeframe} from {name} failed after {attempt + 1} "
                    f"attempts ({type(e).__name__}: {e}); check the network and rerun the same "
                    "command to resume"
                ) from None
            delay = base_delay * 2**attempt
            log_event(_log, "fetch_retry", logging.WARNING, exchange=name, attempt=attempt + 1,
                      delay_s=delay, error=f"{type(e).__name__}: {e}")  # fmt: skip
            sleep(delay)
        except fatal as e:
            raise DataError(
                f"{name} refused fetch_ohlcv for {symbol} {timeframe} ({type(e).__name__}: {e}); "
                "check the symbol and timeframe"
            ) from None
    raise AssertionError("unreachable")


def _valid_rows(rows: list[list[float]], start_ms: int, end_ms: int, step_ms: int) -> np.ndarray:
    """Complete candles in [start, end) as an (N, 6) array, sorted, unique, invalid ones skipped."""
    if not rows:
        return np.empty((0, 6))
    arr = np.array([r[:6] for r in rows], dtype=np.float64)
    arr = arr[(arr[:, 0] >= start_ms) & (arr[:, 0] + step_ms <= end_ms)]
    _, first = np.unique(arr[:, 0], return_index=True)
    arr = arr[np.sort(first)]
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    keep = np.ones(len(arr), dtype=bool)
    for i, row in enumerate(arr):
        problem = candle_problem(row[0], *row[1:6])
        if problem is not None:
            keep[i] = False
            log_event(_log, "candle_skipped", logging.WARNING, open_time_ms=int(row[0]),
                      problem=problem)  # fmt: skip
    return arr[keep]


def fetch_candles(
    exchange: Any,
    symbol: str,
    timeframe: str,
    out: str | Path,
    *,
    since: str | None = None,
    limit: int = 1000,
    max_retries: int = 4,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Pages `exchange.fetch_ohlcv` from `since` (or after the last candle in `out`) up to now."""
    path = Path(out)
    if not path.name.lower().endswith((".csv", ".csv.gz")):
        raise DataError(f"--out {path}: fetch writes CSV; use a path ending in .csv or .csv.gz")
    step = parse_interval(timeframe)
    step_ms = int(step.value // 10**6)
    resumed = path.exists() and path.stat().st_size > 0
    if resumed:
        existing = load_candles(path, interval=step, gaps="drop", symbol=symbol)
        start_ms = int(existing.end.value // 10**6) + step_ms
        log_event(_log, "fetch_resume", path=str(path), last=existing.end.isoformat(),
                  rows=len(existing))  # fmt: skip
    else:
        since_ms = parse_since(since)
        if since_ms is None:
            raise DataError(f"--out {path} does not exist yet; pass --since (e.g. 2024-01-01)")
        start_ms = since_ms - since_ms % step_ms  # align to the candle grid
    now_ms = _now_ms(exchange)
    pace = not getattr(exchange, "enableRateLimit", False)  # ccxt throttles itself when enabled
    pause = float(getattr(exchange, "rateLimit", 1000)) / 1000.0
    added, requests, first, last = 0, 0, None, None
    with progress_bar(total=max((now_ms - start_ms) // step_ms, 0), desc="fetch") as bar:
        while start_ms + step_ms <= now_ms:
            if requests and pace:
                sleep(pause)
            page = fetch_page(exchange, symbol, timeframe, start_ms, limit, max_retries, sleep)
            requests += 1
            arr = _valid_rows(page, start_ms, now_ms, step_ms)
            if len(arr) == 0:
                break  # nothing complete left (or the exchange has no candles from here on)
            index = pd.DatetimeIndex(
                pd.to_datetime(arr[:, 0].astype(np.int64), unit="ms", utc=True)
            )
            frame = pd.DataFrame(arr[:, 1:6], index=index, columns=list(OHLCV))
            write_candles(frame, path, append=True)
            added += len(arr)
            if first is None:
                first = index[0]
            last = index[-1]
            start_ms = int(arr[-1, 0]) + step_ms
            bar.update(len(arr))
    log_event(_log, "fetch_done", path=str(path), symbol=symbol, timeframe=format_interval(step),
              added=added, requests=requests, resumed=resumed)  # fmt: skip
    return FetchResult(path, added, requests, resumed, first, last)
