"""Process-level settings a command makes once: JAX's persistent compilation cache, the allocator
(tcmalloc for `train`, `walkforward` and `study` where it is installed, through one restart of the
process: `restart_environment`; else glibc's malloc tuned: arena cap, no per-buffer mmap, heap
trim, huge pages for the seed commands' step blocks), the host devices K seeds are split over
(`prepare_seed_training`), the heap inside the seed commands' train loops (`reuse_in_train_loop`,
`LoopHeap`; `await_freed_blocks` and `release_free_memory` return the freed pages), and keeping
long-lived objects out of garbage collections.

None of these changes a result; they change how fast a process starts and how much memory it
keeps. JAX is imported only by `enable_compilation_cache` (and by `use_seed_devices` when JAX is
already loaded).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# glibc's own M_MMAP_MAX (malloc.c DEFAULT_MMAP_MAX), restored when a train loop ends.
_GLIBC_MMAP_MAX = 65536
# glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), restored likewise.
_GLIBC_MMAP_THRESHOLD = 32 << 20
# Free memory glibc may keep at the top of a heap instead of returning it at every free().
KEEP_FREE_BYTES = 1 << 30
# Every thread allocates from the main heap (see tune_malloc).
ARENAS = 1
# JAXTRADER_TUNE_MALLOC=0 keeps glibc's mmap and trim defaults (only the arena cap is set): to
# measure the difference, or if a platform's allocator misbehaves with the tuning.
OPT_OUT_VAR = "JAXTRADER_TUNE_MALLOC"
# XLA runs each op on the thread that executes the program (no intra-op thread pool).
ONE_XLA_THREAD = "--xla_cpu_multi_thread_eigen=false"
# JAXTRADER_SEED_DEVICES=N caps the host devices seeds are split over; 1 keeps one device.
SEED_DEVICES_VAR = "JAXTRADER_SEED_DEVICES"


# JAXTRADER_MALLOC picks the allocator `train`, `walkforward` and `study` restart with
# (`restart_environment`).
MALLOC_VAR = "JAXTRADER_MALLOC"
MALLOC_CHOICES = ("auto", "tcmalloc", "glibc")
# gperftools' tcmalloc as Debian/Ubuntu (libtcmalloc-minimal4) and Homebrew name it; the minimal
# build has no heap profiler, which nothing here needs.
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
# What every tcmalloc library's file name contains: how a preload or a mapping is recognised.
_TCMALLOC_MARK = "libtcmalloc"


def malloc_tuning_enabled() -> bool:
    """Whether glibc's malloc is tuned: not when opted out, nor when tcmalloc allocates instead."""
    return os.environ.get(OPT_OUT_VAR, "1") != "0" and not tcmalloc_active()


def malloc_choice(environ: dict[str, str] | None = None) -> str:
    """$JAXTRADER_MALLOC (default auto), checked: a wrong value is a ConfigError."""
    from jaxtrader.errors import ConfigError

    env = os.environ if environ is None else environ
    choice = env.get(MALLOC_VAR, "auto").strip().lower() or "auto"
    if choice not in MALLOC_CHOICES:
        raise ConfigError(
            f"{MALLOC_VAR}={env[MALLOC_VAR]!r} is not one of {', '.join(MALLOC_CHOICES)}; "
            "unset it to use tcmalloc where it is installed"
        )
    if choice == "tcmalloc" and tcmalloc_library() is None and not tcmalloc_active():
        raise ConfigError(
            f"{MALLOC_VAR}=tcmalloc but tcmalloc is not installed: install it (Debian/Ubuntu: "
            "apt install libtcmalloc-minimal4) or unset the variable"
        )
    return choice


def tcmalloc_library() -> str | None:
    """The tcmalloc library the dynamic linker would load (e.g. 'libtcmalloc_minimal.so.4'), None
    when it is not installed or this is not Linux (LD_PRELOAD is how it is used)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes.util

    for name in TCMALLOC_NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_active() -> bool:
    """Whether tcmalloc is loaded in this process (preloaded: `restart_environment`)."""
    try:
        with open("/proc/self/maps") as f:
            return _TCMALLOC_MARK in f.read()
    except OSError:
        return False


def without_tcmalloc(preload: str) -> str:
    """An LD_PRELOAD value with tcmalloc taken out (for Ray's processes, which keep glibc)."""
    return ":".join(p for p in preload.split(":") if p and _TCMALLOC_MARK not in p)


def restart_environment(
    environ: dict[str, str] | None = None, *, huge_pages: bool = True
) -> dict[str, str] | None:
    """The environment `walkforward`, `study` and `train` restart themselves with (`cli.main`),
    None when there is nothing to change: tcmalloc preloaded where it is installed
    ($JAXTRADER_MALLOC auto or tcmalloc), else (with `huge_pages`) glibc's huge-page tunable
    (`huge_page_environment`), which only the seed commands' train loops use.

    Why tcmalloc: XLA frees and re-allocates each step's ~180 MB temporary block per device.
    glibc either maps it fresh at every step, the kernel zeroing every page, or keeps it in a heap
    that small allocations fragment until the resident size climbs (`LoopHeap`); tcmalloc keeps
    freed spans for reuse without either. On the AVX2 machine, embedded market, LSTM walk-forward
    with the defaults: 7 min 40-56 s against 9 min 41 s to 10 min 42 s (three runs), system time
    17-20 s against 117-156 s, the same predictions to the bit (docs/decisions.md). `train`, one
    model on the fully tuned glibc heap, on BTC/USDT 1h with a 5-minute limit on the Intel Xeon:
    Transformer peak RSS 846 MB against 1,116-1,270 MB, 145 s of training against 165-184 s, the
    same losses to the bit."""
    env = dict(os.environ if environ is None else environ)
    preload = env.get("LD_PRELOAD", "")
    if _TCMALLOC_MARK in preload:
        return None  # already restarted (or the user preloads it)
    from jaxtrader.errors import ConfigError

    try:
        choice = malloc_choice(env)
    except ConfigError:  # the command reports it, as one line (prepare_seed_training)
        return None
    library = tcmalloc_library() if choice != "glibc" else None
    if library is None:
        return huge_page_environment(env) if huge_pages else None
    env["LD_PRELOAD"] = ":".join(p for p in (preload, library) if p)
    return env


def tcmalloc_advice(environ: dict[str, str] | None = None) -> str | None:
    """One line for a user of `walkforward` or `study` whose run stays on glibc only because
    tcmalloc is not installed; None when it runs on tcmalloc, glibc was chosen
    ($JAXTRADER_MALLOC=glibc), or this is not Linux. Why say it: on the AVX2 machine the same
    walk-forwards took 15-27% less wall time on tcmalloc (docs/decisions.md), and on glibc the
    embedded LSTM run kept its 10-minute promise with 18-86 s to spare in three runs and missed it
    by 42 s in a fourth."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or tcmalloc_active():
        return None
    if malloc_choice(dict(env)) == "glibc" or tcmalloc_library() is not None:
        return None
    return (
        "note: tcmalloc is not installed, so this runs on glibc's heap; walk-forwards took "
        "15-27% less time on tcmalloc (Debian/Ubuntu: apt install libtcmalloc-minimal4; "
        "JAXTRADER_MALLOC=glibc silences this)"
    )


def malloc_env(reuse_freed: bool = True) -> dict[str, str]:
    """`tune_malloc(reuse_freed)`'s settings as environment variables, for processes jaxtrader
    starts (Ray workers): glibc reads them at start-up, before any allocation."""
    if not (reuse_freed and malloc_tuning_enabled()):
        return {"MALLOC_ARENA_MAX": "2"}
    return {
        "MALLOC_ARENA_MAX": str(ARENAS),
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": str(KEEP_FREE_BYTES),
    }


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> str:
    """Turns on JAX's persistent compilation cache (cuts first-step time ~3x in a second process).

    Uses `directory`, else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/jaxtrader/jax. Returns the path.
    """
    import jax

    path = str(
        directory
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or Path.home() / ".cache" / "jaxtrader" / "jax"
    )
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # Small CPU programs compile in well under the 1 s default threshold but are still worth caching.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _glibc() -> Any | None:
    """The process's C library when it offers glibc's heap controls, else None (macOS, musl)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(reuse_freed: bool = True) -> None:
    """glibc heap settings for XLA on CPU; every command calls this before JAX starts its threads.

    - No mmap per allocation (M_MMAP_MAX = 0) and a 1 GiB trim threshold: glibc by default serves
      every block above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it on
      free, and trims the heap top past 128 KB. XLA allocates and frees its step buffers on every
      train step, so each step faulted in and zeroed the same memory again: 28-37% of a
      walk-forward's CPU time was kernel time, ~80,000 page faults per LSTM train step. Reusing
      the heap instead made a single-core train step 1.7x (LSTM) to 1.9x (Transformer) faster at
      the same peak RSS (README, Performance). `release_free_memory` still returns free pages
      after each epoch or fold.
    - One arena: XLA's worker threads each get their own arena by default (up to 8 per core);
      freed step, eval and checkpoint buffers then sit in different arenas and the heap grows with
      every epoch (measured on BTC 1h: +20-60 MB per validation + save cycle). A second arena's
      heap is still unmapped when it empties, so with 2 arenas half the faults stayed: idle, 2
      cores, batch 64, one arena against two: LSTM step 51-54 vs 59 ms, Transformer 32-34 vs
      45-67 ms (against 78-81 and 74 ms with glibc's defaults and 2 arenas).

    `reuse_freed=False` sets only the arena cap of 2, as `JAXTRADER_TUNE_MALLOC=0` does
    everywhere; Ray fold workers run with it (`malloc_env`). `walkforward` and `study` use
    `tune_malloc_for_seed_commands` instead: with K seeds stacked in one step, reusing the heap
    for everything roughly doubles peak RSS (K = 4, batch 64: LSTM 0.78 -> 1.54 GB, Transformer
    0.82 -> 1.59-2.14 GB in `bench_train`; 2.63 GB on the BTC 1h walk-forward).

    No effect on any result; a no-op off glibc (macOS, musl).
    """
    libc = _glibc()
    if libc is not None:
        full = reuse_freed and malloc_tuning_enabled()
        libc.mallopt(_M_ARENA_MAX, ARENAS if full else 2)
        if full:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_BYTES)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def seed_device_count(k: int, cores: int | None = None) -> int:
    """How many host devices K seeds are split over: the largest divisor of K that is at most the
    cores (capped by $JAXTRADER_SEED_DEVICES), so every device holds the same number of seeds."""
    limit = available_cores() if cores is None else cores
    cap = os.environ.get(SEED_DEVICES_VAR, "").strip()
    if cap:
        try:
            devices = int(cap)
        except ValueError:
            devices = 0
        # 0 or fewer devices is as meaningless as "abc" (it was silently run on one device).
        if devices < 1:
            from jaxtrader.errors import ConfigError

            raise ConfigError(
                f"{SEED_DEVICES_VAR}={cap!r} is not a whole number of 1 or more; set it to 1 (one "
                "device) or more, or unset it"
            ) from None
        limit = min(limit, devices)
    return max((d for d in range(1, max(limit, 1) + 1) if k % d == 0), default=1)


def use_seed_devices(k: int, devices: int | None = None) -> int:
    """Splits this process's CPU into host devices for K seeds trained together; returns how many.

    With n > 1 devices (`seed_device_count`, or `devices`), JAX gets n CPU devices and XLA one
    thread per device, and `seeds` shards the seed axis over them: each core then runs its own
    seeds' ops end to end. One model's small ops keep only ~1.6 of 2 cores busy through XLA's
    intra-op thread pool, whose hand-offs cost CPU too; K = 4 on 2 devices reached 1.23x (LSTM)
    and 0.99x (Transformer) the samples/s of one model, where 4 separate processes reached 1.36x
    and 1.09x (AVX-512; on an AVX2 machine, where one LSTM keeps fewer cores busy, 1.54-1.73x
    and 1.05-1.45x: `scripts/bench_train.py`, README Performance). Must run before JAX creates its
    CPU backend (the CLI calls it before importing the workflow); a no-op for n = 1.
    """
    n = seed_device_count(k) if devices is None else devices
    if n <= 1:
        return 1
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {ONE_XLA_THREAD}".strip()
    _set_host_devices(n)
    return n


def use_data_devices(shards: int) -> int:
    """Splits this process's CPU into host devices for `train`'s batch shards
    (`config.data_shards`); returns how many: the largest divisor of `shards` that is at most the
    cores (capped by $JAXTRADER_SEED_DEVICES, as for seeds).

    Unlike `use_seed_devices`, XLA keeps its thread pool: the shards' gradients run at once on
    their devices and the rest of the process (validation passes aside, which are sharded too)
    still gets both cores. Measured on one LSTM step (Intel Xeon, batch 64): 1 device 87-91 ms,
    2 devices 65-70 ms, with or without one XLA thread per device. Must run before JAX creates its
    CPU backend; a no-op for n = 1.
    """
    n = seed_device_count(shards)
    if n > 1:
        _set_host_devices(n)
    return n


def _set_host_devices(n: int) -> None:
    if "jax" in sys.modules:  # JAX reads the variable at import; later, only its config counts
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:
            # The backend already runs (a command invoked inside a process that used JAX): the
            # devices it has are kept, seeds and shards share them with the same numbers, and
            # child processes do not inherit a device count this process never had.
            return
    os.environ["JAX_NUM_CPU_DEVICES"] = str(n)


_reuse_in_train_loops = False  # set by prepare_seed_training


def tune_malloc_for_seed_commands() -> None:
    """glibc heap settings of `walkforward` and `study`, made before any thread starts (the CLI
    group does it): one arena and the 1 GiB trim threshold, mmap left on. `prepare_seed_training`
    then turns mmap off inside train loops when the seeds are split over devices.

    Why not the full `tune_malloc`: on the BTC 1h walk-forward (LSTM, K = 4 on 2 devices) it ran
    9 min 22 s but peaked at 2.63 GB RSS, the heap keeping what dataset building, compiling,
    predicting and saving freed between folds. Why one arena: XLA's device threads otherwise
    land in a second arena, whose heaps (64 MB at most) cannot hold a step's buffers (~190 MB),
    so glibc maps and unmaps them on every step even with mmap off (145 million page faults, 258
    s of system time in that run).
    """
    libc = _glibc()
    if libc is None or not malloc_tuning_enabled():
        tune_malloc(reuse_freed=False)
        return
    libc.mallopt(_M_ARENA_MAX, ARENAS)
    libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_BYTES)


# glibc (2.35 on) asks the kernel for transparent huge pages for what malloc maps
# (madvise(MADV_HUGEPAGE)); it reads the tunable only at process start.
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
# Once a train loop maps its big blocks (`LoopHeap`), blocks this large are mapped fresh at every
# step: a K = 4 step's temporary block is ~180 MB per device, everything else it allocates is far
# smaller.
LOOP_MMAP_THRESHOLD = 64 << 20
# Without huge pages a train loop keeps its step blocks in the heap until its resident size
# passes this, then maps them fresh (on 4 KB pages a mapped step is 1.5-1.6x slower): the heap can
# grow by ~0.55 GB between two checks, so 1.3 GB keeps the peak under the 2 GB limit. With huge
# pages the blocks are mapped from the loop's start (`loop_rss_budget`).
LOOP_RSS_BUDGET_BYTES = 1_300_000_000
# JAXTRADER_LOOP_RSS_MB=N overrides the default: N MB (0: map from the start; a large N keeps the
# blocks in the heap, faster and unbounded).
LOOP_RSS_BUDGET_VAR = "JAXTRADER_LOOP_RSS_MB"


def transparent_huge_pages() -> bool:
    """Whether the kernel backs memory with huge pages where a process asks for them (THP mode
    `always` or `madvise`)."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def glibc_version() -> tuple[int, int] | None:
    """The C library's glibc version, None when it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def _huge_pages_offered() -> bool:
    """Whether glibc (2.35 on) and the kernel (THP) would honour `HUGE_PAGE_TUNABLE`."""
    version = glibc_version()
    return version is not None and version >= (2, 35) and transparent_huge_pages()


def huge_pages_requested() -> bool:
    """Whether this process started with glibc's huge-page tunable, and glibc and the kernel
    honour it."""
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return HUGE_PAGE_TUNABLE in tunables and _huge_pages_offered()


def huge_page_environment(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to restart `walkforward` or `study` with so that glibc asks for huge pages
    (`HUGE_PAGE_TUNABLE`); None when there is nothing to change: the tunable (or another
    hugetlb value) is already set, the tuning is opted out of, THP is off, or glibc is older
    than 2.35 or absent.

    Why: a train loop that passes its memory budget maps each step's ~180 MB temporary block
    fresh (`LoopHeap`). On 4 KB pages that faults ~95,000 times per step (1.5-1.6x slower
    steps); on 2 MB pages the BTC and ETH 1h walk-forwards took 11-28% more wall time than with
    the blocks kept in the heap, the kernel zeroing each fresh block (docs/decisions.md)."""
    env = dict(os.environ if environ is None else environ)
    tunables = env.get("GLIBC_TUNABLES", "")
    if (
        "glibc.malloc.hugetlb" in tunables
        or env.get(OPT_OUT_VAR, "1") == "0"
        or not _huge_pages_offered()
    ):
        return None
    env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGE_PAGE_TUNABLE) if t)
    return env


# Inside a train loop the resident heap may grow this far past its settled size before it is
# trimmed (`LoopHeap`). The heap's free pages creep up ~1.2 MiB/s in the LSTM's loops, so this sets
# the ceiling: with 256 MiB the ETH 1h LSTM walk-forward peaked at 1.31 GB, with 128 MiB at 1.19 GB
# (31 trims instead of 5, the same wall time; one run each, docs/decisions.md).
TRIM_AFTER_GROWTH_BYTES = 128 << 20


def resident_bytes() -> int:
    """This process's resident set size in bytes (Linux /proc), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def loop_rss_budget() -> int:
    """The resident size past which a train loop maps its big blocks fresh (`LoopHeap`):
    $JAXTRADER_LOOP_RSS_MB megabytes if set, else 0 (from the start) when the process has huge
    pages, else `LOOP_RSS_BUDGET_BYTES`.

    Why 0 with huge pages: on the BTC and ETH 1h walk-forwards (K = 4, 2 devices) blocks mapped
    throughout peaked at 1.25-1.41 GB, against 1.25-2.12 GB with them in the heap, for 11-28%
    more wall time; with a 1.3 GB budget the ETH LSTM passed it in every fold anyway and peaked
    higher than mapped throughout (docs/decisions.md)."""
    raw = os.environ.get(LOOP_RSS_BUDGET_VAR, "").strip()
    if not raw:
        return 0 if huge_pages_requested() else LOOP_RSS_BUDGET_BYTES
    try:
        mb = int(raw)
        if mb < 0:
            raise ValueError
    except ValueError:
        from jaxtrader.errors import ConfigError

        raise ConfigError(
            f"{LOOP_RSS_BUDGET_VAR}={raw!r} is not a whole number of megabytes >= 0; e.g. 1300, "
            "or 0 to map the step blocks from the start, or unset it"
        ) from None
    return mb * 1_000_000


@dataclass
class LoopHeap:
    """The heap inside one train loop (`reuse_in_train_loop`). Call `after_step()` once per step,
    after the previous step's results arrived. Two jobs:

    - Bound the peak: the step blocks stay in the heap (no page faults) until the resident size
      passes `budget`; from then on the loop maps blocks of `LOOP_MMAP_THRESHOLD` and more fresh
      at every step (on huge pages when the process started with them, `huge_page_environment`)
      and returns the heap's free pages. Why: XLA frees and re-allocates each step's temporary
      block (~180 MB per device), and small host allocations can land in a freed block, so the
      next one no longer fits and the heap grows by a block around it, 2-3 blocks between two
      checks at worst (peaks 1.25-2.12 GB on the BTC and ETH 1h walk-forwards). Mapped blocks
      never sit in the heap, but each step's fresh pages cost kernel time (zeroing ~360 MB a
      step: 11-28% longer BTC and ETH 1h walk-forwards mapped throughout, docs/decisions.md).
    - Keep it small meanwhile: return the heap's free pages once the resident size has grown
      `growth` bytes past its settled size, the size one step after the last return (or the
      loop's start). Why settled: a trim also returns the step blocks' pages, which the next step
      faults in again (~380 MB on 2 devices); measured from right after the trim, that regrowth
      alone triggered a trim at nearly every step (ETH 1h LSTM: 117 M page faults)."""

    active: bool
    budget: int | None = None  # None: never map the big blocks
    huge_pages: bool = False  # the process asks for huge pages for what malloc maps
    growth: int = TRIM_AFTER_GROWTH_BYTES
    floor: int | None = None  # the settled size; None: settle at the next step
    trims: int = 0  # returns after growth or past the budget
    mapped: bool = False  # big blocks are mapped fresh at every step
    _libc: Any = None

    def map_big_blocks(self) -> None:
        if self._libc is not None and not self.mapped:
            self._libc.mallopt(_M_MMAP_THRESHOLD, LOOP_MMAP_THRESHOLD)
            self._libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
            self.mapped = True

    def after_step(self) -> None:
        if not self.active:
            return
        rss = resident_bytes()
        if not self.mapped and self.budget is not None and rss > self.budget:
            self.map_big_blocks()
            self._trim()
        elif self.floor is None:
            self.floor = rss
        elif rss > self.floor + self.growth:
            self._trim()

    def _trim(self) -> None:
        release_free_memory()
        self.trims += 1
        self.floor = None


@contextlib.contextmanager
def reuse_in_train_loop() -> Iterator[LoopHeap]:
    """Inside: freed blocks stay in the heap for the next step (mmap off), trimmed on growth,
    until the resident size passes `loop_rss_budget()`; then big blocks are mapped fresh at every
    step (`LoopHeap`). On entry the heap's free pages are returned: entered once the first step's
    call returns (its compile is done), that gives back the compiler's freed memory and the last
    fold's evaluation's before the second step is dispatched, not in a race with that step's
    blocks (returned after its dispatch instead, one cold ETH 1h LSTM walk-forward sampled
    1,215 MiB there for a second, 982 MiB after; docs/decisions.md). On exit: glibc's mmap
    settings back, the last step's blocks awaited (`await_freed_blocks`: XLA frees them a few ms
    after the result arrives) and the heap's free pages returned. On tcmalloc only the returns
    happen (on entry, on growth, on exit): it reuses freed blocks without glibc's settings. A
    no-op (an inactive `LoopHeap`) unless `prepare_seed_training` split the seeds over devices
    (every other command keeps mmap off throughout)."""
    if not _reuse_in_train_loops:
        yield LoopHeap(active=False)
        return
    libc = _glibc() if malloc_tuning_enabled() else None  # None on tcmalloc
    budget = loop_rss_budget() if libc is not None else None
    heap = LoopHeap(active=True, budget=budget, huge_pages=huge_pages_requested(), _libc=libc)
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        if budget == 0:
            heap.map_big_blocks()
    release_free_memory()
    try:
        yield heap
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD)
            libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        await_freed_blocks()
        release_free_memory()


def prepare_seed_training(k: int, devices: int | None = None) -> int:
    """What `walkforward` and `study` (local executor) do before JAX starts: K seeds split over
    host devices (`use_seed_devices`) and, when they are, the heap managed inside train loops
    (`reuse_in_train_loop`: glibc's settings and returns, or on tcmalloc the returns only).
    Returns the device count.

    With one device the loops keep mmap: K = 4 stacked on one device with the heap reused
    measured 1.5-2.1 GB peak RSS in `bench_train` (README, Performance)."""
    global _reuse_in_train_loops
    loop_rss_budget()  # a malformed override fails here, before any work
    malloc_choice()
    n = use_seed_devices(k, devices)
    _reuse_in_train_loops = n > 1 and (malloc_tuning_enabled() or tcmalloc_active())
    return n


def allocated_bytes() -> int | None:
    """Bytes the program holds from malloc now: tcmalloc's count where it allocates, else glibc's
    (`mallinfo2`: in the heap plus mapped); None where neither answers."""
    reader = _allocated_reader()
    return None if reader is None else reader()


@functools.cache
def _allocated_reader() -> Callable[[], int] | None:
    # Looked up once: `await_freed_blocks` polls every millisecond.
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if tcmalloc_active():
        prop = getattr(libc, "MallocExtension_GetNumericProperty", None)
        if prop is None:
            return None
        prop.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
        value = ctypes.c_size_t(0)

        def tcmalloc_count() -> int:
            prop(b"generic.current_allocated_bytes", ctypes.byref(value))
            return int(value.value)

        return tcmalloc_count
    mallinfo2 = getattr(libc, "mallinfo2", None)  # glibc >= 2.33
    if mallinfo2 is None:
        return None

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]  # fmt: skip

    mallinfo2.restype = _Mallinfo2

    def glibc_count() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return glibc_count


# `await_freed_blocks`: a fall of this many bytes counts as a block freed.
_FREED_BLOCK_BYTES = 1 << 20


def await_freed_blocks(
    read: Callable[[], int | None] = allocated_bytes,
    quiet_s: float = 0.02,
    limit_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Waits until the allocated bytes (`read()`) have not fallen by a MiB or more for `quiet_s`,
    `limit_s` at most; returns the seconds waited (0 where nothing can be read).

    Why: a train step's result arrives before XLA's worker thread frees the step's temporary
    block. Measured (K = 4 Transformer, 2 devices, tcmalloc): in 10 of 20 tries a ~180 MiB block
    was still allocated as the last step's loss arrived, freed 0.7-9 ms later. A return of the
    free pages made in that window misses the block, which then stays in the heap as free pages,
    while the validation pass that follows takes other, already returned pages back from the OS
    (tcmalloc hands out the best-fitting free span, returned or not): the walk-forwards' +95-190
    MiB at a fold's end, over the 1.2 GB goal (docs/decisions.md)."""
    start = clock()
    last = read()
    if last is None:
        return 0.0
    last_fall = start
    while True:
        now = clock()
        if now - last_fall >= quiet_s or now - start >= limit_s:
            return now - start
        sleep(0.001)
        value = read()
        if value is None:
            return clock() - start
        if value <= last - _FREED_BLOCK_BYTES:
            last_fall = clock()
        last = value


def release_free_memory() -> None:
    """Returns the heap's free pages to the OS: tcmalloc's `ReleaseFreeMemory` when it allocates,
    else glibc's `malloc_trim`; a no-op elsewhere."""
    if tcmalloc_active():
        import ctypes

        release = getattr(ctypes.CDLL(None), "MallocExtension_ReleaseFreeMemory", None)
        if release is not None:
            release()
            return
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def freeze_long_lived_objects() -> None:
    """Collects once, then keeps every object alive now out of later collections.

    A full collection over the long-lived objects JAX, Flax and the model leave took ~315 ms in a
    trade process (measured), most of the 500 ms model budget: a loaded process calls this once.
    """
    gc.collect()
    gc.freeze()
