"""Process-level helpers: the compilation cache directory; the glibc heap controls (safe to call,
and `tune_malloc` makes a freed large buffer reusable without faulting its pages in again); the
host devices seeds are split over (`use_seed_devices`: same numbers on 2 devices as on 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from jaxtrader import runtime


def test_compilation_cache_helper_sets_the_directory(tmp_path: Path) -> None:
    previous = jax.config.jax_compilation_cache_dir
    try:
        path = runtime.enable_compilation_cache(tmp_path / "jaxcache")
        assert path == str(tmp_path / "jaxcache") and Path(path).is_dir()
        assert jax.config.jax_compilation_cache_dir == path
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_heap_controls_and_gc_freeze_are_safe_to_call() -> None:
    runtime.tune_malloc()
    runtime.release_free_memory()
    runtime.freeze_long_lived_objects()


# Allocates and writes buffers of 1-7 MB, frees them, and repeats (as XLA does with a train step's
# buffers); prints the page faults of the last 4 of 5 rounds. 4 x 16 MB = 15,625 pages of 4 KB.
_REUSE = """
import json, resource, sys
import numpy as np
from jaxtrader import runtime
if sys.argv[1] == "tuned":
    runtime.tune_malloc()
elif sys.argv[1] == "arena-cap-only":
    runtime.tune_malloc(reuse_freed=False)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    bufs = [np.ones(n // 8) for n in (3_000_000, 5_000_000, 7_000_000, 1_000_000)]
    del bufs
step()
before = faults()
for _ in range(4):
    step()
print(json.dumps({"faults": faults() - before}))
"""
PAGES = 4 * 16_000_000 // 4096


def _faults(mode: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _REUSE, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(json.loads(out.stdout)["faults"])


def test_tune_malloc_reuses_freed_buffers_instead_of_faulting_them_in_again() -> None:
    if runtime._glibc() is None:
        pytest.skip("not glibc: tune_malloc is a no-op here")
    default, tuned = _faults("default"), _faults("tuned")
    # Measured here: 9,152 faults with glibc's defaults (mmap/unmap or trim every round), 665 tuned.
    assert tuned < PAGES // 10, (tuned, default)
    assert default > 4 * tuned, (tuned, default)
    opted_out = _faults("tuned", {**os.environ, runtime.OPT_OUT_VAR: "0"})
    assert opted_out > 4 * tuned, (opted_out, tuned)
    seed_stacking = _faults("arena-cap-only")
    assert seed_stacking > 4 * tuned, (seed_stacking, tuned)


def test_ray_fold_workers_get_the_walkforward_heap_settings_through_their_environment() -> None:
    from jaxtrader.executors import worker_env

    # Fold tasks stack K seeds on one single-threaded device: only the arena cap (the local
    # executor splits the seeds over devices instead: runtime.prepare_seed_training).
    env = worker_env({})
    assert runtime.malloc_env(reuse_freed=False) == {"MALLOC_ARENA_MAX": "2"}
    assert env["MALLOC_ARENA_MAX"] == "2" and "MALLOC_MMAP_MAX_" not in env
    assert "GLIBC_TUNABLES" not in env
    # A driver restarted with huge pages (cli.main) does not pass them on; other tunables pass.
    tunables = f"glibc.malloc.arena_max=2:{runtime.HUGE_PAGE_TUNABLE}"
    assert worker_env({"GLIBC_TUNABLES": tunables})["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert worker_env({"GLIBC_TUNABLES": runtime.HUGE_PAGE_TUNABLE})["GLIBC_TUNABLES"] == ""
    # Nor tcmalloc (cli.main's restart on it); the user's own preloads pass.
    preload = "/x/libmine.so:libtcmalloc_minimal.so.4"
    assert worker_env({"LD_PRELOAD": preload})["LD_PRELOAD"] == "/x/libmine.so"
    assert "LD_PRELOAD" not in env
    # The env form of the full tuning must mean what tune_malloc does: glibc reads it at start.
    out = subprocess.run(
        [sys.executable, "-c", _REUSE, "default"],
        capture_output=True,
        text=True,
        check=True,
        env={**runtime.malloc_env(), "PATH": "/usr/bin:/bin"},
    )
    assert int(json.loads(out.stdout)["faults"]) < PAGES // 10


# Allocates, writes and frees a 64 MB buffer 4 times inside `reuse_in_train_loop` and prints the
# page faults of those rounds, the RSS at the end of the loop and the RSS after it. 64 MB is above
# glibc's mmap threshold, so with mmap on every buffer is mapped and unmapped again.
_TRAIN_LOOP = """
import json, resource, sys
import numpy as np
from jaxtrader import runtime
runtime.tune_malloc_for_seed_commands()  # what the CLI does for walkforward and study
if sys.argv[1] == "seed-training":
    assert runtime.prepare_seed_training(2) == 2  # 2 seeds split over 2 devices
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6
with runtime.reuse_in_train_loop():
    np.ones(8_000_000)  # the first round faults the heap in
    before = faults()
    for _ in range(4):
        buf = np.ones(8_000_000)
        del buf
    inside = faults() - before
    kept = rss_mb()
print(json.dumps({"inside": inside, "kept": kept, "returned": rss_mb()}))
"""


def test_seed_training_reuses_the_heap_inside_train_loops_only() -> None:
    if runtime._glibc() is None:
        pytest.skip("not glibc: a no-op here")
    if runtime.seed_device_count(2) < 2:
        pytest.skip("one core (or JAXTRADER_SEED_DEVICES=1): the seeds are not split here")

    def run(mode: str) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", _TRAIN_LOOP, mode], capture_output=True, text=True, check=True
        )
        return dict(json.loads(out.stdout))

    pages = 4 * 64_000_000 // 4096
    seed = run("seed-training")
    assert seed["inside"] < pages // 10, seed  # reused, not faulted in again
    assert seed["kept"] - seed["returned"] > 50, seed  # the loop's free 64 MB returned at its end
    # With one device (no split) the loop changes nothing: each buffer is mapped and returned at
    # free. (Its page faults are no measure: the kernel may back a 64 MB map with huge pages.)
    plain = run("plain")
    assert plain["kept"] < seed["kept"] - 50, (plain, seed)


# What both subprocess scripts below start with: a seed command's heap, libc's malloc and free.
_SEED_COMMAND_HEAP = """
import ctypes, json, resource
from jaxtrader import runtime
runtime.tune_malloc_for_seed_commands()
assert runtime.prepare_seed_training(2) == 2
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""

# Inside `reuse_in_train_loop` with 2 seed devices: a 128 MB block from malloc (as XLA's buffers
# come; numpy would ask for huge pages itself), written and freed 4 times with `after_step()` after
# each, prints whether the loop mapped its big blocks, its trims, the page faults, the huge pages
# backing the block, and the RSS with the last block alive and after it is freed.
_BUDGET_LOOP = (
    _SEED_COMMAND_HEAP
    + """
SIZE = 128_000_000
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def huge_mb():
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(l.split()[1]) for l in f if l.startswith("AnonHugePages")) / 1e3
with runtime.reuse_in_train_loop() as heap:
    mapped_at_start = heap.mapped
    before = faults()
    for _ in range(4):
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        live_huge, live = huge_mb(), runtime.resident_bytes() / 1e6
        libc.free(block)
        heap.after_step()
    freed = runtime.resident_bytes() / 1e6
    print(json.dumps({"mapped_at_start": mapped_at_start, "mapped": heap.mapped,
                      "huge_pages": heap.huge_pages, "trims": heap.trims,
                      "faults": faults() - before, "live_huge": live_huge, "live": live,
                      "freed": freed}))
"""
)


def _budget_loop(env: dict[str, str], budget_mb: str | None) -> dict[str, float]:
    if runtime._glibc() is None:
        pytest.skip("not glibc: a no-op here")
    if runtime.seed_device_count(2) < 2:
        pytest.skip("one core (or JAXTRADER_SEED_DEVICES=1): the seeds are not split here")
    env = {k: v for k, v in env.items() if k != runtime.LOOP_RSS_BUDGET_VAR}
    if env.get("GLIBC_TUNABLES") != runtime.HUGE_PAGE_TUNABLE:
        env.pop("GLIBC_TUNABLES", None)  # no huge pages, unless the caller asked for them
    if budget_mb is not None:
        env[runtime.LOOP_RSS_BUDGET_VAR] = budget_mb
    out = subprocess.run(
        [sys.executable, "-c", _BUDGET_LOOP], capture_output=True, text=True, check=True, env=env
    )
    return dict(json.loads(out.stdout))


def test_a_train_loop_keeps_its_blocks_in_the_heap_until_its_rss_budget() -> None:
    # Without huge pages the default budget is 1.3 GB: far away.
    under = _budget_loop(dict(os.environ), None)
    assert not under["mapped"] and under["trims"] == 0, under
    assert under["freed"] > under["live"] - 10, under  # the freed block stays for the next step
    # A 100 MB budget: the first 128 MB block passes it, and from then on blocks are mapped fresh
    # and returned at free (4 KB or huge pages, whichever the process has).
    over = _budget_loop(dict(os.environ), "100")
    assert not over["mapped_at_start"] and over["mapped"] and over["trims"] >= 1, over
    assert over["freed"] < over["live"] - 100, over


def test_with_huge_pages_a_train_loop_maps_its_big_blocks_from_the_start() -> None:
    env = runtime.huge_page_environment()
    if env is None:
        pytest.skip("no transparent huge pages or glibc < 2.35 here (or the tuning is opted out)")
    env["GLIBC_TUNABLES"] = runtime.HUGE_PAGE_TUNABLE
    got = _budget_loop(env, None)  # with huge pages the default: mapped from the loop's start
    assert got["mapped_at_start"] and got["huge_pages"], got
    # 4 x 128 MB on 4 KB pages would fault 125,000 times; on 2 MB pages a few thousand at most.
    assert got["faults"] < 4 * 128_000_000 // 4096 // 20, got
    assert got["live_huge"] >= 100, got
    assert got["live"] - got["freed"] > 100, got  # freed blocks are unmapped, not kept


# Before a train loop: a 128 MB block in the heap (mmap off, as the seed commands' 1 GiB trim
# threshold keeps it), written and freed, a small block above it. Prints the RSS then, and on
# entering the loop (seeds.fit_seeds enters it once the first step's call has returned).
_FREE_BEFORE_LOOP = (
    _SEED_COMMAND_HEAP
    + """
libc.mallopt(-4, 0)  # M_MMAP_MAX: no maps, so the block comes from the heap
block = libc.malloc(128_000_000)
ctypes.memset(block, 1, 128_000_000)
pin = libc.malloc(1000)
libc.free(block)
before = runtime.resident_bytes() / 1e6
with runtime.reuse_in_train_loop() as heap:
    print(json.dumps({"before": before, "on_entry": runtime.resident_bytes() / 1e6,
                      "trims": heap.trims}))
"""
)


def test_a_train_loop_returns_the_free_heap_left_from_before_it_on_entry() -> None:
    if runtime._glibc() is None:
        pytest.skip("not glibc: a no-op here")
    if runtime.seed_device_count(2) < 2:
        pytest.skip("one core (or JAXTRADER_SEED_DEVICES=1): the seeds are not split here")
    out = subprocess.run(
        [sys.executable, "-c", _FREE_BEFORE_LOOP], capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["before"] - got["on_entry"] > 100, got
    assert got["trims"] == 0, got  # not counted as a trim on growth


def test_a_malformed_loop_rss_budget_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from jaxtrader.errors import ConfigError

    monkeypatch.setenv(runtime.LOOP_RSS_BUDGET_VAR, "1.5GB")
    with pytest.raises(ConfigError, match=r"JAXTRADER_LOOP_RSS_MB='1\.5GB' is not a whole number"):
        runtime.prepare_seed_training(2)
    monkeypatch.setenv(runtime.LOOP_RSS_BUDGET_VAR, "900")
    assert runtime.loop_rss_budget() == 900_000_000


def test_huge_page_environment_adds_the_tunable_once_and_only_where_it_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "transparent_huge_pages", lambda: True)
    monkeypatch.setattr(runtime, "glibc_version", lambda: (2, 36))
    tunable = runtime.HUGE_PAGE_TUNABLE
    assert runtime.huge_page_environment({"PATH": "/bin"}) == {
        "PATH": "/bin",
        "GLIBC_TUNABLES": tunable,
    }
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert runtime.huge_page_environment(mine) == {
        "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{tunable}"
    }
    assert runtime.huge_page_environment({"GLIBC_TUNABLES": tunable}) is None  # no restart loop
    assert runtime.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert runtime.huge_page_environment({runtime.OPT_OUT_VAR: "0"}) is None
    monkeypatch.setattr(runtime, "glibc_version", lambda: (2, 34))
    assert runtime.huge_page_environment({}) is None
    monkeypatch.setattr(runtime, "glibc_version", lambda: None)
    assert runtime.huge_page_environment({}) is None
    monkeypatch.setattr(runtime, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(runtime, "transparent_huge_pages", lambda: False)
    assert runtime.huge_page_environment({}) is None


def test_loop_heap_trims_only_after_the_resident_size_grew_past_its_allowance() -> None:
    if runtime.resident_bytes() == 0:
        pytest.skip("no /proc/self/statm here")
    heap = runtime.LoopHeap(active=True, growth=64 << 20)
    heap.after_step()  # the first step settles the size
    start = heap.floor
    assert start is not None and heap.trims == 0
    small = np.ones(2_000_000)  # 16 MB, within the allowance
    heap.after_step()
    assert heap.trims == 0
    big = np.ones(16_000_000)  # 128 MB more, resident: past it
    heap.after_step()
    assert (heap.trims, heap.floor) == (1, None)
    heap.after_step()  # the step after a trim settles the size again: the memory still in use...
    assert heap.trims == 1 and heap.floor is not None and heap.floor > start + 128_000_000
    heap.after_step()
    assert heap.trims == 1  # ...does not trim again at every step
    del small, big
    idle = runtime.LoopHeap(active=False)
    np.ones(32_000_000)
    idle.after_step()
    assert (idle.trims, idle.floor) == (0, None)


@pytest.mark.parametrize(
    ("k", "cores", "cap", "expected"),
    [(4, 2, "", 2), (3, 2, "", 1), (6, 4, "", 3), (4, 8, "", 4), (1, 2, "", 1), (4, 2, "1", 1)],
)
def test_seed_device_count_is_the_largest_divisor_of_k_within_the_cores(
    monkeypatch: pytest.MonkeyPatch, k: int, cores: int, cap: str, expected: int
) -> None:
    monkeypatch.setenv(runtime.SEED_DEVICES_VAR, cap)
    assert runtime.seed_device_count(k, cores=cores) == expected


@pytest.mark.parametrize("cap", ["two", "0", "-1", " 0 "])
def test_a_malformed_seed_device_cap_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    """0 was silently run on one device while "abc" was refused."""
    from jaxtrader.errors import ConfigError

    monkeypatch.setenv(runtime.SEED_DEVICES_VAR, cap)
    with pytest.raises(ConfigError, match=f"JAXTRADER_SEED_DEVICES={cap.strip()!r} .*1 or more"):
        runtime.seed_device_count(4, cores=2)


# Trains K = 2 tiny LSTM seeds for 2 epochs after `use_seed_devices(2, devices=N)` and saves the
# parameters, the devices they live on and the XLA flags the process ran with.
_SEED_FIT = """
import sys
import numpy as np
from jaxtrader.runtime import use_seed_devices
n = use_seed_devices(2, devices=int(sys.argv[1]))
import os
import jax
from jaxtrader import seeds
from jaxtrader.config import DatasetConfig, TrainConfig
from jaxtrader.data import synth_candles
from jaxtrader.dataset import build_dataset
from jaxtrader.models import build_model, with_defaults

data = build_dataset(synth_candles(rows=1_400, seed=5), DatasetConfig(seq_len=50, horizon=2))
cfg = TrainConfig(epochs=2, batch_size=32, learning_rate=3e-3, warmup_steps=0, patience=5)
init_keys, fit_keys = seeds.seed_init_fit_keys(jax.random.key(0), 2)
model = build_model(with_defaults("lstm", hidden=8, num_layers=2, dropout=0.2))
sample = next(data.eval_batches("train", cfg.batch_size))
states = seeds.create_seed_states(model, cfg, init_keys, sample, 200)
fit = seeds.fit_seeds(states, data, cfg, fit_keys)
leaves = jax.tree.leaves(fit.state.params)
np.savez(
    sys.argv[2],
    *[np.asarray(x) for x in leaves],
    devices=np.asarray([len(x.sharding.device_set) for x in leaves]),
    n=np.asarray(n),
    flags=np.asarray(os.environ.get("XLA_FLAGS", "")),
)
"""


def test_seeds_split_over_two_devices_train_exactly_as_on_one(tmp_path: Path) -> None:
    def fit(devices: int) -> dict:
        out = tmp_path / f"fit{devices}.npz"
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
        subprocess.run(
            [sys.executable, "-c", _SEED_FIT, str(devices), str(out)],
            check=True,
            env={**env, runtime.SEED_DEVICES_VAR: ""},
            timeout=300,
        )
        with np.load(out) as z:
            return {k: z[k] for k in z.files}

    one, two = fit(1), fit(2)
    assert int(one["n"]) == 1 and set(one["devices"]) == {1}
    assert "xla_cpu_multi_thread_eigen" not in str(one["flags"])
    # Each seed's parameters live on their own device, and XLA ran one thread per device...
    assert int(two["n"]) == 2 and set(two["devices"]) == {2}
    assert runtime.ONE_XLA_THREAD in str(two["flags"])
    # ...and the two seeds were trained exactly as on one device (only float rounding differs).
    arrays = sorted(k for k in one if k.startswith("arr_"))
    assert len(arrays) > 4
    for name in arrays:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert not np.allclose(one[arrays[0]][0], one[arrays[0]][1])  # the seeds differ


def test_restart_environment_preloads_tcmalloc_where_installed_else_asks_for_huge_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "tcmalloc_library", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(runtime, "huge_page_environment", lambda env: {**env, "HUGE": "1"})
    assert runtime.restart_environment({"PATH": "/bin"}) == {
        "PATH": "/bin",
        "LD_PRELOAD": "libtcmalloc_minimal.so.4",
    }
    assert runtime.restart_environment({"LD_PRELOAD": "libmine.so"}) == {
        "LD_PRELOAD": "libmine.so:libtcmalloc_minimal.so.4"
    }
    # Already on it (restarted, or the user preloads it): no restart loop.
    assert runtime.restart_environment({"LD_PRELOAD": "/x/libtcmalloc.so.4"}) is None
    # Opted out: glibc, as before this allocator existed.
    glibc = {runtime.MALLOC_VAR: "glibc"}
    assert runtime.restart_environment(glibc) == {**glibc, "HUGE": "1"}
    # A wrong value restarts nothing; the command itself stops with one line.
    assert runtime.restart_environment({runtime.MALLOC_VAR: "jemalloc"}) is None
    # `train` (huge_pages=False) restarts only onto tcmalloc: its one model keeps the tuned heap.
    assert runtime.restart_environment({}, huge_pages=False) == {
        "LD_PRELOAD": "libtcmalloc_minimal.so.4"
    }
    assert runtime.restart_environment(glibc, huge_pages=False) is None
    monkeypatch.setattr(runtime, "tcmalloc_library", lambda: None)
    assert runtime.restart_environment({}) == {"HUGE": "1"}
    assert runtime.restart_environment({}, huge_pages=False) is None


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="tcmalloc is preloaded on Linux only"
)
def test_the_tcmalloc_advice_is_given_only_where_it_is_missing_and_not_declined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "tcmalloc_active", lambda: False)
    monkeypatch.setattr(runtime, "tcmalloc_library", lambda: None)
    advice = runtime.tcmalloc_advice({})
    assert advice is not None and "apt install libtcmalloc-minimal4" in advice
    assert runtime.tcmalloc_advice({runtime.MALLOC_VAR: "glibc"}) is None  # declined
    monkeypatch.setattr(runtime, "tcmalloc_library", lambda: "libtcmalloc_minimal.so.4")
    assert runtime.tcmalloc_advice({}) is None  # installed: the restart uses it
    monkeypatch.setattr(runtime, "tcmalloc_library", lambda: None)
    monkeypatch.setattr(runtime, "tcmalloc_active", lambda: True)
    assert runtime.tcmalloc_advice({}) is None  # preloaded by the user


def test_a_wrong_or_unmet_allocator_choice_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jaxtrader.errors import ConfigError

    monkeypatch.setenv(runtime.MALLOC_VAR, "jemalloc")
    with pytest.raises(ConfigError, match=r"JAXTRADER_MALLOC='jemalloc' is not one of auto, "):
        runtime.prepare_seed_training(2)
    monkeypatch.setenv(runtime.MALLOC_VAR, "tcmalloc")
    monkeypatch.setattr(runtime, "tcmalloc_library", lambda: None)
    monkeypatch.setattr(runtime, "tcmalloc_active", lambda: False)
    with pytest.raises(ConfigError, match="tcmalloc is not installed: install it"):
        runtime.malloc_choice()
    monkeypatch.setenv(runtime.MALLOC_VAR, "GLIBC")
    assert runtime.malloc_choice() == "glibc"


# 256 MB allocated through whatever malloc the process has, written, freed, then the free memory
# returned (runtime.release_free_memory): the RSS at each point, and what the process runs on.
# The C library's malloc and free, callable from a test script.
_LIBC = """
import ctypes, json
from jaxtrader import runtime
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""
_RELEASE = (
    _LIBC
    + """
base = runtime.resident_bytes() / 1e6
block = libc.malloc(256_000_000)
ctypes.memset(block, 1, 256_000_000)
live = runtime.resident_bytes() / 1e6
libc.free(block)
freed = runtime.resident_bytes() / 1e6
runtime.release_free_memory()
print(json.dumps({"tcmalloc": runtime.tcmalloc_active(), "tuned": runtime.malloc_tuning_enabled(),
                  "base": base, "live": live, "freed": freed,
                  "released": runtime.resident_bytes() / 1e6}))
"""
)


def _run_json(script: str, *, tcmalloc: bool) -> dict[str, Any]:
    """`script` in a fresh Python, with tcmalloc preloaded or not (this environment's preload and
    opt-out left out); its JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in (runtime.OPT_OUT_VAR, "LD_PRELOAD")}
    if tcmalloc:
        library = runtime.tcmalloc_library()
        if library is None:
            pytest.skip("tcmalloc is not installed here (Debian/Ubuntu: libtcmalloc-minimal4)")
        env["LD_PRELOAD"] = library
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def test_on_tcmalloc_glibc_is_left_alone_and_free_memory_still_goes_back() -> None:
    got = _run_json(_RELEASE, tcmalloc=True)
    assert got["tcmalloc"] and not got["tuned"], got
    assert got["live"] - got["base"] > 200, got
    assert got["released"] < got["live"] - 200, got  # ReleaseFreeMemory, not glibc's trim
    assert not _run_json(_RELEASE, tcmalloc=False)["tcmalloc"]


def test_on_tcmalloc_a_train_loop_still_returns_the_free_memory_left_from_before_it() -> None:
    if runtime.seed_device_count(2) < 2:
        pytest.skip("one core (or JAXTRADER_SEED_DEVICES=1): the seeds are not split here")
    got = _run_json(_FREE_BEFORE_LOOP, tcmalloc=True)
    assert got["before"] - got["on_entry"] > 100, got  # tcmalloc had kept the freed block
    assert got["trims"] == 0, got


class _FakeClock:
    """A clock that advances only when slept on: `await_freed_blocks` without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _awaited(readings: Callable[[float], int | None]) -> float:
    clock = _FakeClock()
    return runtime.await_freed_blocks(
        lambda: readings(clock.now), quiet_s=0.02, limit_s=0.25, clock=clock, sleep=clock.sleep
    )


def test_await_freed_blocks_waits_for_a_late_free_then_a_quiet_spell_and_no_longer() -> None:
    mib = 1 << 20
    assert _awaited(lambda t: 500 * mib) == pytest.approx(0.02, abs=0.002)  # nothing pending
    # A block freed 9 ms late: waited past the fall, then the quiet spell after it.
    assert _awaited(lambda t: (500 if t < 0.009 else 320) * mib) == pytest.approx(0.029, abs=0.003)
    # Two blocks, one per device, 15 ms apart: both awaited.
    two = _awaited(lambda t: (500 if t < 0.009 else 410 if t < 0.024 else 320) * mib)
    assert two == pytest.approx(0.044, abs=0.003)
    # Small allocations come and go meanwhile: they are not freed blocks.
    assert _awaited(lambda t: 500 * mib - int(t * 1e6) % 4096) == pytest.approx(0.02, abs=0.002)
    # Something keeps freeing: the limit ends the wait.
    assert _awaited(lambda t: int((1 - t) * 1000) * mib) == pytest.approx(0.25, abs=0.002)
    assert _awaited(lambda t: None) == 0.0  # no allocator count: no wait


# A 256 MB block freed by another thread 10 ms after this one "has its result", as XLA's worker
# frees a train step's temporary block after the step's outputs are ready; the free memory is
# returned at once or after `await_freed_blocks`. RSS at each point (MB) and the allocated counts.
_LATE_FREE = (
    _LIBC
    + """
import sys, threading, time
out = {"tcmalloc": runtime.tcmalloc_active()}
if runtime.allocated_bytes() is None:
    print(json.dumps({"no_count": True})); sys.exit()
for name, wait in (("at_once", False), ("awaited", True)):
    before = runtime.allocated_bytes()
    block = libc.malloc(256_000_000)
    ctypes.memset(block, 1, 256_000_000)
    held = runtime.allocated_bytes()
    worker = threading.Timer(0.01, libc.free, args=(block,))
    worker.start()
    waited = runtime.await_freed_blocks() if wait else 0.0
    runtime.release_free_memory()
    worker.join()
    time.sleep(0.05)
    out[name] = {"rss": runtime.resident_bytes() / 1e6, "waited": waited,
                 "held": (held - before) / 1e6, "after": (runtime.allocated_bytes() - before) / 1e6}
    runtime.release_free_memory()
print(json.dumps(out))
"""
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tcmalloc is preloaded on Linux")
def test_on_tcmalloc_a_block_freed_late_is_returned_only_when_awaited() -> None:
    got = _run_json(_LATE_FREE, tcmalloc=True)
    assert got["tcmalloc"], got
    at_once, awaited = got["at_once"], got["awaited"]
    assert at_once["held"] > 250 and abs(at_once["after"]) < 20, got  # the count sees the block
    # Returned before the free: the block's pages stay resident as tcmalloc's free pages.
    assert awaited["rss"] < at_once["rss"] - 200, got
    assert 0.01 <= awaited["waited"] < 0.1, got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2 is Linux's")
def test_on_glibc_the_allocated_count_sees_a_block_come_and_go() -> None:
    got = _run_json(_LATE_FREE, tcmalloc=False)
    if got.get("no_count"):
        pytest.skip("this C library has no mallinfo2 (glibc < 2.33): no allocated count to wait on")
    assert not got["tcmalloc"], got
    assert got["awaited"]["held"] > 250 and abs(got["awaited"]["after"]) < 20, got
    assert 0.01 <= got["awaited"]["waited"] < 0.1, got


_DATA_DEVICES = r"""
import json, os
from jaxtrader import runtime
n = runtime.use_data_devices(4)
import jax
print(json.dumps({"n": n, "devices": len(jax.local_devices()),
                  "flags": os.environ.get("XLA_FLAGS", "")}))
"""


def test_data_devices_split_the_cores_and_keep_the_thread_pool() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    proc = subprocess.run(
        [sys.executable, "-c", _DATA_DEVICES],
        capture_output=True,
        text=True,
        check=True,
        env={**env, runtime.SEED_DEVICES_VAR: ""},
        timeout=120,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # 4 shards: the largest divisor of 4 the cores allow (2 on a 2-core machine), and XLA keeps
    # its thread pool (unlike the seeds' one thread per device).
    expected = max(d for d in (1, 2, 4) if d <= runtime.available_cores())
    assert out["n"] == out["devices"] == expected
    assert "xla_cpu_multi_thread_eigen" not in out["flags"]


def test_data_devices_leave_a_running_backend_and_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jax

    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.setenv(runtime.SEED_DEVICES_VAR, "")
    before = len(jax.local_devices())  # the backend is up in this process
    runtime.use_data_devices(2)  # no RuntimeError from jax.config
    assert len(jax.local_devices()) == before
    assert "JAX_NUM_CPU_DEVICES" not in os.environ  # children would inherit it
