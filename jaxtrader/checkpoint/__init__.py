"""Versioned Orbax checkpoints with a manifest: the only place Orbax options and layout live.

- `manifest`: the `Manifest` of a version (everything evaluate and trade need to rebuild exactly
  what training saw), built by `build_manifest`; `check_features` and `check_data` compare it with
  the running code and the given candles.
- `versions`: the layout `<root>/<SYMBOL-SLUG>/<arch>/v<N>/` with `manifest.json` and
  `metrics.jsonl`, the checkpoint root (`checkpoint_root`, decided there only), new versions,
  manifest files, `resolve_version` (best / latest / N) and `list_versions`.
- `orbax_io`: `make_manager` (the one Orbax options point), `save_step`, `restore_params`,
  `restore_state`.

The names below are the package's API: import them from `jaxtrader.checkpoint`.
"""

from jaxtrader.checkpoint.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    METRICS_FILE,
    DataCheck,
    Manifest,
    build_manifest,
    check_data,
    check_features,
    package_versions,
)
from jaxtrader.checkpoint.orbax_io import make_manager, restore_params, restore_state, save_step
from jaxtrader.checkpoint.versions import (
    VersionInfo,
    arch_dir,
    checkpoint_root,
    dir_size,
    held_symbols,
    inner_folder_problem,
    list_versions,
    new_version_dir,
    read_manifest,
    record_policy,
    require_folder,
    resolve_version,
    write_manifest,
)
from jaxtrader.errors import CheckpointError

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA",
    "METRICS_FILE",
    "CheckpointError",
    "DataCheck",
    "Manifest",
    "VersionInfo",
    "arch_dir",
    "build_manifest",
    "check_data",
    "check_features",
    "checkpoint_root",
    "dir_size",
    "held_symbols",
    "inner_folder_problem",
    "list_versions",
    "make_manager",
    "new_version_dir",
    "package_versions",
    "read_manifest",
    "record_policy",
    "require_folder",
    "resolve_version",
    "restore_params",
    "restore_state",
    "save_step",
    "write_manifest",
]
