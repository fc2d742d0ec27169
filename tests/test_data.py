"""Candle loading, validation, gaps and the `data` CLI (jaxtrader.data, jaxtrader.cli.data_cmds)."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import chex
import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import DataConfig
from jaxtrader.data import (
    Candles,
    candle_problem,
    file_sha256,
    first_candle_problem,
    infer_symbol,
    load_candles,
    load_market,
    parse_interval,
    summarize,
    symbol_slug,
    synth_candles,
    write_candles,
)
from jaxtrader.errors import DataError

HEADER = "timestamp,open,high,low,close,volume\n"
ROWS = [  # (iso, o, h, l, c, v): a valid 1h series
    ("2024-01-01T00:00:00Z", 100.0, 110.0, 95.0, 105.0, 10.0),
    ("2024-01-01T01:00:00Z", 105.0, 112.0, 101.0, 108.0, 12.0),
    ("2024-01-01T02:00:00Z", 108.0, 109.0, 100.0, 102.0, 8.0),
    ("2024-01-01T03:00:00Z", 102.0, 104.0, 99.0, 103.0, 9.0),
    ("2024-01-01T04:00:00Z", 103.0, 106.0, 102.0, 104.0, 0.0),
]
MS = [int(pd.Timestamp(r[0]).value // 10**6) for r in ROWS]


def canonical(rows: list[tuple] = ROWS) -> str:
    return HEADER + "".join(",".join(str(x) for x in r) + "\n" for r in rows)


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def assert_expected(candles: Candles) -> None:
    f = candles.frame
    assert list(f.columns) == ["open", "high", "low", "close", "volume", "filled"]
    assert f.index.name == "timestamp" and str(f.index.tz) == "UTC"
    assert f.index.is_monotonic_increasing and f.index.is_unique
    assert all(f[c].dtype == np.float64 for c in ["open", "high", "low", "close", "volume"])
    assert f["filled"].dtype == bool and not f["filled"].any()
    assert list(f.index.strftime("%Y-%m-%dT%H:%M:%SZ")) == [r[0] for r in ROWS]
    chex.assert_trees_all_close(f.iloc[:, :5].to_numpy(), np.array([r[1:] for r in ROWS]))
    assert candles.interval == pd.Timedelta(1, unit="h")


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Captures jaxtrader's structured events even after the CLI set propagate=False."""
    logger = logging.getLogger("jaxtrader")
    attach = not logger.propagate  # otherwise caplog's root handler already sees the records
    if attach:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="jaxtrader")
    yield caplog
    if attach:
        logger.removeHandler(caplog.handler)


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["btc_usdt_1h.csv", "btc_usdt_1h.csv.gz"])
def test_canonical_csv_and_gz(tmp_path: Path, name: str) -> None:
    candles = load_candles(write(tmp_path / name, canonical()))
    assert_expected(candles)
    assert candles.symbol == "BTC/USDT" and candles.source == str(tmp_path / name)


@pytest.mark.parametrize("name", ["out.csv", "out.csv.gz", "out.parquet"])
def test_write_candles_round_trip(tmp_path: Path, name: str) -> None:
    original = load_candles(write(tmp_path / "in.csv", canonical()))
    path = write_candles(original.frame, tmp_path / name)
    again = load_candles(path)
    assert_expected(again)
    pd.testing.assert_frame_equal(again.frame, original.frame)
    if name.endswith(".gz"):  # no time in the gzip header: the same candles, the same bytes
        first = path.read_bytes()
        time.sleep(1.1)  # gzip's header time has whole seconds
        assert write_candles(original.frame, tmp_path / "again.csv.gz").read_bytes() == first


@pytest.mark.parametrize("scale", [1, 1000], ids=["ms", "us"])
def test_binance_kline_csv(tmp_path: Path, scale: int) -> None:
    lines = [
        f"{ms * scale},{o},{h},{lo},{c},{v},{(ms + 3_599_999) * scale},{c * v},42,{v / 2},1.0,0"
        for ms, (_, o, h, lo, c, v) in zip(MS, ROWS, strict=True)
    ]
    path = write(tmp_path / "BTCUSDT-1h-2024-01.csv", "\n".join(lines) + "\n")
    candles = load_candles(path)
    assert_expected(candles)
    assert candles.symbol == "BTC/USDT"


def test_binance_kline_mixed_ms_and_us(tmp_path: Path) -> None:
    # Binance switched spot files to microseconds in 2025; a concatenated history mixes both.
    lines = [
        f"{ms * (1000 if i >= 2 else 1)},{o},{h},{lo},{c},{v},0,0,0,0,0,0"
        for i, (ms, (_, o, h, lo, c, v)) in enumerate(zip(MS, ROWS, strict=True))
    ]
    assert_expected(load_candles(write(tmp_path / "k.csv", "\n".join(lines) + "\n")))


@pytest.mark.parametrize("name", ["BTC_USDT-1h.json", "BTC_USDT-1h.json.gz"])
def test_freqtrade_json(tmp_path: Path, name: str) -> None:
    doc = json.dumps([[ms, *r[1:]] for ms, r in zip(MS, ROWS, strict=True)])
    candles = load_candles(write(tmp_path / name, doc))
    assert_expected(candles)
    assert candles.symbol == "BTC/USDT"


def test_parquet_with_datetime_index(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        [r[1:] for r in ROWS],
        columns=["Open", "High", "Low", "Close", "Volume"],
        index=pd.DatetimeIndex([pd.Timestamp(r[0]).tz_localize(None) for r in ROWS], name="date"),
    )
    frame.to_parquet(tmp_path / "eth.parquet")
    candles = load_candles(tmp_path / "eth.parquet", symbol="ETH/USDT")
    assert_expected(candles)
    assert candles.symbol == "ETH/USDT"


def test_cryptodatadownload_layout_prefers_base_volume_and_sorts(
    tmp_path: Path, events: pytest.LogCaptureFixture
) -> None:
    # Banner line, newest first, "Volume BTC" and "Volume USDT" columns, naive "Date" strings.
    lines = [
        "https://www.CryptoDataDownload.com",
        "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT",
    ]
    for ms, (iso, o, h, lo, c, v) in reversed(list(zip(MS, ROWS, strict=True))):
        date = pd.Timestamp(iso).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{ms},{date},BTCUSDT,{o},{h},{lo},{c},{v},{v * c}")
    candles = load_candles(write(tmp_path / "Binance_BTCUSDT_1h.csv", "\n".join(lines) + "\n"))
    assert_expected(candles)
    # Newest first is a layout, not a fault: reversed with an info record, no warning.
    (record,) = [r for r in events.records if r.getMessage() == "candles_newest_first"]
    assert record.levelno == logging.INFO and record.jt_fields["action"] == "reversed"
    assert not [r for r in events.records if r.levelno >= logging.WARNING]


def test_rows_out_of_order_within_a_file_are_sorted_with_a_warning(
    tmp_path: Path, events: pytest.LogCaptureFixture
) -> None:
    lines = ["timestamp,open,high,low,close,volume"]
    rows = list(ROWS)
    rows[1], rows[2] = rows[2], rows[1]  # one pair swapped: not a newest-first file
    lines += [",".join(str(x) for x in r) for r in rows]
    assert_expected(load_candles(write(tmp_path / "x.csv", "\n".join(lines) + "\n")))
    (record,) = [r for r in events.records if r.getMessage() == "candles_unsorted"]
    assert record.levelno == logging.WARNING and record.jt_fields["rows_out_of_order"] == 1


def test_header_variants_datetime_with_offset(tmp_path: Path) -> None:
    lines = ["Datetime,Open,High,Low,Close,Volume"]
    for iso, o, h, lo, c, v in ROWS:  # same instants written in UTC+02:00
        local = pd.Timestamp(iso).tz_convert("Etc/GMT-2").isoformat()
        lines.append(f"{local},{o},{h},{lo},{c},{v}")
    assert_expected(load_candles(write(tmp_path / "x.csv", "\n".join(lines) + "\n")))


def test_header_variants_open_time_ms_and_short_names(tmp_path: Path) -> None:
    lines = ["open_time,o,h,l,c,v"]
    lines += [
        f"{ms},{o},{h},{lo},{c},{v}" for ms, (_, o, h, lo, c, v) in zip(MS, ROWS, strict=True)
    ]
    assert_expected(load_candles(write(tmp_path / "x.csv", "\n".join(lines) + "\n")))


def test_separate_date_and_time_columns(tmp_path: Path) -> None:
    lines = ["Date,Time,Open,High,Low,Close,Volume"]
    for iso, o, h, lo, c, v in ROWS:
        ts = pd.Timestamp(iso)
        lines.append(f"{ts:%Y-%m-%d},{ts:%H:%M},{o},{h},{lo},{c},{v}")
    assert_expected(load_candles(write(tmp_path / "x.csv", "\n".join(lines) + "\n")))


def test_headerless_canonical_rows(tmp_path: Path) -> None:
    assert_expected(load_candles(write(tmp_path / "x.csv", canonical().split("\n", 1)[1])))


def test_only_quote_volume_is_used_with_a_warning(
    tmp_path: Path, events: pytest.LogCaptureFixture
) -> None:
    lines = ["Date,Open,High,Low,Close,Volume USDT"]
    lines += [f"{iso},{o},{h},{lo},{c},{v * 2}" for iso, o, h, lo, c, v in ROWS]
    candles = load_candles(write(tmp_path / "BTCUSDT.csv", "\n".join(lines) + "\n"))
    np.testing.assert_allclose(candles.frame["volume"], [r[5] * 2 for r in ROWS])
    (record,) = [r for r in events.records if r.getMessage() == "quote_volume_used"]
    assert record.jt_fields["column"] == "Volume USDT"


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("binance_btcusdt_1h.csv.gz", "BTC/USDT"),
        ("BTC_USDT-1h.json", "BTC/USDT"),
        ("ETH-USD.csv", "ETH/USD"),
        ("ethbtc_5m.parquet", "ETH/BTC"),
        ("kraken_SOLEUR_1d.csv", "SOL/EUR"),
        ("usdcusdt.csv", "USDC/USDT"),
        ("my candles.csv", "MY CANDLES"),
    ],
)
def test_infer_symbol(name: str, symbol: str) -> None:
    assert infer_symbol(name) == symbol


def test_symbol_flag_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "binance_btcusdt_1h.csv", canonical())
    assert load_candles(path, symbol="XBT/EUR").symbol == "XBT/EUR"


def test_small_helpers(tmp_path: Path) -> None:
    assert parse_interval("1h") == pd.Timedelta(1, unit="h")
    assert parse_interval("15min") == parse_interval("15m") == pd.Timedelta(15, unit="min")
    assert parse_interval("1d") == pd.Timedelta(1, unit="D")
    assert parse_interval("1w") == pd.Timedelta(7, unit="D")
    for bad in ("1M", "h", "0h", "1 fortnight"):
        with pytest.raises(DataError, match=r"invalid interval .*e\.g\. 1h"):
            parse_interval(bad)
    assert symbol_slug("BTC/USDT") == "BTC-USDT"
    assert symbol_slug("SYNTH/USD") == "SYNTH-USD"
    path = write(tmp_path / "f.csv", "abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ----------------------------------------------------------------------------- validation


def test_candle_problem() -> None:
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    assert candle_problem(ts, 100, 110, 90, 105, 1) is None
    assert candle_problem(ts, 100, 110, 90, 105, 0) is None
    assert candle_problem(None, 100, 110, 90, 105, 1) == "missing timestamp"
    assert candle_problem(ts, 100, 110, float("nan"), 105, 1) == (
        "missing or non-finite value (NaN/inf) in low"
    )
    assert candle_problem(ts, 100, 110, 0, 105, 1) == "non-positive price (low=0)"
    assert candle_problem(ts, 100, 104, 90, 105, 1) == "high 104 is below max(open, close) 105"
    assert candle_problem(ts, 100, 95, 96, 97, 1) == "high 95 is below low 96"
    assert candle_problem(ts, 100, 110, 101, 105, 1) == "low 101 is above min(open, close) 100"
    assert candle_problem(ts, 100, 110, 90, 105, -1) == "negative volume -1"


SCALE = "(no market trades at that scale: a corrupt or mis-scaled value)"


def test_candle_problem_refuses_absurd_magnitudes() -> None:
    """Finite but absurd values: 1e300 volume used to pass and overflow price x volume in the
    features, whose error then sent the user back to this check, which had accepted it."""
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    assert candle_problem(ts, 100, 110, 90, 105, 1e300) == (
        f"volume 1e+300 is above 1e+30, the largest price or volume accepted {SCALE}"
    )
    assert candle_problem(ts, 1e300, 1e300, 1e300, 1e300, 1) == (
        "open 1e+300, high 1e+300, low 1e+300, close 1e+300 are above 1e+30, the largest price "
        f"or volume accepted {SCALE}"
    )
    assert candle_problem(ts, 100, 110, 1e-300, 105, 1) == (
        f"low 1e-300 is below 1e-30, the smallest price accepted {SCALE}"
    )
    assert candle_problem(ts, 1e-300, 1e31, 1e-300, 1e-300, 1e31) == (
        "high 1e+31, volume 1e+31 are above 1e+30, the largest price or volume accepted; open "
        "1e-300, low 1e-300, close 1e-300 are below 1e-30, the smallest price accepted "
        f"{SCALE}"
    )
    # The bounds themselves are valid, as are zero volume and ordinary extremes of real markets.
    assert candle_problem(ts, 1e30, 1e30, 1e30, 1e30, 1e30) is None
    assert candle_problem(ts, 1e-30, 1e-30, 1e-30, 1e-30, 0) is None
    assert candle_problem(ts, 1.2e-14, 1.3e-14, 1.1e-14, 1.2e-14, 3e20) is None


# One defect per candle kind first_candle_problem knows, as (column, value) changes.
_DEFECTS = [
    {"close": np.nan},
    {"volume": np.inf},
    {"open": -np.inf},
    {"low": 0.0},
    {"volume": 1e31},
    {"low": 1e-31, "open": 1e-31, "close": 1e-31},
    {"high": 1.0, "low": 2.0, "open": 1.5, "close": 1.5},
    {"close": 1e9},
    {"open": 1e-9},
    {"volume": -1e-300},
]


@pytest.mark.parametrize("seed", range(3))
def test_first_candle_problem_on_whole_columns_names_the_one_bad_candle(seed: int) -> None:
    """On whole columns (the loader, and features on frames that skipped it) the answer is the
    bad candle's row and the same words as for that candle alone, whatever the defect and the
    row; columns of valid candles, bounds included, give None (the whole-column fast path)."""
    frame = synth_candles(rows=500, seed=seed).frame
    cols = {
        name: frame[name].to_numpy().copy() for name in ("open", "high", "low", "close", "volume")
    }
    cols["volume"][::7] = 0.0
    assert first_candle_problem(*cols.values()) is None
    edge = {name: x.copy() for name, x in cols.items()}
    for name in ("open", "high", "low", "close", "volume"):
        edge[name][3] = 1e30
        edge[name][4] = 1e-30 if name != "volume" else 0.0
    assert first_candle_problem(*edge.values()) is None
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    for defect in _DEFECTS:
        bad = {name: x.copy() for name, x in cols.items()}
        row = int(rng.integers(0, 500))
        for name, value in defect.items():
            bad[name][row] = value
        expected = candle_problem(ts, *(float(x[row]) for x in bad.values()))
        assert expected is not None
        assert first_candle_problem(*bad.values()) == (row, expected)
    assert first_candle_problem(*(x[:0] for x in cols.values())) is None


def test_absurd_volume_in_a_written_file_is_named_on_load(tmp_path: Path) -> None:
    frame = synth_candles(rows=600, seed=0).frame.copy()
    frame.iloc[500, frame.columns.get_loc("volume")] = 1e300
    path = write_candles(frame, tmp_path / "huge.csv")
    with pytest.raises(DataError) as err:
        load_candles(path)
    assert str(err.value) == (
        f"{path}: line 502 (2023-01-21T20:00:00Z): volume 1e+300 is above 1e+30, the largest "
        f"price or volume accepted {SCALE}; fix or remove the row"
    )


def _bad(tmp_path: Path, row: int, replacement: str) -> Path:
    lines = canonical().splitlines()
    lines[row] = replacement
    return write(tmp_path / "bad.csv", "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        (
            "2024-01-01T02:00:00Z,108,109,100,NaN,8",
            r"line 4 \(2024-01-01T02:00:00Z\): missing or non-finite value \(NaN/inf\) in close; fix or remove the row",
        ),
        (
            "2024-01-01T02:00:00Z,108,inf,100,102,8",
            r"line 4 .*non-finite value \(NaN/inf\) in high",
        ),
        ("2024-01-01T02:00:00Z,108,109,100,,8", r"line 4 .*non-finite value \(NaN/inf\) in close"),
        (
            "2024-01-01T02:00:00Z,-108,109,-100,102,8",
            r"line 4 .*non-positive price \(open=-108, low=-100\)",
        ),
        (
            "2024-01-01T02:00:00Z,108,107,100,102,8",
            r"line 4 .*high 107 is below max\(open, close\) 108",
        ),
        (
            "2024-01-01T02:00:00Z,108,109,100,95,8",
            r"line 4 .*low 100 is above min\(open, close\) 95",
        ),
        ("2024-01-01T02:00:00Z,108,109,100,102,-8", r"line 4 .*negative volume -8"),
        (
            "2024-01-01T02:00:00Z,108,109,100,102,1e300",
            r"line 4 \(2024-01-01T02:00:00Z\): volume 1e\+300 is above 1e\+30, the largest price "
            r"or volume accepted \(no market trades at that scale: a corrupt or mis-scaled "
            r"value\); fix or remove the row$",
        ),
        (
            "2024-01-01T02:00:00Z,108,109,100,1e300,8",
            r"line 4 \(2024-01-01T02:00:00Z\): close 1e\+300 is above 1e\+30, the largest price",
        ),
        (
            "2024-01-01T02:00:00Z,108,109,1e-300,102,8",
            r"line 4 \(2024-01-01T02:00:00Z\): low 1e-300 is below 1e-30, the smallest price "
            r"accepted .*; fix or remove the row$",
        ),
        ("2024-01-01T02:00:00Z,108,99,101,102,8", r"line 4 .*high 99 is below low 101"),
        ("2024-01-01T02:00:00Z,108,109,abc,102,8", r"line 4: low 'abc' is not a number"),
        (
            "2024-13-45T02:00:00Z,108,109,100,102,8",
            r"line 4: cannot parse timestamp '2024-13-45T02:00:00Z'; use ISO 8601",
        ),
        (",108,109,100,102,8", r"line 4: .*(missing timestamp|cannot parse timestamp)"),
        # Past nanoseconds' range: an internal error (OutOfBoundsDatetime) under pandas 3, which
        # parses ISO text to microseconds; pandas 2 cannot parse it at all.
        (
            "2262-04-12T00:00:00Z,108,109,100,102,8",
            r"line 4: (timestamp '2262-04-12T00:00:00Z' is after 2262-04-11, the last day "
            r"nanosecond timestamps can hold; fix or remove the row|cannot parse timestamp "
            r"'2262-04-12T00:00:00Z')",
        ),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, replacement: str, message: str) -> None:
    with pytest.raises(DataError, match=r"bad\.csv: " + message):
        load_candles(_bad(tmp_path, 3, replacement))


def test_unreadable_files(tmp_path: Path) -> None:
    full = gzip.compress(canonical(ROWS * 1).encode() * 50)
    (tmp_path / "trunc.csv.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(
        DataError, match=r"trunc\.csv\.gz: cannot read file \(.*\); it may be truncated"
    ):
        load_candles(tmp_path / "trunc.csv.gz")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty; expected a header"):
        load_candles(tmp_path / "empty.csv")
    (tmp_path / "head.csv").write_text(HEADER)
    with pytest.raises(DataError, match=r"head\.csv: no candle rows \(header only\?\)"):
        load_candles(tmp_path / "head.csv")
    # Not a CSV at all: the missing columns are named, not "header only" or "empty".
    for i, text in enumerate(["hello world", "hello world\n", "hello,world\n"]):
        (tmp_path / f"hello{i}.csv").write_text(text)
        with pytest.raises(DataError) as e:
            load_candles(tmp_path / f"hello{i}.csv")
        found = text.strip().replace(",", ", ")
        assert str(e.value) == (
            f"{tmp_path / f'hello{i}.csv'}: missing column(s) timestamp, open, high, low, close, "
            f"volume; found: {found}; the file needs timestamp,open,high,low,close,volume (or a "
            "Binance kline / freqtrade layout)"
        )
    with pytest.raises(DataError, match=r"nope\.csv: file not found; check the path"):
        load_candles(tmp_path / "nope.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON .*expected freqtrade candles"):
        load_candles(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text("[[1704067200000, 1, 2, 0.5, 1.5, 3], null]")
    with pytest.raises(
        DataError,
        match=r"short\.json: row 2: expected \[ms, open, high, low, close, volume\], got null",
    ):
        load_candles(tmp_path / "short.json")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read file"):
        load_candles(tmp_path / "junk.parquet")


def test_a_row_with_extra_fields_is_a_bad_row_to_fix(tmp_path: Path) -> None:
    """pandas refuses a row with more fields than the header; that read as a file to re-download
    ("cannot read file ...; it may be truncated or not a candle file")."""
    rows = canonical(ROWS).splitlines()
    rows[3] += ",7,8"  # file line 4
    path = write(tmp_path / "extra.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        load_candles(path)
    assert str(e.value) == (
        f"{path}: line 4 has 8 fields where the lines before it have 6; fix or remove the row"
    )
    banner = write(
        tmp_path / "banner.csv", "https://www.cryptodatadownload.com\n" + "\n".join(rows)
    )
    with pytest.raises(DataError, match=r"banner\.csv: line 5 has 8 fields where the lines before"):
        load_candles(banner)


def test_missing_columns_named_with_what_was_found(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "Date,Open,High,Low,Volume USDT\n2024-01-01,1,2,0.5,3\n")
    with pytest.raises(
        DataError,
        match=r"m\.csv: missing column\(s\) close; found: Date, Open, High, Low, Volume USDT",
    ):
        load_candles(path)
    path = write(tmp_path / "k.csv", "1704067200000,1,2,0.5\n")
    with pytest.raises(
        DataError, match=r"k\.csv: header-less file has 4 columns; expected at least 6"
    ):
        load_candles(path)


def test_duplicates_error_or_dedupe_keeps_last(
    tmp_path: Path, events: pytest.LogCaptureFixture
) -> None:
    rows = [*ROWS[:3], (ROWS[2][0], 108.0, 120.0, 100.0, 119.0, 99.0), *ROWS[3:]]
    path = write(tmp_path / "d.csv", canonical(rows))
    with pytest.raises(
        DataError,
        match=r"d\.csv: line 5: duplicate timestamp 2024-01-01T02:00:00Z \(1 duplicate row\(s\) in "
        r"total\); remove them from the file, or keep the last of each with --dedupe \(data "
        r"info, data fetch, features compute, train, walkforward, study, evaluate, trade\) or "
        r"`dedupe = true` under \[data\] in --config$",
    ):
        load_candles(path)
    candles = load_candles(path, dedupe=True)
    assert len(candles) == 5
    assert candles.frame.loc["2024-01-01T02:00:00Z", "close"] == 119.0  # the later row wins
    (record,) = [r for r in events.records if r.getMessage() == "duplicates_dropped"]
    assert record.levelno == logging.WARNING and record.jt_fields["count"] == 1


def test_the_duplicates_message_names_commands_that_have_dedupe(tmp_path: Path) -> None:
    """The message listed --dedupe for data, features, train and walkforward only, so `evaluate
    --data` and `trade --feed replay:` of such a file had no fix but editing it: each command
    the message names must have the flag, and every command that reads candle files is named."""
    import re

    import click

    from jaxtrader.cli import cli

    rows = [*ROWS[:3], ROWS[2], *ROWS[3:]]
    path = write(tmp_path / "d.csv", canonical(rows))
    with pytest.raises(DataError) as e:
        load_candles(path)
    named = re.search(r"--dedupe \(([^)]*)\)", str(e.value))
    assert named is not None
    names = named.group(1).split(", ")
    assert {"evaluate", "trade"} <= set(names)
    for name in names:
        command: click.Command = cli
        for part in name.split():
            assert isinstance(command, click.Group)
            command = command.commands[part]
        flags = {opt for p in command.params for opt in getattr(p, "opts", ())}
        assert "--dedupe" in flags, name


def test_interval_given_must_agree(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", canonical())
    assert load_candles(path, interval="1h").interval == pd.Timedelta(1, unit="h")
    with pytest.raises(
        DataError, match=r"interval 30m disagrees with the data, whose candles are mostly 1h apart"
    ):
        load_candles(path, interval="30m")
    one = write(tmp_path / "one.csv", canonical(ROWS[:1]))
    with pytest.raises(DataError, match=r"one\.csv: a single candle does not show its interval"):
        load_candles(one)
    assert len(load_candles(one, interval="1h")) == 1


def test_off_grid_timestamp_is_named(tmp_path: Path) -> None:
    hours = pd.date_range("2024-01-01", periods=10, freq="h", tz="UTC")
    rows = [(f"{t:%Y-%m-%dT%H:%M:%SZ}", 100.0, 101.0, 99.0, 100.0, 1.0) for t in hours]
    rows[6] = ("2024-01-01T06:30:00Z", *rows[6][1:])
    with pytest.raises(
        DataError,
        match=r"g\.csv: line 8: timestamp 2024-01-01T06:30:00Z is off the 1h grid that starts at "
        r"2024-01-01T00:00:00Z",
    ):
        load_candles(write(tmp_path / "g.csv", canonical(rows)))


# ----------------------------------------------------------------------------- gaps


def _gappy(tmp_path: Path) -> Path:
    # 00:00, 01:00, [02:00 missing], 03:00, 04:00 ... plus a 3-candle hole before 09:00.
    hours = [0, 1, 3, 4, 5, 9, 10]
    rows = [
        (f"2024-01-01T{h:02d}:00:00Z", 100.0 + h, 102.0 + h, 99.0 + h, 101.0 + h, 5.0)
        for h in hours
    ]
    return write(tmp_path / "gappy.csv", canonical(rows))


def test_gaps_fill_marks_rows(tmp_path: Path) -> None:
    candles = load_candles(_gappy(tmp_path))
    f = candles.frame
    assert len(f) == 11
    assert (candles.gaps.count, candles.gaps.missing, candles.gaps.longest) == (2, 4, 3)
    assert candles.gaps.longest_at == pd.Timestamp("2024-01-01T06:00:00Z")
    np.testing.assert_array_equal(f["filled"].to_numpy().nonzero()[0], [2, 6, 7, 8])
    for ts, prev_close in (("02:00", 102.0), ("06:00", 106.0), ("08:00", 106.0)):
        row = f.loc[f"2024-01-01T{ts}:00Z"]
        assert row[["open", "high", "low", "close"]].tolist() == [prev_close] * 4
        assert row["volume"] == 0.0
    assert f.index.to_series().diff().dropna().eq(pd.Timedelta(1, unit="h")).all()


def test_gaps_drop_and_error(tmp_path: Path) -> None:
    dropped = load_candles(_gappy(tmp_path), gaps="drop")
    assert len(dropped) == 7 and not dropped.frame["filled"].any()
    assert dropped.gaps.missing == 4
    with pytest.raises(
        DataError,
        match=r"gappy\.csv: 2 gaps \(4 missing candles\), the first after 2024-01-01T01:00:00Z; use "
        r"--gaps fill or --gaps drop",
    ):
        load_candles(_gappy(tmp_path), gaps="error")


def test_summarize_counts_real_rows(tmp_path: Path) -> None:
    info = summarize(load_candles(_gappy(tmp_path)))
    assert (info["rows"], info["filled"], info["zero_volume"]) == (7, 4, 0)
    assert info["gaps"] == {
        "count": 2,
        "missing": 4,
        "longest": 3,
        "longest_at": "2024-01-01T06:00:00Z",
    }
    assert (info["min_low"], info["max_high"]) == (99.0, 112.0)


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_shared_btc_1h_figures(btc_1h: Path) -> None:
    candles = load_candles(btc_1h)
    info = summarize(candles)
    assert (info["rows"], info["interval"], candles.symbol) == (72_569, "1h", "BTC/USDT")
    assert info["gaps"] == {
        "count": 28,
        "missing": 128,
        "longest": 33,
        "longest_at": "2018-02-08T01:00:00Z",
    }
    assert info["zero_volume"] == 4
    assert (info["first"], info["last"]) == ("2017-08-17T04:00:00Z", "2025-12-02T04:00:00Z")
    assert len(candles) == 72_569 + 128 and int(candles.frame["filled"].sum()) == 128


@pytest.mark.realdata
def test_shared_eth_1h_and_btc_5m(eth_1h: Path, btc_5m: Path) -> None:
    eth = summarize(load_candles(eth_1h))
    assert (eth["rows"], eth["symbol"], eth["gaps"]["count"], eth["zero_volume"]) == (
        72_569,
        "ETH/USDT",
        28,
        6,
    )
    btc = load_candles(btc_5m)
    assert (len(btc), btc.interval, btc.gaps.count) == (61_999, pd.Timedelta(5, unit="min"), 0)


def test_load_market_synthetic_and_file(tmp_path: Path) -> None:
    synth = load_market(DataConfig(synth_rows=300, synth_seed=2))
    assert (len(synth), synth.symbol) == (300, "SYNTH/USD")
    pd.testing.assert_frame_equal(synth.frame, synth_candles(rows=300, seed=2).frame)
    path = _gappy(tmp_path)
    from_file = load_market(DataConfig(path=str(path), gaps="drop", symbol="X/Y"))
    assert (len(from_file), from_file.symbol) == (7, "X/Y")


def test_a_negative_synthetic_seed_is_named_not_an_internal_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """numpy refuses a negative seed: `data synth --seed -1`, and `synth_seed = -1` in a config,
    ended as "internal error (ValueError: expected non-negative integer)", exit 1."""
    from jaxtrader.cli import main

    with pytest.raises(DataError) as e:
        load_market(DataConfig(synth_rows=300, synth_seed=-1))
    assert str(e.value) == (
        "the synthetic market's seed must be 0 or more, got -1 (data synth --seed, or synth_seed "
        "under [data] in --config)"
    )
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--rows", "10", "--seed", "-1", "--out", "never.csv"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "error: Invalid value for '--seed': -1 is not in the range x>=0; see 'jaxtrader data "
        "synth --help'\n"
    )


# ----------------------------------------------------------------------------- CLI (subprocess)


def jaxtrader(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jaxtrader", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_info_on_broken_file_is_one_line_exit_2(tmp_path: Path) -> None:
    path = _bad(tmp_path, 2, "2024-01-01T01:00:00Z,105,100,101,108,12")
    result = jaxtrader("data", "info", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"error: {path}: line 3 (2024-01-01T01:00:00Z): high 100 is below"
    )


@pytest.mark.parametrize("command", [["data", "info"], ["features", "compute", "--out", "f.pq"]])
def test_cli_refuses_an_absurd_volume_in_one_line_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """End to end: the loader's line, not a NaN feature blamed on a validator that passed it."""
    from jaxtrader.cli import main

    monkeypatch.chdir(tmp_path)
    frame = synth_candles(rows=600, seed=0).frame.copy()
    frame.iloc[500, frame.columns.get_loc("volume")] = 1e305
    path = write_candles(frame, tmp_path / "huge.csv")
    args = [*command, str(path)] if command[0] == "data" else [*command, "--data", str(path)]
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    assert (exc.value.code, captured.out) == (2, "")
    assert captured.err == (
        f"error: {path}: line 502 (2023-01-21T20:00:00Z): volume 1e+305 is above 1e+30, the "
        f"largest price or volume accepted {SCALE}; fix or remove the row\n"
    )
    assert not (tmp_path / "f.pq").exists()


def test_cli_info_json_parses(tmp_path: Path) -> None:
    path = write_candles(synth_candles(rows=500, seed=1).frame, tmp_path / "s.csv.gz")
    result = jaxtrader("data", "info", str(path), "--symbol", "SYNTH/USD", "--json", "--no-labels")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["rows"], info["interval"], info["symbol"], info["gaps"]["count"]) == (
        500,
        "1h",
        "SYNTH/USD",
        0,
    )
    assert info["sha256"] == file_sha256(path)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real entry point in-process (exit code, stdout, stderr); cheaper than a subprocess."""
    from jaxtrader.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_synth_writes_the_market(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.parquet"
    code, stdout, _ = run_main(
        capsys, "data", "synth", "--rows", "300", "--seed", "4", "--out", str(out)
    )
    assert code == 0
    assert f"wrote 300 candles (synthetic:seed=4,rows=300,interval=1h) to {out}" in stdout
    expected = synth_candles(rows=300, seed=4).frame
    pd.testing.assert_frame_equal(load_candles(out, symbol="SYNTH/USD").frame, expected)
    code, stdout, _ = run_main(capsys, "data", "info", "--json")
    assert code == 0
    info = json.loads(stdout)
    assert (info["rows"], info["symbol"], info["source"]) == (
        20_000,
        "SYNTH/USD",
        "synthetic:seed=0,rows=20000,interval=1h",
    )
    assert info["labels"]["horizon"] == 5 and set(info["labels"]["balance"]) == {
        "train",
        "val",
        "test",
    }
    assert all(0.4 < up < 0.6 for up in info["labels"]["balance"].values())  # no signal to find
    code, stdout, _ = run_main(capsys, "data", "info", "--no-labels")
    assert code == 0
    assert "rows         20,000" in stdout and "symbol       SYNTH/USD" in stdout
    code, _, stderr = run_main(capsys, "data", "synth", "--out", str(tmp_path / "s.txt"))
    assert (code, stderr) == (
        2,
        f"error: {tmp_path / 's.txt'}: unsupported output extension; use .csv, .csv.gz or .parquet\n",
    )


def test_cli_fetch_without_ccxt_says_how_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ccxt", None)  # absent even where installed (dev extra)
    args = ("data", "fetch", "--symbol", "BTC/USDT", "--out", str(tmp_path / "x.csv"))
    code, _, stderr = run_main(capsys, *args)
    assert code == 2
    assert stderr == "error: fetching candles needs ccxt: pip install 'jaxtrader[live]'\n"
