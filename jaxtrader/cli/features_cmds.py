"""`jaxtrader features ...`: list the 86 engineered features and compute them for a candle file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from jaxtrader.cli.common import (
    CliState,
    HintGlobalOptionsGroup,
    data_options,
    data_overrides,
    refuse_overwriting,
)

_OUT_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


@click.group("features", cls=HintGlobalOptionsGroup)
def features_group() -> None:
    """The 86 causal engineered features (registry and computation)."""


@features_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def features_list(as_json: bool) -> None:
    """Print every feature: name, family, warm-up (candles) and definition."""
    import json

    from jaxtrader.features import FEATURES, WARMUP, feature_hash

    rows = [(s.name, s.family, str(s.warmup), s.text) for s in FEATURES]
    if as_json:
        keys = ("name", "family", "warmup", "definition")
        docs = [dict(zip(keys, (s.name, s.family, s.warmup, s.text), strict=True))
                for s in FEATURES]  # fmt: skip
        click.echo(json.dumps(docs, indent=1))
        return
    header = ("name", "family", "warmup", "definition")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
    click.echo(f"\n{len(rows)} features, warm-up {WARMUP} candles, hash {feature_hash()[:16]}")


@features_group.command("compute")
@data_options
@click.option(
    "--out",
    "out_path",
    type=str,
    required=True,
    help="Output file: .parquet (float64) or .csv / .csv.gz (float32 text, 7-9 digits); "
    "columns timestamp, the 86 features, filled.",
)
@click.pass_obj
def features_compute(state: CliState, out_path: str, **data_flags: Any) -> None:
    """Compute the 86 features for every candle after the warm-up and write them to --out.

    Gap-filled candles are kept and marked in the `filled` column so they can be excluded.
    Default input: the embedded synthetic market.
    """
    import logging
    import time

    from jaxtrader.data import load_market
    from jaxtrader.errors import FeatureError, path_problem
    from jaxtrader.features import WARMUP, compute_features
    from jaxtrader.logs import log_event

    out = Path(out_path)
    if not out.name.lower().endswith(_OUT_SUFFIXES):
        raise click.BadParameter(
            f"{out}: unsupported extension; use .csv, .csv.gz or .parquet", param_hint="--out"
        )
    cfg = state.config(data_overrides(**data_flags))
    refuse_overwriting(
        {"--out": out_path}, {"--data": cfg.data.path, "--config": state.config_path}
    )
    candles = load_market(cfg.data)
    if len(candles) <= WARMUP:
        raise FeatureError(
            f"{candles.source}: {len(candles)} candles, but the features need more than the "
            f"{WARMUP}-candle warm-up; use a longer file"
        )
    start = time.perf_counter()
    feats = compute_features(candles.frame).iloc[WARMUP:]
    seconds = time.perf_counter() - start
    feats["filled"] = candles.frame["filled"].iloc[WARMUP:].to_numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.name.lower().endswith((".parquet", ".pq")):
            feats.to_parquet(out)
        else:
            _write_csv(feats, out)
    except OSError as e:  # pyarrow's carry no filename for the CLI's own path message
        raise FeatureError(f"cannot write --out {out}: {path_problem(e)}") from None
    log_event(logging.getLogger("jaxtrader.features"), "features_written", path=str(out),
              rows=len(feats), seconds=round(seconds, 3))  # fmt: skip
    click.echo(
        f"wrote {len(feats):,} rows x {feats.shape[1] - 1} features (+ filled: "
        f"{int(feats['filled'].sum()):,}) from {candles.symbol} {candles.source} to {out} "
        f"({WARMUP} warm-up candles dropped)"
    )


def _write_csv(feats: Any, out: Path) -> None:
    """CSV through pyarrow with float32 values: pandas' float formatting of 6M numbers took
    tens of seconds here, this takes about one; float32 is what the models consume anyway."""
    import gzip

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    columns = {"timestamp": pa.array(feats.index.strftime("%Y-%m-%dT%H:%M:%SZ"))}
    for name in feats.columns:
        x = feats[name].to_numpy()
        columns[name] = pa.array(x.astype(np.float32) if x.dtype == np.float64 else x)
    # The header is written by hand: pyarrow before 19 always quotes column names.
    header = ",".join(columns).encode() + b"\n"
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    table = pa.table(columns)
    gz = out.name.lower().endswith(".gz")
    # gzip level 1: level 9 took ~20x longer for a ~10% smaller file
    with gzip.open(out, "wb", compresslevel=1) if gz else open(out, "wb") as sink:
        sink.write(header)
        pa_csv.write_csv(table, sink, options)


COMMANDS: list[click.Command] = [features_group]
