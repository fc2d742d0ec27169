"""`jaxtrader train` (one versioned checkpoint per run) and `jaxtrader models list`: option
parsing and printing; the run itself is `training_run.run_training`. Heavy libraries are imported
inside the commands so `--help` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from jaxtrader.cli.common import (
    INTERRUPTED_EXIT,
    CliState,
    HintGlobalOptions,
    HintGlobalOptionsGroup,
    batch_window_options,
    check_arch,
    data_options,
    data_overrides,
    ranged,
    train_knob_options,
    train_knob_overrides,
)
from jaxtrader.logs import notice
from jaxtrader.models.archs import ARCH_NAMES

if TYPE_CHECKING:
    from jaxtrader.checkpoint import VersionInfo


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _summary_lines(summary: dict[str, Any]) -> str:
    vs = summary["val_accuracy"] - summary["val_majority_rate"]
    rows = [
        ("checkpoint", summary["path"]),
        ("model", f"{summary['arch']} v{summary['version']} on {summary['symbol']}"),
        (
            "epochs",
            f"{summary['epochs']} (best {summary['best_epoch']}, {summary['stopped_reason']})",
        ),
        ("best val loss", f"{summary['val_loss']:.4f}"),
        (
            "val accuracy",
            f"{summary['val_accuracy']:.2%} vs majority {summary['val_majority_rate']:.2%} "
            f"({vs:+.2%})",
        ),
        (
            "train time",
            f"{summary['train_seconds']:.1f} s (total {summary['total_seconds']:.1f} s)",
        ),
        ("checkpoint size", _mb(summary["size_bytes"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _print_summary(state: CliState, summary: dict[str, Any]) -> None:
    import json

    if state.log_format == "json":
        click.echo(json.dumps(summary))
    else:
        click.echo(_summary_lines(summary))


@click.command("train", cls=HintGlobalOptions)
@click.option(
    "--arch",
    type=str,
    default=None,
    metavar="ARCH",
    help=f"Model architecture from the registry ({', '.join(ARCH_NAMES)}). Default: model.arch.",
)
@data_options
@click.option("--epochs", type=ranged("train.epochs"), default=None, help="Maximum epochs.")
@batch_window_options
@click.option("--seed", type=int, default=None, help="PRNG seed (init, shuffling, dropout).")
@click.option(
    "--data-shards",
    type=ranged("train.data_shards"),
    default=None,
    help="Split each batch into N shards, each with its own dropout key, on a core each where "
    "there are enough; the trained numbers depend on N, not on the cores (train.data_shards). "
    "Default: the arch's (lstm 2, transformer 1).",
)
@click.option("--ckpt-dir", type=str, default=None, help="Checkpoint root. Default: ckpt.")
@click.option(
    "--max-minutes",
    type=ranged("train.max_minutes"),
    default=None,
    help="Wall-clock limit; training stops cleanly and still saves.",
)
@train_knob_options
@click.pass_obj
def train(
    state: CliState,
    arch: str | None,
    epochs: int | None,
    batch_size: int | None,
    seq_len: int | None,
    horizon: int | None,
    seed: int | None,
    data_shards: int | None,
    ckpt_dir: str | None,
    max_minutes: float | None,
    lr: float | None,
    weight_decay: float | None,
    patience: int | None,
    dropout: float | None,
    threshold: float | None,
    **data_flags: Any,
) -> None:
    """Train a model and save it as a new version under CKPT_DIR/<SYMBOL>/<ARCH>/v<N>.

    Uses the embedded synthetic market unless --data is given. Flags override --config FILE.
    Ctrl-C (or SIGTERM) stops after the current step, validates and saves the partial epoch, writes
    the manifest, prints the summary and exits with code 130; a second Ctrl-C stops at once,
    keeping only the epochs saved so far.
    """
    cfg = state.config(
        {
            "model.arch": arch,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "dataset.seq_len": seq_len,
            "dataset.horizon": horizon,
            "train.seed": seed,
            "train.data_shards": data_shards,
            "train.ckpt_dir": ckpt_dir,
            "train.max_minutes": max_minutes,
            **train_knob_overrides(lr, weight_decay, patience, dropout, threshold),
            **data_overrides(**data_flags),
        }
    )
    from jaxtrader.config import check_data_shards
    from jaxtrader.config import data_shards as resolved_shards
    from jaxtrader.runtime import malloc_choice, use_data_devices

    check_arch(cfg.model.arch)
    check_data_shards(cfg)
    malloc_choice()  # a wrong $JAXTRADER_MALLOC (main's restart skipped it) is one line here
    use_data_devices(resolved_shards(cfg))  # before JAX starts: the batch shards' host devices
    from jaxtrader.training_run import TrainingInterrupted, run_training

    try:
        summary = run_training(cfg).summary
    except TrainingInterrupted as e:
        _print_summary(state, e.summary)
        s = e.summary
        partial = " (the last one partial)" if s["last_epoch_partial"] else ""
        notice(
            "interrupted",
            f"interrupted: saved {s['epochs']} epoch(s){partial}, {s['steps']} steps, to "
            f"{s['path']} (best epoch {s['best_epoch']})",
        )
        raise SystemExit(INTERRUPTED_EXIT) from None
    except KeyboardInterrupt:
        notice("interrupted", "interrupted: no complete version was saved")
        raise SystemExit(INTERRUPTED_EXIT) from None
    _print_summary(state, summary)


@click.group("models", cls=HintGlobalOptionsGroup)
def models_group() -> None:
    """List trained model versions."""


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _format_versions(rows: list[VersionInfo]) -> str:
    header = (
        "symbol",
        "arch",
        "ver",
        "created",
        "data",
        "epochs",
        "steps",
        "best ep",
        "stopped",
        "val loss",
        "val acc",
        "majority",
        "size",
    )
    table = [header]
    for r in rows:
        table.append(
            (
                r.symbol,
                r.arch,
                f"v{r.version}",
                (r.created_at or "incomplete")[:19],
                f"{(r.data_start or '?')[:10]}..{(r.data_end or '?')[:10]}" if r.complete else "-",
                _or_dash(r.epochs),
                _or_dash(r.steps),
                _or_dash(r.best_epoch),
                # A partial run is never picked by --version best (see checkpoint.versions).
                f"{r.stopped_reason} (partial)" if r.partial else _or_dash(r.stopped_reason),
                f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-",
                f"{r.val_accuracy:.2%}" if r.val_accuracy is not None else "-",
                f"{r.val_majority_rate:.2%}" if r.val_majority_rate is not None else "-",
                _mb(r.size_bytes),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


@models_group.command("list")
@click.option("--symbol", type=str, default=None, help="Only this symbol, e.g. BTC/USDT.")
@click.option(
    "--ckpt-dir", type=str, default=None, help="Checkpoint root. Default: train.ckpt_dir."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
@click.pass_obj
def models_list(state: CliState, symbol: str | None, ckpt_dir: str | None, as_json: bool) -> None:
    """Versions with their data span, epochs, steps, best epoch, why training stopped (a
    partial run, stopped by Ctrl-C or --max-minutes, is never picked by --version best), validation
    loss, accuracy vs majority rate and size."""
    import json

    from jaxtrader.checkpoint import (
        checkpoint_root,
        held_symbols,
        inner_folder_problem,
        list_versions,
        require_folder,
    )
    from jaxtrader.errors import CheckpointError

    root = checkpoint_root(ckpt_dir, state.config())
    # A folder named on purpose must exist. The default one may not yet (nothing trained), but a
    # file in its place is a mistake either way: `jaxtrader train` could not write there.
    if ckpt_dir is not None or root.exists():
        require_folder(root)
    rows = list_versions(root, symbol)
    # A folder inside a checkpoint root lists nothing: name the root, as evaluate and trade do.
    if not rows and root.is_dir() and (inner := inner_folder_problem(root)) is not None:
        raise CheckpointError(inner)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows]))
    elif not root.exists():
        click.echo(f"no model versions: {root} does not exist yet (`jaxtrader train` writes there)")
    elif not rows and symbol is not None and held_symbols(root):
        click.echo(
            f"no model versions of {symbol} under {root}; it holds models of "
            f"{', '.join(held_symbols(root))} (--symbol matches exactly)"
        )
    elif not rows:
        click.echo(f"no model versions under {root}; train one with `jaxtrader train`")
    else:
        click.echo(_format_versions(rows))


COMMANDS: list[click.Command] = [train, models_group]
