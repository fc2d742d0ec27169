"""Soak: replay a whole candle history through a real `jaxtrader trade` process and watch it.

Runs `jaxtrader --log-format json trade --feed replay:DATA ...` in a subprocess (the same runner the
live feed drives: manager, model, risk, SQLite commit per candle), reads its JSON `candle` events as
they come, and every `--every` candles samples the child's VmRSS from /proc. Prints the RSS curve,
the growth after warm-up (RSS at the end minus RSS at the first sample, i.e. after the model's
compilation and the first `--every` candles; target < 50 MB), the per-candle decision latency
p50/p99 over the whole run (the `latency_ms` of each candle event: features + model + risk) and the
seconds per block of candles (a slowdown would show there). Linux only (reads /proc).

    # a checkpoint for the file (1 epoch is enough: the soak measures the runner, not the model)
    jaxtrader train --arch lstm --data ../shared/data/binance_btcusdt_1h.csv.gz --symbol BTC/USDT \
        --epochs 1 --ckpt-dir /tmp/soak-ckpt
    python scripts/bench_soak.py --checkpoint /tmp/soak-ckpt/BTC-USDT/lstm/v1 \
        --data ../shared/data/binance_btcusdt_1h.csv.gz

The state file goes to a temporary directory unless --state is given (a fresh strategy each run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the main checkout; worktrees live one level deeper (/work/wt/NAME).
DATA = next(
    (d / "shared" / "data" / "binance_btcusdt_1h.csv.gz" for d in (REPO.parent, REPO.parents[1])
     if (d / "shared" / "data").is_dir()),
    REPO.parent / "shared" / "data" / "binance_btcusdt_1h.csv.gz",
)  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="A version directory to trade.")
    p.add_argument("--data", default=str(DATA), help=f"Candle file [{DATA}].")
    p.add_argument("--every", type=int, default=5000, help="Sample RSS every N candles.")
    p.add_argument("--skip", type=int, default=1000, help="Candles before the start (warm-up).")
    p.add_argument("--max-candles", type=int, default=None, help="Stop after N (a short run).")
    p.add_argument("--state", default=None, help="SQLite state file (default: a temp dir).")
    args = p.parse_args(argv)

    from jaxtrader.data import load_candles

    index = load_candles(args.data, gaps="drop").frame.index
    start = index[args.skip]
    end = index[-1] if args.max_candles is None else index[args.skip + args.max_candles - 1]
    total = int(((index >= start) & (index <= end)).sum())
    tmp = tempfile.mkdtemp(prefix="soak-")
    state = args.state or os.path.join(tmp, "soak.db")
    cmd = [sys.executable, "-m", "jaxtrader", "--log-format", "json", "trade",
           "--checkpoint", args.checkpoint, "--feed", f"replay:{args.data}", "--state", state,
           "--strategy-id", "soak", "--new-strategy", "--start", start.isoformat(),
           "--end", end.isoformat(),
           # The soak measures the runner over the whole history, the training span included.
           "--in-sample"]  # fmt: skip
    print(f"soak: {total:,} candles {start} .. {end}; state {state}", flush=True)
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min); {os.cpu_count()} cores", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stderr is not None
    latency: list[float] = []
    curve: list[tuple[int, float, float, float]] = []  # (candles, rss MB, s since start, load)
    fallbacks = 0
    last_block = t0
    last_text = ""
    for line in proc.stderr:
        if not line.startswith("{"):
            last_text = line.strip() or last_text  # the one-line error of a failed run
            continue
        event = json.loads(line)
        if event.get("event") != "candle":
            if event.get("level") in ("warning", "error"):
                print("  ", line.strip()[:200], flush=True)
            continue
        latency.append(float(event["latency_ms"]))
        fallbacks += event.get("fallback") is not None
        n = len(latency)
        if n % args.every == 0 or n == total:
            now = time.monotonic()
            curve.append((n, rss_mb(proc.pid), now - t0, os.getloadavg()[0]))
            print(f"{n:>7,} candles  RSS {curve[-1][1]:7.1f} MB  {now - last_block:6.1f} s "
                  f"for the last block  load {curve[-1][3]:.2f}", flush=True)  # fmt: skip
            last_block = now
    out, _ = proc.communicate()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"trade exited {proc.returncode}: {last_text}")
    summary = json.loads(out)
    lat = np.array(latency)
    result = {
        "candles": len(latency),
        "wall_s": round(wall, 1),
        "candles_per_s": round(len(latency) / wall, 1),
        "rss_mb": [(n, round(r, 1)) for n, r, _, _ in curve],
        "rss_growth_after_warmup_mb": round(curve[-1][1] - curve[0][1], 1) if curve else None,
        "rss_max_mb": round(max(r for _, r, _, _ in curve), 1) if curve else None,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
        "fallbacks": fallbacks,
        "load_1min": [round(x, 2) for _, _, _, x in curve],
        "stored_candles": summary.get("candles"),
        "fills": summary.get("fills"),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
