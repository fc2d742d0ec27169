"""OHLCV candles: load, validate and normalise files; detect and handle gaps; the default market.

Owns the `Candles` value every other module consumes. One loader reads our canonical CSV
(`timestamp,open,high,low,close,volume`, ISO 8601 UTC), CSV.GZ, Parquet/Feather, Binance kline CSV
(no header, open time in ms or µs), freqtrade JSON (`[[ms,o,h,l,c,v],...]`, optionally gzipped)
and common header variants. Every check is vectorised and names the file, the first offending row
and the fix. The synthetic generator lives in `jaxtrader.synth`; `synth_candles` wraps it here so
real and synthetic candles share one constructor.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from jaxtrader.errors import DataError, path_problem
from jaxtrader.logs import get_logger, log_event

if TYPE_CHECKING:
    from jaxtrader.config import DataConfig

GapPolicy = Literal["fill", "drop", "error"]
PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV = (*PRICE_COLUMNS, "volume")
QUOTES = ("USDT", "USDC", "BUSD", "TUSD", "FDUSD", "USD", "EUR", "GBP", "BTC", "ETH", "BNB")
SYNTH_START = pd.Timestamp("2023-01-01T00:00:00Z")

_log = get_logger(__name__)
_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9, "w": 7 * 86400 * 10**9}
_UNIT_ALIASES = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "m": "m", "min": "m", "mins": "m", "minute": "m", "minutes": "m", "t": "m",
    "h": "h", "hr": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "w": "w", "wk": "w", "week": "w", "weeks": "w",
}  # fmt: skip
_TIME_NAMES = (
    "timestamp", "open_time", "opentime", "datetime", "date_time", "date", "time", "unix",
    "unix_timestamp", "ts", "t", "candle_begin_time", "time_period_start",
)  # fmt: skip
_PRICE_NAMES = {
    "open": ("open", "o", "open_price", "opening_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "close_price", "closing_price", "last"),
}
_VOLUME_NAMES = ("volume", "vol", "v", "base_volume", "volume_base", "basevolume", "base_vol")


def timestamps_ns(values: Any) -> np.ndarray:
    """int64 nanoseconds since the epoch (UTC) from a DatetimeIndex, a datetime Series, a
    datetime64 array or a list of timestamps/ISO strings: the ONE place a time unit is decided.

    pandas 3 keeps the resolution it parsed (microseconds for ISO strings, so `.asi8` returns
    microseconds there); converting through `as_unit("ns")` makes the unit explicit. Integer input
    is taken to be ns already.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    if isinstance(values, pd.Series):
        values = pd.DatetimeIndex(values)
    if not isinstance(values, pd.DatetimeIndex):
        values = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    return np.asarray(values.as_unit("ns").asi8, dtype=np.int64)


@dataclass(frozen=True)
class GapReport:
    """Missing candles on the regular grid, as found in the file (before any filling)."""

    count: int = 0  # separate runs of missing candles
    missing: int = 0  # total missing candles
    longest: int = 0  # longest run, in candles
    longest_at: pd.Timestamp | None = None  # first missing candle of the longest run

    def to_dict(self) -> dict[str, Any]:
        at = None if self.longest_at is None else _iso(self.longest_at)
        return {"count": self.count, "missing": self.missing, "longest": self.longest,
                "longest_at": at}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Candles:
    """Validated candles: UTC `timestamp` index of candle OPEN times, float64 OHLCV, bool `filled`."""

    frame: pd.DataFrame
    interval: pd.Timedelta
    symbol: str
    source: str
    gaps: GapReport = field(default_factory=GapReport)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def start(self) -> pd.Timestamp:
        return self.frame.index[0]

    @property
    def end(self) -> pd.Timestamp:
        return self.frame.index[-1]


# ----------------------------------------------------------------------------- small helpers


def parse_interval(text: str | pd.Timedelta) -> pd.Timedelta:
    """'1h', '5m', '15min', '1d', '1w' (ccxt timeframes and pandas-style units) -> Timedelta."""
    if isinstance(text, pd.Timedelta):
        if text <= pd.Timedelta(0):
            raise DataError(f"interval {text} must be positive")
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]+)\s*", str(text))
    unit = None if m is None else _UNIT_ALIASES.get(m.group(2).lower())
    if m is not None and m.group(2) == "M":
        unit = None  # months are irregular; refuse rather than guess 30 days
    if m is None or unit is None or int(m.group(1)) <= 0:
        raise DataError(
            f"invalid interval {text!r}; use a number and a unit s, m, h, d or w, e.g. 1h or 5m"
        )
    return pd.Timedelta(int(m.group(1)) * _NS[unit], unit="ns")


def format_interval(interval: pd.Timedelta) -> str:
    """Inverse of parse_interval for whole units: Timedelta('1h') -> '1h'."""
    ns = int(interval.value)
    for unit in ("w", "d", "h", "m", "s"):
        if ns % _NS[unit] == 0:
            return f"{ns // _NS[unit]}{unit}"
    return str(interval)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes (the data fingerprint stored in checkpoint manifests)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the path") from None
    return digest.hexdigest()


def data_sha256(candles: Candles) -> str | None:
    """The data fingerprint of loaded candles: the file's sha256, None for the synthetic market
    (its `source` string names the generator and seed instead)."""
    source = str(candles.source)
    return file_sha256(source) if Path(source).is_file() else None


def symbol_slug(symbol: str) -> str:
    """'BTC/USDT' -> 'BTC-USDT': a symbol safe for directory names."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", symbol.strip()).strip("-")
    return slug or "UNKNOWN"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".json", ".parquet", ".pq", ".feather", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def infer_symbol(path: str | Path) -> str:
    """BASE/QUOTE from a file name (binance_btcusdt_1h -> BTC/USDT, BTC_USDT-1h -> BTC/USDT)."""
    stem = _stem(Path(path))
    tokens = [t for t in re.split(r"[_\-\s.]+", stem.upper()) if t]
    alpha = [t.isalpha() and 2 <= len(t) <= 10 for t in tokens]
    for i in range(len(tokens) - 1):
        if alpha[i] and tokens[i + 1] in QUOTES and tokens[i] not in QUOTES[:4]:
            return f"{tokens[i]}/{tokens[i + 1]}"
    for token, ok in zip(tokens, alpha, strict=True):
        if not ok:
            continue
        for quote in QUOTES:
            base = token[: -len(quote)]
            if token.endswith(quote) and 2 <= len(base) <= 8:
                return f"{base}/{quote}"
    return stem.upper() or "UNKNOWN"


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- candle checks


# The largest price or volume, and the smallest positive price, a candle may carry. Nothing real
# comes near either end: prices run from ~1e-14 (meme coins quoted in BTC) to ~1e11 (BTC in
# Iranian rial), base volumes to ~1e20 (a month of a 1e-12-dollar token), so a value past them is
# a corrupt or mis-scaled field. Inside them every product the features form stays finite and
# normal in float64 (max 1.8e308, smallest normal 2.2e-308) with a wide margin: price^2
# (Bollinger's variance sums; prices below ~1e-154 underflow them to a silent zero band width)
# and price x volume summed over a billion candles (MFI, VWAP, Chaikin: 1e69 at most). Without
# them a volume of 1e300 went through as valid and 1e305 overflowed price x volume (mfi_14 NaN,
# blamed on the validator). Checked in `first_candle_problem`, so the loader, `candle_problem`
# (trading feeds, the trading manager) and fetch refuse the same candles. Zero volume stays
# valid (gap-filled and idle candles). A value inside the bounds but far out of scale with its
# series is left to `features`, which names it if it breaks a feature.
MAX_VALUE = 1e30
MIN_PRICE = 1e-30


def first_candle_problem(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray
) -> tuple[int, str] | None:
    """Row index and description of the first invalid candle; checks in priority order.

    The loader calls it on whole columns and `candle_problem` on one candle: one implementation.
    `features` calls it too, on every frame or array it is given, so it first decides whether all
    candles are valid in a few whole-column operations (the usual case) and only then looks for
    which one is not.
    """
    with np.errstate(invalid="ignore"):
        # Open and close within [low, high] keep every price within [min low, max high]; NaN
        # fails each comparison, so any NaN, like any other problem, takes the path below.
        if (
            lo.size
            and lo.min() >= MIN_PRICE
            and h.max() <= MAX_VALUE
            and v.min() >= 0
            and v.max() <= MAX_VALUE
            and (h >= np.maximum(o, c)).all()
            and (lo <= np.minimum(o, c)).all()
        ):
            return None
        finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & np.isfinite(v)
        positive = finite & (o > 0) & (h > 0) & (lo > 0) & (c > 0)
        prices = (o, h, lo, c)
        masks = (
            ~finite,
            finite & ~positive,
            positive
            & (
                (v > MAX_VALUE)
                | np.logical_or.reduce([(x > MAX_VALUE) | (x < MIN_PRICE) for x in prices])
            ),
            finite & (h < lo),
            finite & (h < np.maximum(o, c)),
            finite & (lo > np.minimum(o, c)),
            finite & (v < 0),
        )
    for kind, mask in enumerate(masks):
        bad = np.flatnonzero(mask)
        if bad.size:
            i = int(bad[0])
            return i, _describe(
                kind, float(o[i]), float(h[i]), float(lo[i]), float(c[i]), float(v[i])
            )
    return None


def _out_of_range(values: dict[str, float]) -> str:
    """'volume 1e+300 is above 1e+30, ...' for the fields of one candle beyond the bounds."""
    parts = []
    for names, bound, side in (
        ([n for n, x in values.items() if x > MAX_VALUE], MAX_VALUE, "above {:g}, the largest"),
        (
            [n for n, x in values.items() if n != "volume" and 0 < x < MIN_PRICE],
            MIN_PRICE,
            "below {:g}, the smallest",
        ),
    ):
        if names:
            listed = ", ".join(f"{n} {values[n]:g}" for n in names)
            what = "price or volume" if side.endswith("largest") else "price"
            verb = "is" if len(names) == 1 else "are"
            parts.append(f"{listed} {verb} {side.format(bound)} {what} accepted")
    return "; ".join(parts) + " (no market trades at that scale: a corrupt or mis-scaled value)"


def _describe(kind: int, o: float, h: float, lo: float, c: float, v: float) -> str:
    values = dict(zip(OHLCV, (o, h, lo, c, v), strict=True))
    if kind == 0:
        names = [n for n, x in values.items() if not np.isfinite(x)]
        return f"missing or non-finite value (NaN/inf) in {', '.join(names)}"
    if kind == 1:
        names = [f"{n}={x:g}" for n, x in values.items() if n != "volume" and x <= 0]
        return f"non-positive price ({', '.join(names)})"
    if kind == 2:
        return _out_of_range(values)
    if kind == 3:
        return f"high {h:g} is below low {lo:g}"
    if kind == 4:
        return f"high {h:g} is below max(open, close) {max(o, c):g}"
    if kind == 5:
        return f"low {lo:g} is above min(open, close) {min(o, c):g}"
    return f"negative volume {v:g}"


def candle_problem(ts: Any, o: float, h: float, l: float, c: float, v: float, /) -> str | None:  # noqa: E741
    """Why one candle is invalid ("high 9 is below max(open, close) 10"), or None if it is fine."""
    if ts is None or pd.isna(ts):
        return "missing timestamp"
    arrays = [np.array([x], dtype=np.float64) for x in (o, h, l, c, v)]
    found = first_candle_problem(*arrays)
    return None if found is None else found[1]


# ----------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class _Raw:
    """A file's table before normalisation, plus how to name its rows in messages."""

    table: pd.DataFrame
    first_line: int | None  # file line of table row 0 (text formats); None -> "row N" numbering


def _where(raw: _Raw, i: int) -> str:
    return f"line {raw.first_line + i}" if raw.first_line is not None else f"row {i + 1}"


def _open_text(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    UnicodeDecodeError,
    ValueError,
    TypeError,
    pd.errors.ParserError,
)


def _is_number(text: str) -> bool:
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> _Raw:
    with _open_text(path) as f:
        head = [f.readline() for _ in range(3)]
    skip = 0
    # CryptoDataDownload-style files start with a one-field banner line (a URL) before the header.
    # A lone line is never a banner: it is the (wrong) header of a file that is not a candle CSV.
    if (
        head[0].strip()
        and head[1].strip()
        and "," not in head[0]
        and ";" not in head[0]
        and "\t" not in head[0]
    ):
        skip = 1
    line = head[skip].strip()
    if not line:
        raise DataError(
            f"{path}: file is empty; expected a header timestamp,open,high,low,close,volume"
        )
    sep = "," if "," in line else (";" if ";" in line else "\t")
    first = line.split(sep)[0].strip().strip('"')
    headerless = _is_number(first) or re.match(r"\d{4}-\d{2}-\d{2}", first) is not None
    table = pd.read_csv(
        path,
        sep=sep,
        header=None if headerless else 0,
        skiprows=skip,
        engine="c",
        compression="infer",
        skipinitialspace=True,
    )
    if headerless:
        if table.shape[1] < 6:
            raise DataError(
                f"{path}: header-less file has {table.shape[1]} columns; expected at least 6 "
                "(open time, open, high, low, close, volume) as in Binance kline CSV"
            )
        # Binance kline CSV: open_time, open, high, low, close, volume (base), close_time, ...
        table = table.iloc[:, :6]
        table.columns = ["timestamp", *OHLCV]
    return _Raw(table, first_line=skip + (1 if headerless else 2))


def _read_json(path: Path) -> _Raw:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected freqtrade "
                "candles [[ms, open, high, low, close, volume], ...]"
            ) from None
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return _Raw(pd.DataFrame.from_records(doc), first_line=None)
    if not isinstance(doc, list) or (doc and not isinstance(doc[0], list | tuple)):
        raise DataError(
            f"{path}: unexpected JSON layout; expected freqtrade candles "
            "[[ms, open, high, low, close, volume], ...]"
        )
    bad = next((i for i, r in enumerate(doc) if not isinstance(r, list) or len(r) < 6), None)
    if bad is not None:
        raise DataError(
            f"{path}: row {bad + 1}: expected [ms, open, high, low, close, volume], got "
            f"{json.dumps(doc[bad])[:60]}; fix or remove the row"
        )
    table = pd.DataFrame([r[:6] for r in doc], columns=["timestamp", *OHLCV])
    return _Raw(table, first_line=None)


def _read_any(path: Path) -> _Raw:
    name = path.name.lower()
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass a candle file")
    try:
        if name.endswith((".parquet", ".pq")):
            table = pd.read_parquet(path)
            raw = _Raw(_index_to_column(table), first_line=None)
        elif name.endswith(".feather"):
            raw = _Raw(_index_to_column(pd.read_feather(path)), first_line=None)
        elif name.endswith((".json", ".json.gz")):
            raw = _read_json(path)
        else:
            raw = _read_csv(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: file is empty; expected a header timestamp,open,high,low,close,volume"
        ) from None
    except pd.errors.ParserError as e:
        # One row with more fields than the others is a bad row, to fix like any other, not a
        # file to re-download ("it may be truncated or not a candle file").
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m is None:
            raise _unreadable(path, e) from None
        expected, line, saw = m.groups()
        raise DataError(
            f"{path}: line {line} has {saw} fields where the lines before it have {expected}; "
            "fix or remove the row"
        ) from None
    except _READ_ERRORS as e:
        raise _unreadable(path, e) from None
    return raw


def _unreadable(path: Path, e: BaseException) -> DataError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return DataError(
        f"{path}: cannot read file ({reason}); it may be truncated or not a candle file - "
        "re-download it"
    )


def _index_to_column(table: pd.DataFrame) -> pd.DataFrame:
    if isinstance(table.index, pd.DatetimeIndex):
        return table.reset_index(names=table.index.name or "timestamp")
    return table


# ----------------------------------------------------------------------------- normalisation


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().strip('"').lower()).strip("_")


def _pick_columns(raw: _Raw, path: Path, symbol: str) -> dict[str, Any]:
    """Maps our column names to the file's, preferring base-asset volume."""
    by_norm: dict[str, Any] = {}
    for col in raw.table.columns:
        by_norm.setdefault(_norm(col), col)
    chosen: dict[str, Any] = {}
    for name in _TIME_NAMES:
        if name in by_norm:
            chosen["timestamp"] = by_norm[name]
            break
    if "date" in by_norm and "time" in by_norm and chosen.get("timestamp") == by_norm["date"]:
        chosen["timestamp"] = (by_norm["date"], by_norm["time"])  # separate date and time columns
    for ours, names in _PRICE_NAMES.items():
        for name in names:
            if name in by_norm:
                chosen[ours] = by_norm[name]
                break
    for name in _VOLUME_NAMES:
        if name in by_norm:
            chosen["volume"] = by_norm[name]
            break
    else:
        # "Volume BTC" / "Volume USDT": take the base asset's; never a quote volume if avoidable.
        base, _, quote = symbol.upper().partition("/")
        named = {n[len("volume_") :]: col for n, col in by_norm.items() if n.startswith("volume_")}
        if base.lower() in named:
            chosen["volume"] = named[base.lower()]
        elif named:
            rest = [col for n, col in named.items() if n not in (quote.lower(), "quote", "usd")]
            chosen["volume"] = (rest or list(named.values()))[0]
            if not rest:
                log_event(_log, "quote_volume_used", logging.WARNING, path=str(path),
                          column=str(chosen["volume"]), symbol=symbol,
                          note="no base-asset volume column; volume is in the quote currency")  # fmt: skip
    missing = [c for c in ("timestamp", *OHLCV) if c not in chosen]
    if missing:
        found = ", ".join(str(c) for c in raw.table.columns)
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {found}; the file needs "
            "timestamp,open,high,low,close,volume (or a Binance kline / freqtrade layout)"
        )
    return chosen


def _epoch_to_ns(values: np.ndarray) -> np.ndarray:
    """Epoch numbers to ns, unit by magnitude per value (s, ms, µs since Binance 2025, ns)."""
    mag = np.abs(values)
    scale = np.select(
        [mag < 1e11, mag < 1e14, mag < 1e17], [1e9, 1e6, 1e3], default=1.0
    )  # seconds up to year 5138, ms, µs, else ns
    return np.round(values * scale).astype(np.int64)


def _parse_timestamps(col: Any, raw: _Raw, path: Path) -> np.ndarray:
    """Any timestamp column -> int64 ns since epoch (UTC), naming the first unparseable row."""
    series = col if isinstance(col, pd.Series) else pd.Series(col)
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series):
        parsed = pd.to_datetime(series, utc=True)
    elif pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{path}: {_where(raw, i)}: missing timestamp; fix or remove the row")
        return _epoch_to_ns(values)
    else:
        text = series.astype("string").str.strip()
        first = text.iloc[0]
        if isinstance(first, str) and _is_number(first):  # epoch numbers stored as text
            numeric = pd.to_numeric(text, errors="coerce")
            if numeric.notna().all():
                return _epoch_to_ns(numeric.to_numpy(dtype=np.float64))
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        if parsed.isna().any():
            parsed = pd.to_datetime(text, utc=True, format="mixed", errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{path}: {_where(raw, i)}: cannot parse timestamp {text.iloc[i]!r}; use ISO 8601 "
                "UTC like 2024-01-01T00:00:00Z or epoch milliseconds"
            )
        # pandas 3 parses ISO text to microseconds, which reach far beyond nanoseconds' range.
        late = np.flatnonzero((parsed > pd.Timestamp.max.tz_localize("UTC")).to_numpy())
        if late.size:
            i = int(late[0])
            raise DataError(
                f"{path}: {_where(raw, i)}: timestamp {text.iloc[i]!r} is after "
                f"{pd.Timestamp.max:%Y-%m-%d}, the last day nanosecond timestamps can hold; fix "
                "or remove the row"
            )
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        raise DataError(
            f"{path}: {_where(raw, int(bad[0]))}: missing timestamp; fix or remove the row"
        )
    return timestamps_ns(parsed)


def _numeric(series: pd.Series, name: str, raw: _Raw, path: Path) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() & series.notna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: {_where(raw, i)}: {name} {series.iloc[i]!r} is not a number; fix or remove "
            "the row"
        )
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _stamp(ns: np.ndarray, i: int) -> str:
    return _iso(pd.Timestamp(int(ns[i]), unit="ns", tz="UTC"))


def _infer_interval(ts_ns: np.ndarray) -> pd.Timedelta | None:
    diffs = np.diff(ts_ns)
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        return None
    values, counts = np.unique(diffs, return_counts=True)
    return pd.Timedelta(int(values[np.argmax(counts)]), unit="ns")


def _gap_report(steps: np.ndarray, ts_ns: np.ndarray, step_ns: int) -> GapReport:
    """`steps` are grid-step differences between consecutive candles (1 = no gap)."""
    gaps = np.flatnonzero(steps > 1)
    if gaps.size == 0:
        return GapReport()
    missing = steps[gaps] - 1
    j = int(np.argmax(missing))
    at = pd.Timestamp(int(ts_ns[gaps[j]]) + step_ns, unit="ns", tz="UTC")
    return GapReport(int(gaps.size), int(missing.sum()), int(missing[j]), at)


def fill_gaps(
    ts_ns: np.ndarray, values: dict[str, np.ndarray], k: np.ndarray, step_ns: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Inserts missing grid candles as flat candles at the previous close with zero volume."""
    n = int(k[-1]) + 1
    present = np.zeros(n, dtype=bool)
    present[k] = True
    source = np.zeros(n, dtype=np.int64)
    source[k] = np.arange(k.size)
    source = np.maximum.accumulate(np.where(present, source, 0))  # last real candle at or before
    prev_close = values["close"][source]
    out: dict[str, np.ndarray] = {}
    for name in PRICE_COLUMNS:
        col = prev_close.copy()
        col[k] = values[name]
        out[name] = col
    out["volume"] = np.zeros(n)
    out["volume"][k] = values["volume"]
    return ts_ns[0] + np.arange(n, dtype=np.int64) * step_ns, out, ~present


def make_candles(
    ts_ns: np.ndarray,
    values: dict[str, np.ndarray],
    *,
    interval: pd.Timedelta,
    symbol: str,
    source: str,
    filled: np.ndarray | None = None,
    gaps: GapReport | None = None,
) -> Candles:
    """Builds the Candles frame from already validated arrays (UTC ns index, float64, `filled`)."""
    index = pd.DatetimeIndex(pd.to_datetime(ts_ns, unit="ns", utc=True), name="timestamp")
    frame = pd.DataFrame(
        {name: np.asarray(values[name], dtype=np.float64) for name in OHLCV}, index=index
    )
    frame["filled"] = np.zeros(len(frame), dtype=bool) if filled is None else filled
    return Candles(frame, interval, symbol, source, gaps or GapReport())


def load_candles(
    path: str | Path,
    *,
    interval: str | pd.Timedelta | None = None,
    gaps: GapPolicy = "fill",
    dedupe: bool = False,
    symbol: str | None = None,
) -> Candles:
    """Reads, validates and normalises one candle file. See the module docstring for formats.

    Raises DataError naming the file and the first offending row for anything it cannot trust:
    unreadable/empty files, missing columns, bad timestamps, NaN/inf, non-positive prices, prices
    or volume past `MAX_VALUE` / `MIN_PRICE`, inconsistent OHLC, negative volume, duplicates
    (unless `dedupe`), off-grid timestamps, a given `interval` that disagrees with the data, and
    gaps when `gaps="error"`.
    """
    if gaps not in ("fill", "drop", "error"):
        raise DataError(f"invalid gap policy {gaps!r}; use fill, drop or error")
    p = Path(path)
    given = None if interval is None else parse_interval(interval)
    raw = _read_any(p)
    sym = symbol or infer_symbol(p)
    cols = _pick_columns(raw, p, sym)  # first: a file that is not CSV at all has no columns
    table = raw.table
    if len(table) == 0:
        raise DataError(f"{p}: no candle rows (header only?); the file needs at least one candle")
    tcol = cols["timestamp"]
    if isinstance(tcol, tuple):
        time_col = table[tcol[0]].astype("string") + " " + table[tcol[1]].astype("string")
    else:
        time_col = table[tcol]
    ts = _parse_timestamps(time_col, raw, p)
    values = {name: _numeric(table[cols[name]], name, raw, p) for name in OHLCV}

    found = first_candle_problem(*(values[n] for n in OHLCV))
    if found is not None:
        i, problem = found
        raise DataError(
            f"{p}: {_where(raw, i)} ({_stamp(ts, i)}): {problem}; fix or remove the row"
        )

    dup = pd.Index(ts).duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        if not dedupe:
            raise DataError(
                f"{p}: {_where(raw, i)}: duplicate timestamp {_stamp(ts, i)} "
                f"({int(dup.sum())} duplicate row(s) in total); remove them from the file, or keep "
                "the last of each with --dedupe (data info, data fetch, features compute, train, "
                "walkforward, study, evaluate, trade) or `dedupe = true` under [data] in --config"
            )

    order = np.argsort(ts, kind="stable")
    steps = np.diff(ts)
    if np.any(steps < 0):
        if np.all(steps <= 0):  # a newest-first file (CryptoDataDownload's layout): a format
            log_event(_log, "candles_newest_first", path=str(p), action="reversed")
        else:  # rows out of order within the file: worth a look
            log_event(_log, "candles_unsorted", logging.WARNING, path=str(p),
                      rows_out_of_order=int(np.sum(steps < 0)), action="sorted ascending")  # fmt: skip
        ts = ts[order]
        values = {n: v[order] for n, v in values.items()}
        rows = order
    else:
        rows = np.arange(ts.size)
    if dup.any():
        keep = ~pd.Index(ts).duplicated(keep="last")  # stable sort: "last" is the later file row
        log_event(_log, "duplicates_dropped", logging.WARNING, path=str(p),
                  count=int(ts.size - keep.sum()), kept="last")  # fmt: skip
        ts, rows = ts[keep], rows[keep]
        values = {n: v[keep] for n, v in values.items()}

    inferred = _infer_interval(ts)
    if given is not None and inferred is not None and given != inferred:
        raise DataError(
            f"{p}: interval {format_interval(given)} disagrees with the data, whose candles are "
            f"mostly {format_interval(inferred)} apart; give --interval "
            f"{format_interval(inferred)}, or leave out --interval (and `interval` under [data] "
            "of a --config file)"
        )
    step = given or inferred
    if step is None:
        raise DataError(
            f"{p}: a single candle does not show its interval; use a file of more candles, or "
            "give it with --interval (data, features, train, walkforward; e.g. 1h)"
        )
    step_ns = int(step.value)
    offset = ts - ts[0]
    off = np.flatnonzero(offset % step_ns)
    if off.size:
        i = int(off[0])
        raise DataError(
            f"{p}: {_where(raw, int(rows[i]))}: timestamp {_stamp(ts, i)} is off the "
            f"{format_interval(step)} grid that starts at {_stamp(ts, 0)}; resample the file or "
            "remove the row"
        )
    k = offset // step_ns
    report = _gap_report(np.diff(k), ts, step_ns)
    filled = None
    if report.count and gaps == "error":
        assert report.longest_at is not None
        first = int(np.flatnonzero(np.diff(k) > 1)[0])
        raise DataError(
            f"{p}: {report.count} gaps ({report.missing} missing candles), the first after "
            f"{_stamp(ts, first)}; use --gaps fill or --gaps drop"
        )
    if report.count and gaps == "fill":
        ts, values, filled = fill_gaps(ts, values, k, step_ns)
    candles = make_candles(
        ts, values, interval=step, symbol=sym, source=str(p), filled=filled, gaps=report
    )
    log_event(_log, "candles_loaded", logging.DEBUG, path=str(p), rows=len(candles), symbol=sym,
              interval=format_interval(step), gaps=report.count, missing=report.missing)  # fmt: skip
    return candles


def synth_candles(
    rows: int = 20_000, seed: int = 0, interval: str = "1h", symbol: str = "SYNTH/USD"
) -> Candles:
    """The embedded synthetic market: realistic statistics, NO predictable signal.

    Deterministic per `seed`, starting 2023-01-01T00:00Z. Returns are a martingale difference
    (GARCH-like volatility clustering, Student-t tails, Markov regime switches, intraday seasonality
    in volatility and volume, volume tied to |return|), so a correct model scores about 50%
    directional accuracy on it. It exists so every command runs offline; real decisions need real
    data. See `jaxtrader.synth` for the generating process.
    """
    from jaxtrader.synth import synth_ohlcv

    if rows < 1:
        raise DataError(f"synthetic rows must be at least 1, got {rows}")
    if seed < 0:
        # numpy's generator refuses it: an internal error ("expected non-negative integer").
        raise DataError(
            f"the synthetic market's seed must be 0 or more, got {seed} (data synth --seed, or "
            "synth_seed under [data] in --config)"
        )
    step = parse_interval(interval)
    ts_ns, values = synth_ohlcv(rows, seed, step, SYNTH_START)
    source = f"synthetic:seed={seed},rows={rows},interval={format_interval(step)}"
    return make_candles(ts_ns, values, interval=step, symbol=symbol, source=source)


def load_market(cfg: DataConfig) -> Candles:
    """The candles a command works on: `cfg.path` or, when it is None, the synthetic market."""
    if cfg.path is None:
        return synth_candles(
            cfg.synth_rows, cfg.synth_seed, cfg.interval or "1h", cfg.symbol or "SYNTH/USD"
        )
    return load_candles(
        cfg.path, interval=cfg.interval, gaps=cfg.gaps, dedupe=cfg.dedupe, symbol=cfg.symbol
    )


def write_candles(frame: pd.DataFrame, path: str | Path, *, append: bool = False) -> Path:
    """Writes canonical candles (CSV, CSV.GZ by extension, or Parquet); `append` for CSV only."""
    p = Path(path)
    name = p.name.lower()
    out = frame.loc[:, list(OHLCV)].astype(np.float64)
    try:
        if name.endswith((".parquet", ".pq")):
            if append:
                raise DataError(f"{p}: cannot append to Parquet; write to a .csv or .csv.gz file")
            p.parent.mkdir(parents=True, exist_ok=True)
            out.to_parquet(p)
            return p
        if not name.endswith((".csv", ".csv.gz")):
            raise DataError(f"{p}: unsupported output extension; use .csv, .csv.gz or .parquet")
        p.parent.mkdir(parents=True, exist_ok=True)
        text = out.to_csv(index=False, header=False, lineterminator="\n")
        stamps = pd.DatetimeIndex(frame.index).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [f"{t},{row}" for t, row in zip(stamps, text.splitlines(), strict=True)]
        header = not (append and p.exists() and p.stat().st_size > 0)
        body = ("timestamp," + ",".join(OHLCV) + "\n" if header else "") + "".join(
            f"{line}\n" for line in lines
        )
        data = body.encode("utf-8")
        if name.endswith(".gz"):
            # Appended gzip members concatenate into one stream; no timestamp in the header, so
            # the same candles give the same bytes (and file checksum) on every run.
            data = gzip.compress(data, mtime=0)
        with open(p, "ab" if append else "wb") as f:
            f.write(data)
    except OSError as e:
        raise DataError(f"cannot write {p}: {path_problem(e)}") from None
    return p


def summarize(candles: Candles) -> dict[str, Any]:
    """Plain-dict facts about loaded candles (what `jaxtrader data info` shows)."""
    f = candles.frame
    real = ~f["filled"].to_numpy()
    return {
        "source": candles.source,
        "sha256": data_sha256(candles),
        "symbol": candles.symbol,
        "rows": int(real.sum()),
        "filled": int((~real).sum()),
        "first": _iso(candles.start),
        "last": _iso(candles.end),
        "interval": format_interval(candles.interval),
        "gaps": candles.gaps.to_dict(),
        "zero_volume": int(((f["volume"].to_numpy() == 0) & real).sum()),
        "min_low": float(f["low"].min()),
        "max_high": float(f["high"].max()),
    }
