"""Training benchmark: ms/step, samples/s, first-step compile time (cold and cached), peak RSS.

Each measurement runs in a fresh subprocess (so compile and RSS figures are honest), variants are
alternated across rounds because the machine is shared, and medians are printed.

    python scripts/bench_train.py                       # both archs, batch 64 and 128, 3 rounds
    python scripts/bench_train.py --arch lstm --variants --batch 64 --rounds 3
    python scripts/bench_train.py --seeds 1 4 --batch 64   # K seeds in one step (jaxtrader.seeds)
    python scripts/bench_train.py --seeds 1 4 --seed-devices 1   # K seeds on one device
    python scripts/bench_train.py --seeds 1 4 --separate 4   # also 4 K=1 processes at once
    python scripts/bench_train.py --seeds 1 4 --batch 64 --torch-python ../tvenv/bin/python

With --seeds, K > 1 runs `seeds.seeds_train_step` (a vmap of the train step over K stacked states,
each seed its own batch) as `jaxtrader walkforward` runs it: the seed axis split over host devices
with one XLA thread each (`runtime.use_seed_devices`; by default as many devices as walkforward
would use, `--seed-devices 1` keeps one device with XLA's thread pool). Samples/s is summed over
the seeds, and the table adds the ratio to K = 1 of the same arch and batch. K = 1 runs as
`jaxtrader train` does: restarted on tcmalloc where it is installed (also when
../shared/bench/side_by_side.py starts the child), the free memory returned after the first step. `--separate N` adds the alternative to seeds in one step: N single-model
processes started together, each timing its own steps while the others run; their samples/s are
summed (one row per arch and batch, ratio to K = 1). `--torch-python PY` adds, alternated in the
same rounds, the stock PyTorch twin (../shared/bench/bench_torch.py, one model, batch 64, 2 threads)
and each row's samples/s as a multiple of PyTorch's: the "per sample" comparison of seeds in one
step against one PyTorch model, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from jaxtrader.config import TrainConfig

SEQ_LEN = 100
TORCH_BATCH = 64  # the PyTorch twin's fixed batch


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    import resource

    t0 = time.perf_counter()
    from jaxtrader import runtime

    if args.seeds == 1 and not runtime.tcmalloc_active():
        # As `jaxtrader train` restarts itself (cli.main): on tcmalloc where it is installed. On
        # glibc a process that compiles its LSTM step ran it 1.3x slower than one that loaded it
        # from the compilation cache (146 vs 111 ms, Intel Xeon); on tcmalloc both ran 105-114.
        env = runtime.restart_environment(huge_pages=False)
        if env is not None:
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    # As the CLI does, before JAX allocates: the heap reused for one model's steps; for K seeds
    # (--seed-malloc walkforward) the settings of walkforward, whose train loops enter
    # runtime.reuse_in_train_loop from their second step (this process was started with the
    # huge-page tunable where walkforward would be: run_child).
    as_walkforward = args.seeds > 1 and args.seed_malloc == "walkforward"
    if as_walkforward:
        runtime.tune_malloc_for_seed_commands()
    else:
        runtime.tune_malloc(reuse_freed=args.seeds == 1 or args.seed_malloc == "full")
    devices = 1
    shards = 1
    if args.seeds == 1 and args.variant != "one_shard":
        # As `jaxtrader train`: the arch's batch shards (train.data_shards), a host device each;
        # the two_shards variant as `jaxtrader train --data-shards 2`.
        from jaxtrader.config import AppConfig, ModelConfig, data_shards

        app = AppConfig(model=ModelConfig(arch=args.arch))
        tcfg = TrainConfig(
            batch_size=args.batch, data_shards=2 if args.variant == "two_shards" else None
        )
        shards = data_shards(dataclasses.replace(app, train=tcfg))
        runtime.use_data_devices(shards)
    if as_walkforward:
        devices = runtime.prepare_seed_training(args.seeds, args.seed_devices or None)
    elif args.seeds > 1:  # the heap settings above stay for the whole run
        devices = runtime.use_seed_devices(args.seeds, args.seed_devices or None)

    if args.cache_dir:
        runtime.enable_compilation_cache(args.cache_dir)
    import jax
    import numpy as np

    from jaxtrader import train
    from jaxtrader.models import build_model, with_defaults
    from jaxtrader.models.lstm import LSTMClassifier
    from jaxtrader.train import create_train_state

    cfg = TrainConfig(batch_size=args.batch)
    mcfg = with_defaults(args.arch)
    if args.variant == "dropout0":
        mcfg = dataclasses.replace(mcfg, dropout=0.0)
    model = build_model(mcfg)
    if args.variant == "layered":  # the reference computation: one nn.RNN scan per layer
        model = LSTMClassifier(
            hidden=mcfg.hidden, num_layers=mcfg.num_layers, dropout=mcfg.dropout, wavefront=False
        )
    rng = np.random.default_rng(0)
    batches = [
        {
            "seq": rng.normal(size=(args.batch, SEQ_LEN, 5)).astype(np.float32),
            "feats": rng.normal(size=(args.batch, 86)).astype(np.float32),
            "label": rng.integers(0, 2, args.batch).astype(np.int32),
        }
        for _ in range(4)
    ]
    t_init = time.perf_counter()
    if args.seeds > 1:
        import jax.numpy as jnp

        from jaxtrader import seeds

        init_keys = [jax.random.key(s) for s in range(args.seeds)]
        state = seeds.create_seed_states(model, cfg, init_keys, batches[0], 10_000)
        # K seeds, each its own batch: the stacked f32[K, B, ...] inputs the walk-forward feeds.
        batches = [
            {k: np.stack([batches[(i + s) % 4][k] for s in range(args.seeds)]) for k in batches[0]}
            for i in range(4)
        ]
        active = seeds.place_seeds(jnp.ones((args.seeds,), bool), args.seeds)
        keys = seeds.place_seeds(
            jnp.stack([jax.random.key(100 + s) for s in range(args.seeds)]), args.seeds
        )
        batches = [seeds.place_seeds(b, args.seeds) for b in batches]

        def step_fn(st: Any, batch: Any, _key: Any) -> Any:
            return seeds.seeds_train_step(st, batch, keys, active)

    else:
        state = create_train_state(model, cfg, jax.random.key(0), batches[0], 10_000)
        devices = train.data_devices(shards)
        step_fn = train.sharded_train_step(shards, devices)
        state = train.place_for_data(state, devices, split=False)
        batches = [train.place_for_data(b, devices, split=True) for b in batches]
    jax.block_until_ready(state.params)
    init_s = time.perf_counter() - t_init
    key = jax.random.key(1)
    if args.seeds == 1:
        key = train.place_for_data(key, devices, split=False)
    t_first = time.perf_counter()
    state, metrics = step_fn(state, batches[0], key)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - t_first
    if args.seeds == 1:
        runtime.release_free_memory()  # the compiler's freed memory, as train_and_save does
    windows, cpu_windows = [], []
    # From the second step on, as seeds.fit_seeds (a no-op unless as_walkforward).
    with runtime.reuse_in_train_loop() as heap:
        for i in range(3):  # warm-up
            state, metrics = step_fn(state, batches[i % 4], key)
            heap.after_step()
        jax.block_until_ready(metrics)
        for _ in range(args.windows):
            t, c = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                state, metrics = step_fn(state, batches[i % 4], key)
                heap.after_step()
            jax.block_until_ready(metrics)
            windows.append((time.perf_counter() - t) / args.steps)
            cpu_windows.append((time.process_time() - c) / args.steps)
    step_s = statistics.median(windows)
    print(
        json.dumps(
            {
                "arch": args.arch,
                "variant": args.variant,
                "batch": args.batch,
                "seeds": args.seeds,
                "seed_devices": devices,  # for K = 1: the data shards' devices
                "data_shards": shards,
                "huge_pages": heap.huge_pages,
                "mapped_blocks": heap.mapped,
                "tcmalloc": runtime.tcmalloc_active(),
                "ms_per_step": step_s * 1000,
                # CPU time of all threads per step: less sensitive to other processes' load.
                "cpu_ms_per_step": statistics.median(cpu_windows) * 1000,
                "samples_per_s": args.seeds * args.batch / step_s,
                "init_s": init_s,
                "first_step_s": first_s,
                "process_s": time.perf_counter() - t0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_child(
    arch: str, variant: str, batch: int, cache_dir: str, a: argparse.Namespace, seeds: int = 1
) -> Any:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--arch",
        arch,
        "--variant",
        variant,
        "--batch",
        str(batch),
        "--steps",
        str(a.steps),
        "--windows",
        str(a.windows),
        "--cache-dir",
        cache_dir,
        "--seeds",
        str(seeds),
        "--seed-devices",
        str(a.seed_devices),
        "--seed-malloc",
        a.seed_malloc,
    ]
    env = os.environ.copy()
    if seeds > 1 and a.seed_malloc == "walkforward":
        from jaxtrader.runtime import restart_environment

        env = restart_environment() or env  # as jaxtrader walkforward restarts itself
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_separate(arch: str, batch: int, cache_dir: str, a: argparse.Namespace) -> dict[str, float]:
    """`a.separate` K = 1 children at once (sharing the cores); summed samples/s, median ms/step."""
    cmd = [sys.executable, __file__, "--child", "--arch", arch, "--batch", str(batch)]
    cmd += ["--steps", str(a.steps), "--windows", str(a.windows), "--cache-dir", cache_dir]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        for _ in range(a.separate)
    ]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a --separate child failed: {' '.join(cmd)}")
    return {
        "samples_per_s": sum(o["samples_per_s"] for o in outs),
        "ms_per_step": statistics.median(o["ms_per_step"] for o in outs),
        "peak_rss_mb": sum(o["peak_rss_mb"] for o in outs),
    }


def run_torch(arch: str, a: argparse.Namespace) -> dict[str, float]:
    """One PyTorch twin process (one model, batch 64): its median step, as the side-by-side driver."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [a.torch_python, a.torch_bench, "--model", arch, "--threads", "2"]
    # At least 20 timed steps for a steady median; the twin insists on timing some inference too.
    steps = max(20, a.steps * a.windows)
    cmd += ["--steps", str(steps), "--warmup", "5", "--infer-calls", "20"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    step_s = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])["step_median_s"]
    return {"ms_per_step": step_s * 1000, "samples_per_s": TORCH_BATCH / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", choices=["lstm", "transformer", "both"], default="both")
    p.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    p.add_argument(
        "--variants",
        action="store_true",
        help="also LSTM with one nn.RNN scan per layer and with one batch shard "
        "(train.data_shards = 1), Transformer without dropout and with two batch shards",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows per process (median)")
    p.add_argument("--rounds", type=int, default=3, help="processes per configuration")
    p.add_argument("--cache-dir", default="")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[1], help="models per step (K); e.g. --seeds 1 4"
    )
    p.add_argument(
        "--seed-devices",
        type=int,
        default=0,
        help="host devices the seed axis is split over when K > 1 (K must divide evenly); "
        "0 (default): as jaxtrader walkforward does; 1: one device, XLA's thread pool",
    )
    p.add_argument(
        "--seed-malloc",
        choices=["walkforward", "full", "cap"],
        default="walkforward",
        help="heap of the K > 1 processes: walkforward (default): as jaxtrader walkforward "
        "runs (runtime.restart_environment: on tcmalloc where it is installed, JAXTRADER_MALLOC "
        "applies; else glibc with step blocks mapped fresh on huge pages where the machine has "
        "them, or kept in the heap up to a 1.3 GB budget, JAXTRADER_LOOP_RSS_MB applies); full: "
        "glibc, one arena and no mmap for the whole run; cap: the 2-arena cap walkforward used "
        "before",
    )
    p.add_argument(
        "--separate",
        type=int,
        default=0,
        help="also run N single-model processes at once and sum their samples/s",
    )
    p.add_argument(
        "--torch-python",
        default="",
        help="python of a venv with torch: also run the PyTorch twin (batch 64) in every round",
    )
    p.add_argument(
        "--torch-bench",
        default=os.path.join("..", "shared", "bench", "bench_torch.py"),
        help="the PyTorch twin script (default: ../shared/bench/bench_torch.py)",
    )
    a = p.parse_args()
    if a.torch_python and TORCH_BATCH not in a.batch:
        p.error(f"--torch-python compares at batch {TORCH_BATCH}: add it to --batch")
    if a.torch_python and not os.path.isfile(a.torch_bench):
        p.error(f"--torch-bench {a.torch_bench} is not a file: point it at bench_torch.py")
    if a.child:
        a.batch = a.batch[0]
        a.seeds = a.seeds[0]
        child(a)
        return
    archs = ["lstm", "transformer"] if a.arch == "both" else [a.arch]
    configs = []
    for arch in archs:
        variants = ["default"]
        if a.variants:
            variants.append("layered" if arch == "lstm" else "dropout0")
            # The shard count that is not the arch's default (train.data_shards).
            variants.append("one_shard" if arch == "lstm" else "two_shards")
        configs += [(arch, v, b, k) for v in variants for b in a.batch for k in a.seeds]
    results: dict[tuple[str, str, int, int], list[Any]] = {c: [] for c in configs}
    separate: dict[tuple[str, int], list[dict[str, float]]] = {}
    torch: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for arch, variant, batch, k in configs:  # alternated: the machine is shared
                cache = os.path.join(tmp, f"{arch}-{variant}-{batch}-{k}")
                # Round 0 compiles cold into an empty cache; later rounds reuse it.
                res = run_child(arch, variant, batch, cache, a, k)
                res["cold"] = r == 0
                results[(arch, variant, batch, k)].append(res)
                print(
                    f"# round {r} {arch}/{variant}/b{batch}/K{k}: {res['ms_per_step']:.1f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )
            for arch, batch in dict.fromkeys((c[0], c[2]) for c in configs) if a.separate else []:
                # The same compilation cache as the K = 1 runs of this arch and batch.
                cache = os.path.join(tmp, f"{arch}-default-{batch}-1")
                separate.setdefault((arch, batch), []).append(run_separate(arch, batch, cache, a))
            for arch in archs if a.torch_python else []:
                res = run_torch(arch, a)
                torch.setdefault(arch, []).append(res)
                print(
                    f"# round {r} {arch}/pytorch/b{TORCH_BATCH}: {res['ms_per_step']:.1f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"medians over {a.rounds} processes x {a.windows} windows of {a.steps} steps; "
        f"input (B, {SEQ_LEN}, 5) + (B, 86); jax {_jax_version()}; K > 1 heap: {a.seed_malloc} "
        "(devices marked +tcmalloc: on tcmalloc; +mapped: step blocks mapped fresh past the "
        "loop's RSS budget, +huge: on huge pages)"
    )
    vs_torch = " vs PyTorch |" if torch else ""
    print(
        "| arch | variant | batch | seeds | devices | ms/step | CPU ms/step | samples/s (sum) | vs K=1 "
        f"|{vs_torch} first step cold | first step cached | init cached | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if torch else ""))
    torch_sps = {
        arch: statistics.median(r["samples_per_s"] for r in rows) for arch, rows in torch.items()
    }

    def torch_ratio(arch: str, sps: float) -> str:
        if not torch:
            return ""
        return f" {sps / torch_sps[arch]:.2f}x |" if arch in torch_sps else " - |"

    def med(key: str, rows: list[Any]) -> float:
        return statistics.median(x[key] for x in rows)

    for (arch, variant, batch, k), rs in results.items():
        warm = [x for x in rs if not x["cold"]] or rs
        cold = [x for x in rs if x["cold"]]
        single = results.get((arch, variant, batch, 1))
        ratio = f"{med('samples_per_s', rs) / med('samples_per_s', single):.2f}x" if single else "-"
        print(
            f"| {arch} | {variant} | {batch} | {k} "
            f"| {rs[0]['seed_devices']}{_heap_mark(rs[0])} "
            f"| {med('ms_per_step', rs):.1f} "
            f"| {med('cpu_ms_per_step', rs):.1f} "
            f"| {med('samples_per_s', rs):.0f} | {ratio} |"
            f"{torch_ratio(arch, med('samples_per_s', rs))} {med('first_step_s', cold):.2f} s "
            f"| {med('first_step_s', warm):.2f} s | {med('init_s', warm):.2f} s "
            f"| {max(x['peak_rss_mb'] for x in rs):.0f} |"
        )

    for (arch, batch), rows in separate.items():
        single = results.get((arch, "default", batch, 1))
        sps = statistics.median(r["samples_per_s"] for r in rows)
        ratio = f"{sps / med('samples_per_s', single):.2f}x" if single else "-"
        print(
            f"| {arch} | {a.separate} processes at once | {batch} | 1 each | 1 each "
            f"| {statistics.median(r['ms_per_step'] for r in rows):.1f} | - | {sps:.0f} | {ratio} |"
            f"{torch_ratio(arch, sps)} - | - | - | {max(r['peak_rss_mb'] for r in rows):.0f} (sum) |"
        )

    for arch, rows in torch.items():
        single = results.get((arch, "default", TORCH_BATCH, 1))
        sps = torch_sps[arch]
        ratio = f"{sps / med('samples_per_s', single):.2f}x" if single else "-"
        print(
            f"| {arch} | PyTorch twin (one model) | {TORCH_BATCH} | 1 | - "
            f"| {statistics.median(r['ms_per_step'] for r in rows):.1f} | - | {sps:.0f} | {ratio} "
            "| 1.00x | - | - | - | - |"
        )


def _heap_mark(row: dict[str, Any]) -> str:
    if row.get("tcmalloc"):
        return "+tcmalloc"
    if not row.get("mapped_blocks"):
        return ""
    return "+mapped+huge" if row.get("huge_pages") else "+mapped"


def _jax_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("jax")


if __name__ == "__main__":
    main()
