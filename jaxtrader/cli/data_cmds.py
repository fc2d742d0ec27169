"""`jaxtrader data ...`: inspect candle files, write the synthetic market, download from exchanges."""

from __future__ import annotations

from typing import Any

import click

from jaxtrader.cli.common import (
    CliState,
    HintGlobalOptionsGroup,
    data_options,
    data_overrides,
    dedupe_option,
)


@click.group("data", cls=HintGlobalOptionsGroup)
def data_group() -> None:
    """Inspect, generate and download OHLCV candle data."""


def _price(x: float) -> str:
    return f"{x:,.2f}" if abs(x) >= 1 else f"{x:.6g}"


def _format_info(info: dict[str, Any]) -> str:
    gaps = info["gaps"]
    gap_text = "none"
    if gaps["count"]:
        gap_text = (
            f"{gaps['count']:,} ({gaps['missing']:,} missing candles; longest {gaps['longest']:,} "
            f"at {gaps['longest_at']})"
        )
    rows = [
        ("source", info["source"]),
        ("symbol", info["symbol"]),
        ("rows", f"{info['rows']:,}"),
        (
            "filled",
            f"{info['filled']:,}" + (" (flat candles inserted in gaps)" if info["filled"] else ""),
        ),
        ("first", info["first"]),
        ("last", info["last"]),
        ("interval", info["interval"]),
        ("gaps", gap_text),
        ("zero volume", f"{info['zero_volume']:,} (excluding filled)"),
        (
            "price range",
            f"{_price(info['min_low'])} .. {_price(info['max_high'])} (min low .. max high)",
        ),
    ]
    if info.get("sha256"):
        rows.append(("sha256", info["sha256"]))
    labels = info.get("labels")
    if labels is not None:
        how = f"(horizon {labels['horizon']}, threshold {labels['threshold']:g})"
        if labels.get("error"):
            rows.append(("up labels", f"unavailable {how}: {labels['error']}"))
        else:
            text = "  ".join(f"{k} {v:.1%}" for k, v in labels["balance"].items())
            rows.append(("up labels", f"{text}  {how}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _label_balance(candles: Any, cfg: Any) -> dict[str, Any]:
    """Up-label fraction per split through the one dataset pipeline (as training will see it)."""
    from jaxtrader.dataset import build_dataset, label_balance
    from jaxtrader.errors import JaxTraderError

    out: dict[str, Any] = {"horizon": cfg.horizon, "threshold": cfg.threshold}
    try:
        out["balance"] = label_balance(build_dataset(candles, cfg))
    except JaxTraderError as e:  # e.g. too few candles for the feature warm-up and splits
        out["error"] = str(e)
    return out


@data_group.command("info")
@click.argument("path", required=False)
@data_options
@click.option(
    "--labels/--no-labels",
    default=True,
    show_default=True,
    help="Fraction of up labels per split (builds the dataset: features, labels, splits).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_obj
def info(state: CliState, path: str | None, labels: bool, as_json: bool, **data_flags: Any) -> None:
    """Describe a candle file (default: the embedded synthetic market).

    Shows rows, symbol, first/last candle, interval, gaps, zero-volume candles, price range and
    the fraction of up labels per split (label horizon/threshold from the [dataset] config).
    """
    import json

    from jaxtrader.data import load_market, summarize

    if path and data_flags["data_path"] and path != data_flags["data_path"]:
        raise click.UsageError("give the file either as PATH or as --data, not both")
    data_flags["data_path"] = path or data_flags["data_path"]
    cfg = state.config(data_overrides(**data_flags))
    candles = load_market(cfg.data)
    summary = summarize(candles)
    if labels:
        summary["labels"] = _label_balance(candles, cfg.dataset)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(_format_info(summary))


@data_group.command("synth")
@click.option("--rows", type=click.IntRange(min=1), default=None, help="Candles (default 20000).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed (default 0).")
@click.option("--interval", type=str, default=None, help="Candle interval (default 1h).")
@click.option("--symbol", type=str, default=None, help="Symbol (default SYNTH/USD).")
@click.option("--out", type=str, required=True, help="Output .csv, .csv.gz or .parquet file.")
@click.pass_obj
def synth(
    state: CliState,
    rows: int | None,
    seed: int | None,
    interval: str | None,
    symbol: str | None,
    out: str,
) -> None:
    """Write the synthetic market (no predictable signal) to a file."""
    from jaxtrader.data import file_sha256, load_market, write_candles

    cfg = state.config(
        {
            "data.synth_rows": rows,
            "data.synth_seed": seed,
            "data.interval": interval,
            "data.symbol": symbol,
        }
    ).data
    if cfg.path is not None:
        raise click.UsageError("data synth ignores data.path; remove it from the --config file")
    candles = load_market(cfg)
    path = write_candles(candles.frame, out)
    click.echo(f"wrote {len(candles):,} candles ({candles.source}) to {path}")
    click.echo(f"sha256 {file_sha256(path)}")


@data_group.command("fetch")
@click.option("--exchange", default="binance", show_default=True, help="ccxt exchange id.")
@click.option("--symbol", required=True, help="Market symbol, e.g. BTC/USDT.")
@click.option("--timeframe", default="1h", show_default=True, help="Candle interval, e.g. 1h, 5m.")
@click.option("--since", default=None, help="First candle (UTC date); not needed when resuming.")
@click.option("--out", required=True, help="Output .csv or .csv.gz; resumed if it exists.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Candles per request.")  # fmt: skip
@dedupe_option
def fetch(
    exchange: str,
    symbol: str,
    timeframe: str,
    since: str | None,
    out: str,
    limit: int,
    dedupe: bool | None,
) -> None:
    """Download candles via ccxt into canonical CSV (needs `pip install 'jaxtrader[live]'`)."""
    from jaxtrader.fetch import fetch_candles, make_exchange

    client = make_exchange(exchange)
    result = fetch_candles(
        client, symbol, timeframe, out, since=since, limit=limit, dedupe=bool(dedupe)
    )
    what = "resumed" if result.resumed else "created"
    span = f" ({result.first} .. {result.last})" if result.added else ""
    click.echo(
        f"{what} {result.path}: +{result.added:,} candles{span} in {result.requests} requests"
    )


COMMANDS: list[click.Command] = [data_group]
