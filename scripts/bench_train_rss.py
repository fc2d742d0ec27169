"""Peak RSS of a real `jaxtrader train` run, and in which phase of the run it is reached.

Runs `jaxtrader --log-format json train ARGS...` in a subprocess, samples its VmRSS from /proc every
50 ms, labels each sample with the phase given by the last JSON event on stderr (startup, epoch N
training, epoch N validation + save, final), and prints the max RSS per phase plus the child's
peak RSS (ru_maxrss, the figure `/usr/bin/time -v` reports). Linux only (reads /proc).

    python scripts/bench_train_rss.py --arch transformer \
        --data ../shared/data/binance_btcusdt_1h.csv.gz --max-minutes 16 --ckpt-dir /tmp/rss-ckpt
    python scripts/bench_train_rss.py --config tiny.toml --arch lstm --epochs 2   # any train flags

Measured 2026-11-27 on the full BTC/USDT 1h file (72,569 candles), both archs trained at once on
the shared 2-core machine: see the README perf section for the figures and the before/after.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from typing import Any

SAMPLE_S = 0.05


def _phase(event: dict[str, Any], current: str) -> str:
    name = event.get("event")
    if name == "fit_start":
        return "epoch 1 training"
    if name == "train_progress":
        return f"epoch {event['epoch']} training"
    if name == "epoch":
        return f"epoch {event['epoch']} save + next epoch start"
    if name in ("fit_end", "train_done"):
        return "final (best params, manifest)"
    return current


def _rss_mb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
    except (OSError, ValueError):
        return None
    if "VmRSS" not in fields:  # exited, not yet reaped
        return None
    return int(fields["VmRSS"].split()[0]) // 1024


def main(args: list[str]) -> None:
    # `--config FILE` is a global option: it goes before the subcommand.
    head = args[:2] if args[:1] == ["--config"] else []
    cmd = [
        sys.executable,
        "-m",
        "jaxtrader",
        "--log-format",
        "json",
        *head,
        "train",
        *args[len(head) :],
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    phase = ["startup (imports, data, features, dataset, model init)"]
    timeline: list[str] = []

    def read_events() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                timeline.append(line.rstrip())
                continue
            new = _phase(event, phase[0])
            if new != phase[0]:
                timeline.append(f"{time.monotonic() - t0:7.1f} s  {new}")
                phase[0] = new

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    peaks: dict[str, int] = {}
    while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        if rss is not None:
            peaks[phase[0]] = max(peaks.get(phase[0], 0), rss)
        time.sleep(SAMPLE_S)
    reader.join(5)
    assert proc.stdout is not None
    summary = proc.stdout.read().strip()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print("\n".join(timeline))
    print("\nmax RSS per phase (MB):")
    for name, mb in peaks.items():
        print(f"  {mb:6d}  {name}")
    print(
        f"\npeak RSS (ru_maxrss): {peak} MB, exit code {proc.returncode}, wall {time.monotonic() - t0:.0f} s"
    )
    print(f"summary: {summary[-600:]}")


if __name__ == "__main__":
    main(sys.argv[1:])
