"""Download exchange candles through ccxt into our canonical CSV, resumably.

The exchange object is a parameter (anything with ccxt's `fetch_ohlcv(symbol, timeframe, since,
limit)`, `rateLimit` and optionally `milliseconds()` / `enableRateLimit`), so tests drive the whole
loop with a plain fake class; only this module imports ccxt (`make_exchange`, and `_error_classes`
for its error types). Pages are
appended to the output as they arrive, so an interrupted download resumes after the file's last
candle. The still-forming last candle is never written.
"""

from __future__ import annotations

import json
import logging
import os
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
from jaxtrader.errors import ConfigError, DataError
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


CCXT_CONFIG_ENV = "JAXTRADER_CCXT_CONFIG"


def make_exchange(name: str) -> Any:
    """A ccxt exchange instance with ccxt's own throttling on; DataError if ccxt is missing.

    JAXTRADER_CCXT_CONFIG may hold a JSON object of ccxt constructor settings merged over ours
    (ccxt deep-merges them into the exchange's defaults): e.g. `{"timeout": 5000}`, a proxy, or
    `{"urls": {"api": {"public": "http://127.0.0.1:PORT/api/v3"}}}` to point binance at a local
    exchange (the live tests do this).
    """
    try:
        import ccxt
    except ImportError:
        raise DataError(f"fetching candles needs ccxt: {INSTALL_HINT}") from None
    if name not in getattr(ccxt, "exchanges", []):
        raise DataError(
            f"unknown exchange {name!r}; use a ccxt exchange id such as binance or kraken"
        )
    # The parsed body is kept so `fetch_page` can tell an unparsable answer from an empty one.
    settings = {"enableRateLimit": True, "enableLastJsonResponse": True, **_env_settings()}
    return getattr(ccxt, name)(settings)


def _env_settings() -> dict[str, Any]:
    raw = os.environ.get(CCXT_CONFIG_ENV, "").strip()
    if not raw:
        return {}
    try:
        settings = json.loads(raw)
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise ConfigError(
            f"{CCXT_CONFIG_ENV} is not a JSON object of ccxt settings: {raw[:60]!r}; use e.g. "
            '{"timeout": 5000}'
        )
    return settings


class InvalidResponse(ConnectionError):
    """The exchange answered 200 with a body that is not JSON (truncated, or an HTML page):
    ccxt turns that into an empty or garbage page without an error, so it is checked here and
    retried like a network error."""


def _body_problem(exchange: Any) -> str | None:
    """Why the last answer's body was not JSON, or None (also when the exchange keeps no body)."""
    if not getattr(exchange, "enableLastJsonResponse", False):
        return None
    text = getattr(exchange, "last_http_response", None)
    if (
        isinstance(text, str)
        and text.strip()
        and getattr(exchange, "last_json_response", 0) is None
    ):
        return f"{len(text)} bytes that are not JSON, starting {text.strip()[:40]!r}"
    return None


def _retry_after(exchange: Any, error: BaseException) -> float:
    """Seconds the exchange asked us to wait (Retry-After of a 418/429), 0 when it did not say:
    Binance bans an IP that keeps calling after a 429."""
    if not {"DDoSProtection", "RateLimitExceeded"} & {c.__name__ for c in type(error).__mro__}:
        return 0.0  # other errors (a timeout) leave the headers of an older answer in place
    headers = getattr(exchange, "last_response_headers", None) or {}
    try:
        return max(float(headers.get("Retry-After", 0) or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line: ccxt puts whole response bodies (HTML pages) in messages."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_classes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(transient, fatal) exception classes at the ccxt boundary."""
    transient: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)
    try:
        import ccxt
    except ImportError:
        return transient, ()
    # BadResponse: an answer ccxt could not make sense of; like a network error, it passes.
    return (ccxt.NetworkError, ccxt.BadResponse, *transient), (ccxt.BaseError,)


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


def _iso_ms(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


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
    """One fetch_ohlcv call with exponential backoff on transient network errors (at least the
    Retry-After the exchange sent with a 429), and on answers whose body is not JSON."""
    transient, fatal = _error_classes()
    base_delay = max(float(getattr(exchange, "rateLimit", 1000)) / 1000.0, 1.0)
    name = getattr(exchange, "id", type(exchange).__name__)
    for attempt in range(max_retries + 1):
        try:
            rows = list(exchange.fetch_ohlcv(symbol, timeframe, since=since_ms, limit=limit))
            problem = _body_problem(exchange)
            if problem is not None:
                raise InvalidResponse(f"{name} answered fetch_ohlcv with {problem}")
            return rows
        except transient as e:
            if attempt == max_retries:
                raise DataError(
                    f"fetching {symbol} {timeframe} from {name} failed after {attempt + 1} "
                    f"attempts ({_one_line(e)}); check the network and rerun the same "
                    "command to resume"
                ) from None
            delay = max(base_delay * 2**attempt, _retry_after(exchange, e))
            log_event(_log, "fetch_retry", logging.WARNING, exchange=name, attempt=attempt + 1,
                      delay_s=delay, error=_one_line(e))  # fmt: skip
            sleep(delay)
        except fatal as e:
            raise DataError(
                f"{name} refused fetch_ohlcv for {symbol} {timeframe} ({_one_line(e)}); "
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


def _existing_candles(path: Path, step: pd.Timedelta, dedupe: bool, symbol: str) -> Any:
    """The output file being resumed, read at --timeframe's interval. A file of another interval
    is refused in fetch's words: the data layer's message advised --interval, which fetch does not
    have (its flag is --timeframe)."""
    try:
        return load_candles(path, interval=step, gaps="drop", dedupe=dedupe, symbol=symbol)
    except DataError:
        try:
            own = load_candles(path, gaps="drop", dedupe=dedupe, symbol=symbol).interval
        except DataError:
            own = step  # the file has another problem: the first error says which
        if own == step:
            raise
    got, want = format_interval(own), format_interval(step)
    raise DataError(
        f"--out {path} holds {got} candles, not {want}: pass --timeframe {got} to resume it, or "
        f"another --out for {want} candles"
    ) from None


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
    dedupe: bool = False,
) -> FetchResult:
    """Pages `exchange.fetch_ohlcv` from `since` (or after the last candle in `out`) up to now.
    `dedupe` lets a resumed file that holds duplicate timestamps be continued (they stay in it;
    its readers need --dedupe as well); without it that file is refused by name."""
    path = Path(out)
    if not path.name.lower().endswith((".csv", ".csv.gz")):
        raise DataError(f"--out {path}: fetch writes CSV; use a path ending in .csv or .csv.gz")
    step = parse_interval(timeframe)
    step_ms = int(step.value // 10**6)
    resumed = path.exists() and path.stat().st_size > 0
    if resumed:
        existing = _existing_candles(path, step, dedupe, symbol)
        start_ms = int(existing.end.value // 10**6) + step_ms
        log_event(_log, "fetch_resume", path=str(path), last=existing.end.isoformat(),
                  rows=len(existing))  # fmt: skip
    else:
        since_ms = parse_since(since)
        if since_ms is None:
            raise DataError(f"--out {path} does not exist yet; pass --since (e.g. 2024-01-01)")
        start_ms = since_ms - since_ms % step_ms  # align to the candle grid
    now_ms = _now_ms(exchange)
    name = getattr(exchange, "id", type(exchange).__name__)
    if not resumed and start_ms + step_ms > now_ms:
        # Nothing could be fetched: "created ...: +0 candles" (exit 0) named a file never made.
        raise DataError(
            f"--since {since}: no {format_interval(step)} candle from then has closed yet "
            f"({name}'s clock says {_iso_ms(now_ms)}); pass an earlier --since"
        )
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
    if not resumed and added == 0:
        # The exchange has no closed candle of this market after --since: no file was written,
        # which the summary line ("created ...") must not claim.
        raise DataError(
            f"{name} returned no closed {symbol} {format_interval(step)} candles from {since} on, "
            f"so {path} was not created; check --symbol, --timeframe and --since"
        )
    return FetchResult(path, added, requests, resumed, first, last)
