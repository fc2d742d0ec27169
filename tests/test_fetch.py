"""Exchange downloads (jaxtrader.fetch) against a fake exchange at the ccxt boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxtrader.data import load_candles
from jaxtrader.errors import DataError
from jaxtrader.fetch import fetch_candles

HOUR_MS = 3_600_000
T0 = int(pd.Timestamp("2024-01-01T00:00:00Z").value // 10**6)


def kline(i: int) -> list[float]:
    price = 100.0 + i
    return [T0 + i * HOUR_MS, price, price + 2.0, price - 1.0, price + 1.0, 10.0 + i]


class FakeExchange:
    """Mimics ccxt's fetch_ohlcv paging: candles with open time >= since, at most `page` of them."""

    id = "fake"

    def __init__(self, candles: int, now_ms: int, page: int = 3, failures: int = 0) -> None:
        self.candles = [kline(i) for i in range(candles)]
        self.now_ms = now_ms
        self.page = page
        self.failures = failures
        self.rateLimit = 50
        self.since_calls: list[int] = []

    def milliseconds(self) -> int:
        return self.now_ms

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> list[list[float]]:
        assert (symbol, timeframe) == ("BTC/USDT", "1h")
        self.since_calls.append(since)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection reset by peer")
        rows = [r for r in self.candles if r[0] >= since]
        return [list(r) for r in rows[: min(limit, self.page)]]


def fetch(exchange: FakeExchange, out: Path, sleeps: list[float], **kw: object) -> object:
    return fetch_candles(
        exchange, "BTC/USDT", "1h", out, since="2024-01-01", sleep=sleeps.append, **kw
    )


def test_pagination_writes_canonical_csv_without_the_forming_candle(tmp_path: Path) -> None:
    # 11 candles exist; "now" is 30 minutes into candle 10, so candle 10 is still forming.
    ex = FakeExchange(candles=11, now_ms=T0 + 10 * HOUR_MS + HOUR_MS // 2)
    out, sleeps = tmp_path / "btc.csv", []
    result = fetch(ex, out, sleeps)
    assert (result.added, result.requests, result.resumed) == (10, 4, False)
    assert ex.since_calls == [T0, T0 + 3 * HOUR_MS, T0 + 6 * HOUR_MS, T0 + 9 * HOUR_MS]
    assert sleeps == [0.05, 0.05, 0.05]  # rateLimit (ms) between requests, not before the first
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,open,high,low,close,volume"
    assert lines[1] == "2024-01-01T00:00:00Z,100.0,102.0,99.0,101.0,10.0"
    candles = load_candles(out)
    assert len(candles) == 10 and candles.end == pd.Timestamp("2024-01-01T09:00:00Z")
    np.testing.assert_allclose(candles.frame["close"], [101.0 + i for i in range(10)])


@pytest.mark.parametrize("name", ["btc.csv", "btc.csv.gz"])
def test_resume_appends_without_duplicates(tmp_path: Path, name: str) -> None:
    out, sleeps = tmp_path / name, []
    first = fetch(FakeExchange(candles=20, now_ms=T0 + 6 * HOUR_MS), out, sleeps)
    assert first.added == 6
    later = FakeExchange(candles=20, now_ms=T0 + 15 * HOUR_MS + 1)
    second = fetch(later, out, sleeps)
    assert (second.resumed, second.added) == (True, 9)
    assert later.since_calls[0] == T0 + 6 * HOUR_MS  # continues after the file's last candle
    assert second.first == pd.Timestamp("2024-01-01T06:00:00Z")
    candles = load_candles(out)  # would raise on duplicates
    assert len(candles) == 15 and candles.gaps.count == 0
    np.testing.assert_allclose(candles.frame["volume"], [10.0 + i for i in range(15)])
    again = fetch(FakeExchange(candles=20, now_ms=T0 + 15 * HOUR_MS + 1), out, sleeps)
    assert (again.added, again.requests) == (0, 0)  # nothing complete is new


def test_resuming_a_file_with_duplicates_needs_dedupe(tmp_path: Path) -> None:
    out, sleeps = tmp_path / "btc.csv", []
    fetch(FakeExchange(candles=20, now_ms=T0 + 6 * HOUR_MS), out, sleeps)
    lines = out.read_text().splitlines()
    out.write_text("\n".join([*lines, lines[-1]]) + "\n")  # the last candle written twice
    later = FakeExchange(candles=20, now_ms=T0 + 9 * HOUR_MS + 1)
    with pytest.raises(DataError, match=r"duplicate timestamp .*--dedupe \(data info, data fetch"):
        fetch(later, out, sleeps)
    assert out.read_text().splitlines() == [*lines, lines[-1]]  # refused before writing anything
    resumed = fetch(later, out, sleeps, dedupe=True)
    assert (resumed.resumed, resumed.added, resumed.first) == (
        True, 3, pd.Timestamp("2024-01-01T06:00:00Z"))  # fmt: skip
    candles = load_candles(out, dedupe=True)
    assert len(candles) == 9 and candles.gaps.count == 0


def test_overlapping_pages_and_bad_candles_are_filtered(tmp_path: Path) -> None:
    ex = FakeExchange(candles=6, now_ms=T0 + 6 * HOUR_MS, page=10)
    ex.candles.insert(2, kline(1))  # an exchange repeating a candle
    ex.candles[4][2] = 50.0  # candle 3: high below open
    out = tmp_path / "b.csv"
    result = fetch(ex, out, [])
    assert result.added == 5
    candles = load_candles(out, gaps="drop")
    assert pd.Timestamp("2024-01-01T03:00:00Z") not in candles.frame.index
    assert candles.gaps.missing == 1


def test_transient_errors_back_off_and_retry(tmp_path: Path) -> None:
    ex = FakeExchange(candles=4, now_ms=T0 + 4 * HOUR_MS, page=10, failures=2)
    sleeps: list[float] = []
    result = fetch(ex, tmp_path / "b.csv", sleeps)
    assert result.added == 4
    assert sleeps == [1.0, 2.0]  # exponential backoff from max(rateLimit, 1 s)
    assert len(ex.since_calls) == 3


def test_persistent_errors_name_the_fix(tmp_path: Path) -> None:
    ex = FakeExchange(candles=4, now_ms=T0 + 4 * HOUR_MS, failures=99)
    sleeps: list[float] = []
    with pytest.raises(
        DataError,
        match=r"fetching BTC/USDT 1h from fake failed after 3 attempts \(ConnectionError: connection "
        r"reset by peer\); check the network and rerun the same command to resume",
    ):
        fetch(ex, tmp_path / "b.csv", sleeps, max_retries=2)
    assert sleeps == [1.0, 2.0]
    assert not (tmp_path / "b.csv").exists()


def test_ccxt_throttling_is_not_doubled(tmp_path: Path) -> None:
    ex = FakeExchange(candles=7, now_ms=T0 + 7 * HOUR_MS)
    ex.enableRateLimit = True  # type: ignore[attr-defined]
    sleeps: list[float] = []
    assert fetch(ex, tmp_path / "b.csv", sleeps).requests == 3
    assert sleeps == []


def test_bad_arguments(tmp_path: Path) -> None:
    ex = FakeExchange(candles=4, now_ms=T0 + 4 * HOUR_MS)
    with pytest.raises(
        DataError, match=r"b\.parquet: fetch writes CSV; use a path ending in \.csv"
    ):
        fetch(ex, tmp_path / "b.parquet", [])
    with pytest.raises(DataError, match=r"does not exist yet; pass --since \(e\.g\. 2024-01-01\)"):
        fetch_candles(ex, "BTC/USDT", "1h", tmp_path / "new.csv")
    with pytest.raises(DataError, match=r"--since 'soon' is not a date; use e\.g\. 2024-01-01"):
        fetch_candles(ex, "BTC/USDT", "1h", tmp_path / "new.csv", since="soon")


def test_a_fetch_that_writes_nothing_is_an_error_not_created(tmp_path: Path) -> None:
    """A --since whose candle has not closed yet, or an exchange with no candles from it on,
    wrote no file but returned normally, so the CLI printed "created X: +0 candles" (exit 0)."""
    # "now" is 30 minutes into the 2024-01-01T00:00 candle: none from --since on has closed.
    early = FakeExchange(candles=4, now_ms=T0 + HOUR_MS // 2)
    with pytest.raises(DataError) as e:
        fetch(early, tmp_path / "a.csv", [])
    assert str(e.value) == (
        "--since 2024-01-01: no 1h candle from then has closed yet (fake's clock says "
        "2024-01-01T00:30:00Z); pass an earlier --since"
    )
    assert early.since_calls == []  # refused before any request
    empty = FakeExchange(candles=0, now_ms=T0 + 5 * HOUR_MS)
    with pytest.raises(DataError) as e:
        fetch(empty, tmp_path / "b.csv", [])
    assert str(e.value) == (
        f"fake returned no closed BTC/USDT 1h candles from 2024-01-01 on, so {tmp_path / 'b.csv'} "
        "was not created; check --symbol, --timeframe and --since"
    )
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


def test_resuming_a_file_of_another_timeframe_names_fetchs_flag(tmp_path: Path) -> None:
    """The data layer's interval mismatch advised "give --interval 1h", a flag `data fetch` does
    not have; other problems of the file keep their own message."""
    out = tmp_path / "btc.csv"
    fetch(FakeExchange(candles=6, now_ms=T0 + 6 * HOUR_MS), out, [])
    with pytest.raises(DataError) as e:
        fetch_candles(FakeExchange(candles=6, now_ms=T0 + 9 * HOUR_MS), "BTC/USDT", "5m", out)
    assert str(e.value) == (
        f"--out {out} holds 1h candles, not 5m: pass --timeframe 1h to resume it, or another "
        "--out for 5m candles"
    )
    out.write_text(out.read_text().replace("101.0,10.0", "101.0,-10.0"))  # a negative volume
    with pytest.raises(DataError, match=r"line 2 \(2024-01-01T00:00:00Z\): negative volume"):
        fetch_candles(FakeExchange(candles=6, now_ms=T0 + 9 * HOUR_MS), "BTC/USDT", "5m", out)


class GarblingExchange(FakeExchange):
    """Like ccxt with `enableLastJsonResponse`: the 2nd answer is cut off mid-body, which ccxt
    parses into an empty page without raising (measured with ccxt 4.5 against a local server)."""

    enableLastJsonResponse = True

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> list[list[float]]:
        rows = super().fetch_ohlcv(symbol, timeframe, since, limit)
        self.last_http_response = "[" + ",".join(str(r) for r in rows) + "]"
        self.last_json_response: object = rows
        if len(self.since_calls) == 2:
            self.last_http_response = self.last_http_response[:20]
            self.last_json_response = None
            return []
        return rows


def test_a_garbled_answer_is_retried_not_taken_for_the_end(tmp_path: Path) -> None:
    ex = GarblingExchange(candles=11, now_ms=T0 + 10 * HOUR_MS + 1)
    out, sleeps = tmp_path / "btc.csv", []
    result = fetch(ex, out, sleeps)
    assert result.added == 10  # before the fix: 3, and "fetch_done" as if the market ended there
    assert ex.since_calls[1] == ex.since_calls[2] == T0 + 3 * HOUR_MS
    assert 1.0 in sleeps  # the backoff of one retry


def test_429_waits_the_retry_after_and_errors_stay_one_line(tmp_path: Path) -> None:
    ccxt = pytest.importorskip("ccxt")

    class Limited(FakeExchange):
        def fetch_ohlcv(self, *a: object, **k: object) -> list[list[float]]:
            if len(self.since_calls) < 2:
                self.since_calls.append(0)
                self.last_response_headers = {"Retry-After": "120"}
                raise ccxt.DDoSProtection("binance 429 Too Many Requests {}")
            return super().fetch_ohlcv(*a, **k)  # type: ignore[arg-type]

    out, sleeps = tmp_path / "btc.csv", []
    fetch(Limited(candles=3, now_ms=T0 + 3 * HOUR_MS, page=5), out, sleeps)
    assert sleeps[:2] == [120.0, 120.0]  # Binance bans an IP that retries a 429 after 1 s

    class Down(FakeExchange):
        def fetch_ohlcv(self, *a: object, **k: object) -> list[list[float]]:
            raise ccxt.ExchangeNotAvailable("binance GET /klines 503\n<html>\n<body>down</body>")

    with pytest.raises(DataError) as e:
        fetch(Down(candles=3, now_ms=T0 + 3 * HOUR_MS), tmp_path / "x.csv", [], max_retries=1)
    assert "\n" not in str(e.value) and "503 <html> <body>down</body>" in str(e.value)
