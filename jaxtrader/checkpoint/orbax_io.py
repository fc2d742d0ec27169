"""Orbax I/O of checkpoint versions: the one place Orbax options live (`make_manager`), saving an
epoch (`save_step`) and restoring params or a full train state.

Inside a version Orbax keeps one step per epoch (`<epoch>/params`, `<epoch>/opt`, `<epoch>/epoch`,
`<epoch>/metrics`). Params are saved as their own Orbax item so inference restores them without an
optimizer; the rest of the train state (step, optimizer state) is a second item, restored onto an
abstract target so optax state keeps its types. Saves are asynchronous: call
`manager.wait_until_finished()` (or `close()`) before the process exits, otherwise only a
`*.orbax-checkpoint-tmp` folder remains. Within a version the step with the lowest validation loss
(the manifest's `best_step`) is always the one restored.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtrader.checkpoint.manifest import MANIFEST_FILE, RETRAIN_HINT, plain
from jaxtrader.checkpoint.versions import missing_manifest, not_a_version_dir, read_manifest
from jaxtrader.errors import CheckpointError

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


def _rank(metrics: Mapping[str, Any]) -> Any:
    """Sort key of a step: validation loss, then epoch, so ties go to the earlier epoch as in fit.

    Orbax only sorts by this key (best = smallest with best_mode="min"), so a tuple works.
    """
    return (float(metrics["val_loss"]), int(metrics.get("epoch", 0)))


def make_manager(
    directory: str | Path, *, max_to_keep: int = 3, create: bool = True
) -> ocp.CheckpointManager:
    """The Orbax manager used by train, evaluate and trade, so options can never disagree.

    Keeps the best step by validation loss plus the latest `max_to_keep` steps (at most
    `max_to_keep + 1` steps on disk). `preservation_policy` replaces the deprecated `max_to_keep`
    option; `best_fn` is still needed so Orbax stores per-step metrics and `best_step()` works.
    """
    import orbax.checkpoint as ocp

    if max_to_keep < 1:
        raise CheckpointError(f"train.max_to_keep must be >= 1, got {max_to_keep}")
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        best_fn=_rank,
        best_mode="min",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.BestN(get_metric_fn=_rank, reverse=True, n=1),
                policies.LatestN(n=max_to_keep),
            ]
        ),
        create=create,
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_step(
    manager: ocp.CheckpointManager, step: int, state: Any, metrics: Mapping[str, Any]
) -> None:
    """Queues an asynchronous save of one epoch: params, the rest of the state, epoch metrics.

    `state` is a flax TrainState-like dataclass with `params` and `replace`. A non-finite val loss
    ranks last so it can never become the best step.
    """
    import orbax.checkpoint as ocp

    epoch_metrics = {k: plain(v) for k, v in metrics.items()}
    val_loss = epoch_metrics.get("val_loss")
    if not isinstance(val_loss, float) or not math.isfinite(val_loss):
        val_loss = float("inf")
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt=ocp.args.StandardSave(state.replace(params=None)),
            epoch=ocp.args.JsonSave(epoch_metrics),
        ),
        metrics={"val_loss": val_loss, "epoch": int(step)},
    )


def _open_steps(version_dir: Path) -> tuple[ocp.CheckpointManager, list[int]]:
    if not version_dir.is_dir():
        raise CheckpointError(not_a_version_dir(version_dir))
    manager = make_manager(version_dir, create=False)
    steps = list(manager.all_steps())
    if not steps:
        manager.close()
        raise CheckpointError(
            f"checkpoint {version_dir} has no finished step (an interrupted save leaves only a "
            f"*.orbax-checkpoint-tmp folder); {RETRAIN_HINT}"
        )
    return manager, steps


def _pick_step(version_dir: Path, steps: list[int], step: int | None) -> int:
    if step is None:
        manifest_path = version_dir / MANIFEST_FILE
        if manifest_path.is_file():
            step = read_manifest(version_dir).best_step
        else:
            raise CheckpointError(missing_manifest(version_dir))
    if step not in steps:
        raise CheckpointError(
            f"step {step} is missing from checkpoint {version_dir} (steps on disk: "
            f"{', '.join(map(str, steps))}); {RETRAIN_HINT}"
        )
    return step


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{key path as names: shape} of a params pytree (dict keys, attributes or indices)."""
    import jax

    def name(entry: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(name(e) for e in path): tuple(leaf.shape) for path, leaf in flat}


def _check_params_layout(version_dir: Path, step: int, target: Any) -> None:
    """Refuses params saved from a different model definition than the one this code builds.

    The feature hash covers the inputs; this covers the model (a renamed layer or a changed size
    would otherwise surface as an opaque Orbax structure error). Unreadable metadata is left to
    the restore, which reports damage.
    """
    import orbax.checkpoint as ocp
    from etils import epath

    item = (version_dir / str(step) / "params").absolute()
    handler = ocp.StandardCheckpointHandler()
    try:
        saved = _leaf_shapes(handler.metadata(epath.Path(item)))
    except Exception:
        return
    finally:
        handler.close()
    wanted = _leaf_shapes(target)
    if saved == wanted:
        return

    def show(keys: list[tuple[str, ...]]) -> str:
        return ", ".join("/".join(k) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")

    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    resized = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    found = [
        f"{label} {show(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("resized", resized))
        if keys
    ]
    raise CheckpointError(
        f"checkpoint {version_dir} holds parameters of a different model than this code builds "
        f"for its config ({'; '.join(found)}); retrain with `jaxtrader train` or use the "
        "jaxtrader version that trained it"
    )


def _failure_summary(e: BaseException) -> str:
    """The first line of a restore error, without TensorStore's pointer to details that the
    message cannot show (it prints a bound method's repr)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    first = first.split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {first[:200]}"


def _late_read(u: Any) -> bool:
    if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
        return False
    tb = u.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


def _drop_late_reads_of_a_failed_restore() -> None:
    """After a failed restore Orbax closes its private event loop while TensorStore still finishes
    the other reads; each late completion calls `call_soon_threadsafe` on the closed loop from a
    TensorStore thread, and Python prints that traceback, dozens of times, around the one-line
    error. Nobody awaits those reads and nothing is written: drop exactly that shape for the rest
    of the process and pass every other unraisable exception on."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_late_reads", False):
        return

    def hook(u: Any) -> None:
        if not _late_read(u):
            previous(u)

    hook.drops_late_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class _UnretrievedReadErrors(logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" records of TensorStore reads:
    after a failed restore the other reads fail too, unawaited, and asyncio logs each one (with
    TensorStore's whole spec) when it is collected, long after the one-line error."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        unretrieved = text.startswith(
            ("Task exception was never retrieved", "Future exception was never retrieved")
        )
        return not (unretrieved and ("zarr" in text or "tensorstore" in text.lower()))


def _drop_unretrieved_read_errors() -> None:
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedReadErrors) for f in log.filters):
        log.addFilter(_UnretrievedReadErrors())


def _restore(version_dir: Path, step: int | None, items: dict[str, Any]) -> tuple[Any, int]:
    import orbax.checkpoint as ocp

    # Before any read: Orbax closes its loop before it raises, the layout check's metadata read
    # can meet the damaged files first, and a failed read's task can be collected (and logged)
    # while the restore is still failing.
    _drop_late_reads_of_a_failed_restore()
    _drop_unretrieved_read_errors()
    manager, steps = _open_steps(version_dir)
    try:
        chosen = _pick_step(version_dir, steps, step)
        if "params" in items:
            _check_params_layout(version_dir, chosen, items["params"])
        try:
            restored = manager.restore(
                chosen,
                args=ocp.args.Composite(
                    **{k: ocp.args.StandardRestore(v) for k, v in items.items()}
                ),
            )
        except Exception as e:  # Orbax/tensorstore raise many types for damaged files
            raise CheckpointError(
                f"checkpoint step {version_dir / str(chosen)} is partial or corrupt "
                f"({_failure_summary(e)}); {RETRAIN_HINT}"
            ) from e
    finally:
        manager.close()
    return restored, chosen


def restore_params(
    version_dir: str | Path, abstract_params: Any, step: int | None = None
) -> tuple[Any, int]:
    """Restores only the params (no optimizer) of `step` (default: the manifest's best step).

    `abstract_params` is a pytree of `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape` of the
    model init); returns `(params, step)`.
    """
    restored, chosen = _restore(Path(version_dir), step, {"params": abstract_params})
    return restored["params"], chosen


def restore_state(version_dir: str | Path, target_state: Any, step: int | None = None) -> Any:
    """Restores a full train state (params, step, optimizer state) onto `target_state`'s structure.

    `target_state` may be concrete or abstract; only shapes/dtypes/tree structure are used, so the
    optimizer state comes back with its optax types.
    """
    import jax

    abstract = jax.eval_shape(lambda: target_state)
    restored, _ = _restore(
        Path(version_dir),
        step,
        {"params": abstract.params, "opt": abstract.replace(params=None)},
    )
    return restored["opt"].replace(params=restored["params"])
