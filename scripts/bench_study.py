"""`jaxtrader study` with `--executor local` and then `--executor ray`: wall time, fold times, Ray's
overhead per fold, and peak RSS of the driver, each Ray worker, Ray's own processes and the whole
process tree (sampled from /proc every 0.5 s). Checks that both leaderboards hold the same
figures. Linux only.

    python scripts/bench_study.py --out /tmp/bench-study -- \
        --data btc_last3000.csv --data eth_last3000.csv --arch lstm --arch transformer \
        --folds 4 --seeds 2

Everything after `--` is passed to `jaxtrader study` (`--out` and `--executor` are added). The
runs are sequential (never at once: they would share the cores). The README's "Scaling out"
figures (run B; run A by hand with the same sampling) were measured on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SAMPLE_S = 0.5
ROW_KEYS = ("accuracy", "majority_rate", "p_value_vs_majority", "net_sharpe", "buy_and_hold_sharpe")


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                kids[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _kind(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "other"
    return "ray workers (sum)" if ("ray::" in cmd or "default_worker" in cmd) else "ray daemons"


def run(executor: str, out: Path, study_args: list[str]) -> dict[str, Any]:
    head = study_args[:2] if study_args[:1] == ["--config"] else []  # a global option
    cmd = [sys.executable, "-m", "jaxtrader", *head, "study", *study_args[len(head) :]]
    cmd += ["--out", str(out), "--executor", executor]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peaks: dict[str, float] = collections.defaultdict(float)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            per: dict[str, float] = collections.defaultdict(float)
            for pid in _tree(proc.pid):
                kind, rss = _kind(pid, proc.pid), _rss_mb(pid)
                per[kind] += rss
                if kind == "ray workers (sum)":
                    peaks["each ray worker"] = max(peaks["each ray worker"], rss)
            for kind, total in per.items():
                peaks[kind] = max(peaks[kind], total)
            peaks["whole tree"] = max(peaks["whole tree"], sum(per.values()))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{executor} run failed (exit {proc.returncode}): {' '.join(cmd)}")
    board = json.loads((out / "leaderboard.json").read_text())
    fold_s = sum(
        json.loads((Path(r["run"]) / "report.json").read_text())["timing"]["fold_seconds_total"]
        for r in board["rows"]
    )
    return {"wall": wall, "fold_s": fold_s, "board": board, "peaks": dict(peaks), "out": stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Directory for the two studies.")
    parser.add_argument("study_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    study_args = [a for a in args.study_args if a != "--"]
    root = Path(args.out)
    print(f"load average before: {os.getloadavg()}", flush=True)
    res = {ex: run(ex, root / ex, study_args) for ex in ("local", "ray")}
    print(f"load average after: {os.getloadavg()}")
    local, ray = res["local"], res["ray"]
    print(f"wall time: local {local['wall']:.1f} s, ray {ray['wall']:.1f} s "
          f"({ray['wall'] / local['wall']:.2f}x)")  # fmt: skip
    print(f"sum of fold times: local {local['fold_s']:.1f} s, ray {ray['fold_s']:.1f} s")
    r = ray["board"].get("ray", {})
    if r:
        print(
            f"ray overhead per fold: median {r['overhead_seconds_median']:.3f} s vs fold median "
            f"{r['fold_seconds_median']:.1f} s ({100 * r['overhead_share']:.2f}% of fold time)"
        )
    for name in ("local", "ray"):
        peaks = ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(res[name]["peaks"].items()))
        print(f"peak RSS {name}: {peaks}")
    worst = max(
        abs(a[k] - b[k])
        for a, b in zip(local["board"]["rows"], ray["board"]["rows"], strict=True)
        for k in ROW_KEYS
    )
    print(f"largest leaderboard difference local vs ray: {worst:.3g}")


if __name__ == "__main__":
    main()
