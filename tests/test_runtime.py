"""Process-level helpers: the compilation cache directory, and the glibc heap controls are safe."""

from __future__ import annotations

from pathlib import Path

import jax

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
    # No-ops off glibc; on glibc they only cap arenas and trim free pages.
    runtime.limit_malloc_arenas()
    runtime.release_free_memory()
    runtime.freeze_long_lived_objects()
