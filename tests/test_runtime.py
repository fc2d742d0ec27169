"""Process-level helpers: the compilation cache directory, and the glibc heap controls: safe to
call, and `tune_malloc` makes a freed large buffer reusable without faulting its pages in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
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

    # Fold tasks stack K seeds: only the arena cap, as `walkforward` and `study` in this process.
    env = worker_env({})
    assert runtime.malloc_env(reuse_freed=False) == {"MALLOC_ARENA_MAX": "2"}
    assert env["MALLOC_ARENA_MAX"] == "2" and "MALLOC_MMAP_MAX_" not in env
    # The env form of the full tuning must mean what tune_malloc does: glibc reads it at start.
    out = subprocess.run(
        [sys.executable, "-c", _REUSE, "default"],
        capture_output=True,
        text=True,
        check=True,
        env={**runtime.malloc_env(), "PATH": "/usr/bin:/bin"},
    )
    assert int(json.loads(out.stdout)["faults"]) < PAGES // 10
