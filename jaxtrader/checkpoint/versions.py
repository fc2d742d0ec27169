"""Where checkpoint versions live and which one a request means.

Layout: `<root>/<SYMBOL-SLUG>/<arch>/v<N>/` is one training run (a *version*, N increases per
run); the version root holds `manifest.json` and `metrics.jsonl` beside Orbax's step folders. The
root is `checkpoint_root(ckpt_dir, cfg)`: `--ckpt-dir` when given, else `train.ckpt_dir`.

Version selection (`resolve_version`): `latest` is the highest N (across architectures: the newest
`created_at`), `best` is the version whose best validation loss is lowest, an integer is that N.
Only complete versions (with a manifest) are candidates for `best`/`latest`, and `best` skips
partial runs (stopped by Ctrl-C or --max-minutes, manifest `stopped_reason` in `PARTIAL_REASONS`)
unless `include_partial`: a run cut short after a few steps can have a lower validation loss by
chance and must not silently replace a finished one. Losses of different markets are not
comparable, so `best`/`latest` without a symbol refuse when several symbols have versions (unless
a `fallback_symbol`, e.g. the symbol of the data given, picks one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtrader.checkpoint.manifest import MANIFEST_FILE, RETRAIN_HINT, Manifest
from jaxtrader.errors import CheckpointError

if TYPE_CHECKING:
    from jaxtrader.config import AppConfig

_VERSION_RE = re.compile(r"^v(\d+)$")
# Stop reasons of a run that did not train to its end (early stopping and max_epochs did).
PARTIAL_REASONS = frozenset({"interrupted", "time_limit"})


def checkpoint_root(ckpt_dir: str | Path | None, cfg: AppConfig | None = None) -> Path:
    """The checkpoint root, decided here only: `ckpt_dir` (--ckpt-dir) when given, else the
    config's `train.ckpt_dir` (the default config's, "ckpt", without `cfg`)."""
    if ckpt_dir:
        return Path(ckpt_dir)
    if cfg is None:
        from jaxtrader.config import AppConfig

        cfg = AppConfig()
    return Path(cfg.train.ckpt_dir)


@dataclass(frozen=True)
class VersionInfo:
    """One row of `jaxtrader models list`."""

    symbol: str
    arch: str
    version: int
    path: str
    complete: bool
    created_at: str | None
    data_start: str | None
    data_end: str | None
    best_val_loss: float | None
    val_accuracy: float | None
    val_majority_rate: float | None
    epochs: int | None
    steps: int | None
    best_epoch: int | None
    stopped_reason: str | None
    size_bytes: int

    @property
    def partial(self) -> bool:
        return self.stopped_reason in PARTIAL_REASONS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def arch_dir(ckpt_dir: str | Path, symbol: str, arch: str) -> Path:
    """`<ckpt_dir>/<SYMBOL-SLUG>/<arch>`."""
    from jaxtrader.data import symbol_slug

    return Path(ckpt_dir) / symbol_slug(symbol) / arch


def version_numbers(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        m = _VERSION_RE.match(child.name)
        if m and child.is_dir():
            found.append(int(m.group(1)))
    return sorted(found)


def new_version_dir(ckpt_dir: str | Path, symbol: str, arch: str) -> tuple[int, Path]:
    """Creates and returns the next `v<N>` directory (N = highest existing + 1, from 1).

    `mkdir(exist_ok=False)` makes two concurrent runs take different numbers.
    """
    root = arch_dir(ckpt_dir, symbol, arch)
    root.mkdir(parents=True, exist_ok=True)
    n = (version_numbers(root) or [0])[-1] + 1
    while True:
        path = root / f"v{n}"
        try:
            path.mkdir()
            return n, path
        except FileExistsError:
            n += 1


def dir_size(path: str | Path) -> int:
    """Bytes of all files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed by a concurrent Orbax cleanup
                total += (Path(root) / name).stat().st_size
    return total


def write_manifest(version_dir: str | Path, manifest: Manifest) -> Path:
    """Writes `manifest.json` atomically (temporary file in the same directory, then rename),
    with the mode the umask gives any new file (0644 under umask 022), like the files beside it."""
    directory = Path(version_dir)
    target = directory / MANIFEST_FILE
    # Not tempfile.mkstemp: it creates 0600 whatever the umask, and the rename keeps that mode,
    # so other users could not read a shared checkpoint. O_EXCL keeps mkstemp's safety, and
    # the kernel applies the umask (reading it from Python means setting it, for all threads).
    tmp = directory / f".manifest-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest.to_dict(), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def record_policy(version_dir: str | Path, policy: dict[str, Any] | None) -> Path:
    """Stores a chosen decision policy in the version's manifest (atomically; the rest of the
    manifest is unchanged), where `trade` reads it. None removes it, so the manifest is the one
    a run that chose no policy writes (trade then applies the plain rule)."""
    manifest = read_manifest(version_dir)
    return write_manifest(version_dir, dataclasses.replace(manifest, policy=policy))


def missing_manifest(directory: Path) -> str:
    """Why a directory has no manifest, with the likeliest fix."""
    versions = version_numbers(directory)
    if versions:
        return (
            f"{directory} is not a version directory; pass one of its versions, e.g. "
            f"{directory / f'v{versions[-1]}'}"
        )
    if (directory.parent / MANIFEST_FILE).is_file():
        return f"{directory} is a step inside a version; pass the version {directory.parent}"
    if example := _checkpoint_below(directory):
        run = example.name.startswith("fold_") and example.parent == directory
        what = "a walk-forward run" if run else "a folder of checkpoints"
        return f"{directory} is {what}, not a checkpoint version; pass one below it, e.g. {example}"
    return (
        f"{directory / MANIFEST_FILE} is missing: the training run did not finish or the "
        f"checkpoint was damaged; {RETRAIN_HINT}"
    )


def _checkpoint_below(directory: Path) -> Path | None:
    """The last checkpoint (a folder with a manifest) one to four levels below `directory`: a
    walk-forward run's folds, a study's cells' folds, a checkpoint root's or symbol's versions."""
    for depth in range(1, 5):
        found = sorted(
            (m.parent for m in directory.glob("/".join(["*"] * depth) + "/" + MANIFEST_FILE)),
            key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(d))],
        )
        if found:
            return found[-1]
    return None


def not_a_version_dir(version_dir: Path) -> str:
    """Why `version_dir` cannot be a checkpoint version: missing, or a file."""
    what = "is a file, not a version directory" if version_dir.exists() else "does not exist"
    return f"checkpoint {version_dir} {what}; {RETRAIN_HINT}"


def read_manifest(version_dir: str | Path) -> Manifest:
    """Reads and checks `manifest.json`; CheckpointError naming the path when missing or corrupt."""
    path = Path(version_dir) / MANIFEST_FILE
    if not Path(version_dir).is_dir():
        raise CheckpointError(not_a_version_dir(Path(version_dir)))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(missing_manifest(Path(version_dir))) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); {RETRAIN_HINT}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is corrupt (not a JSON object); {RETRAIN_HINT}")
    return Manifest.from_dict(raw, where=path)


def _best_val_loss(manifest: Manifest) -> float:
    value = manifest.metrics.get("val_loss")
    return float(value) if isinstance(value, int | float) else float("inf")


def is_partial(manifest: Manifest) -> bool:
    """True for a run stopped before its end (Ctrl-C / SIGTERM, or the --max-minutes limit)."""
    return manifest.metrics.get("stopped_reason") in PARTIAL_REASONS


def _arch_dirs(ckpt_dir: Path, symbol: str | None, arch: str | None) -> list[Path]:
    if symbol is not None:
        from jaxtrader.data import symbol_slug

        symbol_dirs = [ckpt_dir / symbol_slug(symbol)]
    else:
        symbol_dirs = (
            sorted(p for p in ckpt_dir.iterdir() if p.is_dir()) if ckpt_dir.is_dir() else []
        )
    dirs = []
    for sdir in symbol_dirs:
        if not sdir.is_dir():
            continue
        for adir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            if arch is None or adir.name == arch:
                dirs.append(adir)
    return dirs


def resolve_version(
    ckpt_dir: str | Path,
    symbol: str | None = None,
    arch: str | None = None,
    version: str | int = "best",
    *,
    include_partial: bool = False,
    fallback_symbol: str | None = None,
) -> Path:
    """The version directory for `best`, `latest` or a number (see the module docstring).

    `symbol=None` / `arch=None` widen the search to every symbol / architecture under `ckpt_dir`
    (so `version="best"` with `arch=None` picks the best model of any architecture). With
    `symbol=None` and complete versions of several symbols, `fallback_symbol` (the symbol of the
    data the caller was given) picks one; without it CheckpointError lists the symbols.
    `include_partial` lets `best` consider interrupted / time-limited runs.
    """
    root = Path(ckpt_dir)
    what = " ".join(x for x in (symbol, arch) if x) or "any model"
    require_folder(root)
    if (inner := inner_folder_problem(root)) is not None:
        raise CheckpointError(inner)
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, int):
        candidates = [d / f"v{version}" for d in _arch_dirs(root, symbol, arch)]
        existing = [p for p in candidates if p.is_dir()]
        if len(existing) == 1:
            return existing[0]
        if not existing:
            raise CheckpointError(
                f"no version v{version} for {what} under {root}{_held_note(root, symbol)}; list "
                "them with `jaxtrader models list`"
            )
        raise CheckpointError(
            f"v{version} exists for several models under {root} "
            f"({', '.join(str(p) for p in existing)}); pass --symbol and --arch"
        )
    if version not in ("best", "latest"):
        raise CheckpointError(f"version must be best, latest or a number, got {version!r}")
    complete: list[tuple[Path, Manifest]] = []
    for adir in _arch_dirs(root, symbol, arch):
        for n in version_numbers(adir):
            vdir = adir / f"v{n}"
            if (vdir / MANIFEST_FILE).is_file():
                try:
                    complete.append((vdir, read_manifest(vdir)))
                except CheckpointError:
                    continue  # a damaged version is never picked implicitly
    if not complete:
        raise CheckpointError(
            f"no complete checkpoint for {what} under {root}{_held_note(root, symbol)}; train "
            "one with `jaxtrader train`"
        )
    if symbol is None:
        complete = _one_symbol(complete, root, fallback_symbol)
    if version == "latest":
        if len({vdir.parent for vdir, _ in complete}) == 1:
            return max(complete, key=lambda vm: vm[1].version)[0]
        return max(complete, key=lambda vm: (vm[1].created_at, vm[1].version))[0]
    finished = complete if include_partial else [vm for vm in complete if not is_partial(vm[1])]
    if not finished:
        partial = ", ".join(f"{vdir} ({m.metrics.get('stopped_reason')})" for vdir, m in complete)
        raise CheckpointError(
            f"every version of {what} under {root} is a partial run ({partial}); pick one with "
            "--version N, pass --include-partial, or train to the end with `jaxtrader train`"
        )
    return min(finished, key=lambda vm: (_best_val_loss(vm[1]), -vm[1].version))[0]


def _one_symbol(
    complete: list[tuple[Path, Manifest]], root: Path, fallback_symbol: str | None
) -> list[tuple[Path, Manifest]]:
    """The candidates of the only symbol present, or of `fallback_symbol`; else CheckpointError."""
    from jaxtrader.data import symbol_slug

    by_slug: dict[str, list[tuple[Path, Manifest]]] = {}
    for vdir, m in complete:
        by_slug.setdefault(vdir.parent.parent.name, []).append((vdir, m))
    if len(by_slug) == 1:
        return complete
    names = sorted(str(group[0][1].data.get("symbol") or slug) for slug, group in by_slug.items())
    if fallback_symbol is not None and symbol_slug(fallback_symbol) in by_slug:
        return by_slug[symbol_slug(fallback_symbol)]
    given = f" (none for {fallback_symbol}, the data's symbol)" if fallback_symbol else ""
    raise CheckpointError(
        f"{root} holds models of several symbols: {', '.join(names)}{given}; validation losses "
        "of different markets are not comparable, pass --symbol"
    )


def inner_folder_problem(root: Path) -> str | None:
    """Why `root`, given as the checkpoint root, is a folder inside one (a version, one model's
    versions, one market's models), with what to pass instead; None when it is not. Such a
    --ckpt-dir was "no complete checkpoint ...; train one", beside the checkpoint it holds."""
    if (root / MANIFEST_FILE).is_file():
        return (
            f"--ckpt-dir {root} is a checkpoint version, not a checkpoint root; pass it as "
            f"--checkpoint {root}, or --ckpt-dir {root.parent.parent.parent}"
        )
    if version_numbers(root):
        return (
            f"--ckpt-dir {root} holds one model's versions, not a checkpoint root; pass "
            f"--ckpt-dir {root.parent.parent}, or one version as --checkpoint "
            f"{root / f'v{version_numbers(root)[-1]}'}"
        )
    if any(version_numbers(child) for child in root.iterdir() if child.is_dir()):
        return (
            f"--ckpt-dir {root} holds one market's models, not a checkpoint root; pass "
            f"--ckpt-dir {root.parent} (and --symbol to pick the market)"
        )
    return None


def require_folder(root: Path) -> None:
    """Refuses a checkpoint root that is not a folder (a mistyped --ckpt-dir, or nothing trained)."""
    if not root.is_dir():
        found = "is a file, not a folder" if root.exists() else "not found"
        raise CheckpointError(
            f"checkpoint folder {root} {found}; pass --ckpt-dir with the folder `jaxtrader "
            "train` wrote to (default: ckpt), or train a model first with `jaxtrader train`"
        )


def held_symbols(ckpt_dir: str | Path) -> list[str]:
    """The symbols with at least one complete version under `ckpt_dir`, as their manifests spell
    them."""
    return sorted({row.symbol for row in list_versions(ckpt_dir) if row.complete})


def _held_note(root: Path, symbol: str | None) -> str:
    """'; it holds models of BTC/USDT, ETH/USDT' when `symbol` names none of them: symbols match
    exactly, so `btc/usdt` finds nothing and the user must see what would."""
    if symbol is None:
        return ""
    held = held_symbols(root)
    if not held or symbol in held:
        return ""
    return f"; it holds models of {', '.join(held)} (--symbol matches exactly)"


def list_versions(ckpt_dir: str | Path, symbol: str | None = None) -> list[VersionInfo]:
    """Every version under `ckpt_dir` (optionally one symbol), complete or not, oldest first."""
    rows = []
    for adir in _arch_dirs(Path(ckpt_dir), symbol, None):
        for n in version_numbers(adir):
            vdir = adir / f"v{n}"
            manifest: Manifest | None
            try:
                manifest = read_manifest(vdir)
            except CheckpointError:
                manifest = None
            m = manifest.metrics if manifest else {}
            rows.append(
                VersionInfo(
                    symbol=manifest.data.get("symbol", adir.parent.name)
                    if manifest
                    else adir.parent.name,
                    arch=adir.name,
                    version=n,
                    path=str(vdir),
                    complete=manifest is not None,
                    created_at=manifest.created_at if manifest else None,
                    data_start=manifest.data.get("start") if manifest else None,
                    data_end=manifest.data.get("end") if manifest else None,
                    best_val_loss=m.get("val_loss"),
                    val_accuracy=m.get("val_accuracy"),
                    val_majority_rate=m.get("val_majority_rate"),
                    epochs=m.get("epochs"),
                    steps=m.get("steps"),
                    best_epoch=m.get("best_epoch"),
                    stopped_reason=m.get("stopped_reason"),
                    size_bytes=dir_size(vdir),
                )
            )
    return rows
