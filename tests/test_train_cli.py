"""`jaxtrader train` and `jaxtrader models list` end to end in real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from conftest import event_scalars, extra_or_skip

TINY_TOML = """
[data]
synth_rows = 1200
synth_seed = 1

[dataset]
seq_len = 50

[model]
num_layers = 1
hidden = 8
d_model = 16
num_heads = 2
ff_dim = 32
dropout = 0.0

[train]
epochs = 500
batch_size = 32
eval_batch_size = 64
warmup_steps = 2
patience = 1
"""
# Same shapes, model and schedule (epochs) as tests/test_inference.py, so the compiled programs come
# from the persistent compilation cache; only patience (not compiled) differs for the long run.
LONG_TOML = TINY_TOML.replace("patience = 1\n", "patience = 1000\n")


def jaxtrader(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxtrader", *args]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(jaxtrader(*args), capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    (tmp_path / "long.toml").write_text(LONG_TOML)
    return tmp_path


def read_events(
    proc: subprocess.Popen[str], until: str, **fields: object
) -> list[dict[str, object]]:
    """JSON log lines from a running `--log-format json` train, up to the first `until` event
    whose fields match (in JSON mode every stderr line is one JSON object)."""
    assert proc.stderr is not None
    events = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"train exited before its {until} {fields} event"
        events.append(json.loads(line))
        if events[-1]["event"] == until and all(events[-1].get(k) == v for k, v in fields.items()):
            return events
    raise AssertionError(f"no {until} {fields} event within 300 s")


def test_train_twice_then_list(workdir: Path) -> None:
    from jaxtrader.checkpoint import METRICS_FILE, read_manifest
    from jaxtrader.data import file_sha256, synth_candles, write_candles

    # Run 1: embedded synthetic market, text output.
    first = run("--config", "tiny.toml", "train", "--arch", "lstm", cwd=workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    v1 = workdir / "ckpt" / "SYNTH-USD" / "lstm" / "v1"
    assert f"checkpoint       {Path('ckpt/SYNTH-USD/lstm/v1')}" in first.stdout
    assert "val accuracy" in first.stdout and "vs majority" in first.stdout
    m1 = read_manifest(v1)
    assert m1.version == 1 and m1.metrics["stopped_reason"] == "early_stopping"
    assert m1.metrics["epochs"] == m1.metrics["best_epoch"] + 1 == m1.best_step + 1
    assert m1.data["sha256"] is None and m1.data["source"].startswith("synthetic:")
    assert len((v1 / METRICS_FILE).read_text().splitlines()) == m1.metrics["epochs"]

    # Run 2: a candle file, flags overriding the config, JSON logs, Ctrl-C during training.
    data = write_candles(synth_candles(rows=1200, seed=5).frame, workdir / "candles.csv")
    proc = subprocess.Popen(
        jaxtrader(
            *["--log-format", "json", "--config", "long.toml", "train", "--arch", "lstm"],
            *["--data", str(data), "--symbol", "SYNTH/USD", "--seed", "3"],
        ),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Epoch 2's event means epoch 1's checkpoint was already queued.
    events = read_events(proc, "epoch", epoch=2)
    # cli.main restarted `train` on tcmalloc where it is installed (else it stays on glibc).
    from jaxtrader import runtime

    preload = (runtime.restart_environment(huge_pages=False) or dict(os.environ)).get(
        "LD_PRELOAD", ""
    )
    start = next(e for e in events if e["event"] == "train_start")
    assert start["allocator"] == ("tcmalloc" if "libtcmalloc" in preload else "glibc"), start
    # The LSTM's batches in 2 shards, on a host device each where 2 cores are there.
    fit_start = next(e for e in events if e["event"] == "fit_start")
    assert fit_start["data_shards"] == 2, fit_start
    assert fit_start["devices"] == min(2, runtime.available_cores()), fit_start
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted: saved" in stderr
    summary = json.loads(stdout)  # stdout holds exactly the machine-readable summary
    v2 = workdir / "ckpt" / "SYNTH-USD" / "lstm" / "v2"
    assert summary["path"] == str(Path("ckpt/SYNTH-USD/lstm/v2"))
    assert summary["stopped_reason"] == "interrupted" and summary["epochs"] >= 1
    m2 = read_manifest(v2)
    assert m2.version == 2 and m2.seed == 3 and m2.config["train"]["patience"] == 1000
    assert m2.data["sha256"] == file_sha256(data) and m2.data["path"] == str(data)
    assert m2.metrics["stopped_reason"] == "interrupted"
    assert m2.best_step == m2.metrics["best_epoch"] <= m2.metrics["epochs"]
    assert m2.config["train"]["data_shards"] == 2  # the arch's default, resolved and recorded
    # Trained on 2 devices, restored in this 1-device process: the checkpoint holds one device's
    # arrays (a state saved spread over the mesh failed here with Orbax's "Topology mismatch").
    from jaxtrader.data import load_candles
    from jaxtrader.inference import Predictor

    predictor = Predictor.load(checkpoint=v2)
    p_up = predictor.predict_split(predictor.rebuild_dataset(load_candles(data)), "test")
    assert len(p_up) > 50 and np.isfinite(p_up).all() and 0 < p_up.min() <= p_up.max() < 1

    # Listing needs no JAX: run it in this process.
    from click.testing import CliRunner

    from jaxtrader.cli import cli

    listed = CliRunner().invoke(
        cli, ["models", "list", "--json", "--ckpt-dir", str(workdir / "ckpt")]
    )
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["symbol"], r["arch"], r["version"], r["complete"]) for r in rows] == [
        ("SYNTH/USD", "lstm", 1, True),
        ("SYNTH/USD", "lstm", 2, True),
    ]
    assert rows[0]["best_val_loss"] == pytest.approx(m1.metrics["val_loss"])
    assert rows[1]["val_majority_rate"] == pytest.approx(m2.metrics["val_majority_rate"])
    assert all(r["size_bytes"] > 10_000 for r in rows)

    args = ["models", "list", "--symbol", "SYNTH/USD", "--ckpt-dir", str(workdir / "ckpt")]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split()[:3] == ["symbol", "arch", "ver"]
    assert [line.split()[2] for line in lines[1:]] == ["v1", "v2"]


def test_sigint_mid_epoch_saves_the_partial_epoch(workdir: Path) -> None:
    """Ctrl-C once a step is logged: stop after that step, validate, save, manifest, exit 130."""
    import chex
    import jax
    import numpy as np

    from jaxtrader.checkpoint import METRICS_FILE, read_manifest, restore_state
    from jaxtrader.config import from_dict
    from jaxtrader.data import load_market
    from jaxtrader.dataset import build_dataset
    from jaxtrader.models import build_model
    from jaxtrader.train import create_train_state, evaluate

    # 6,180 candles: 125 steps an epoch, so the signal lands well inside epoch 1; 64 epochs keep
    # the schedule's 8,000 steps of LONG_TOML, so the compiled train step comes from the cache.
    mid = LONG_TOML.replace("synth_rows = 1200", "synth_rows = 6180")
    (workdir / "mid.toml").write_text(mid.replace("epochs = 500", "epochs = 64"))
    proc = subprocess.Popen(
        jaxtrader("--log-format", "json", "--config", "mid.toml", "train", "--arch", "lstm"),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = read_events(proc, "train_progress")
    proc.send_signal(signal.SIGINT)
    signalled_at = events[-1]["step"]
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    events += [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    epoch_steps = next(e["steps_per_epoch"] for e in events if e["event"] == "fit_start")
    assert epoch_steps == 125
    assert [e["signal"] for e in events if e["event"] == "stop_requested"] == ["SIGINT"]
    assert "interrupted: saved 1 epoch(s) (the last one partial)" in stderr
    # With --log-format json that line is a record too: nothing on stderr is plain text.
    (note,) = [e for e in events if e["event"] == "interrupted"]
    assert note["message"].startswith("interrupted: saved 1 epoch(s) (the last one partial)")
    assert all(x.startswith("{") for x in stderr.splitlines() if x.strip()), stderr[-3000:]

    vdir = workdir / "ckpt" / "SYNTH-USD" / "lstm" / "v1"
    m = read_manifest(vdir)
    steps = m.metrics["steps"]
    assert m.metrics["stopped_reason"] == "interrupted" and m.metrics["last_epoch_partial"]
    assert m.metrics["epochs"] == m.metrics["best_epoch"] == m.best_step == 1
    assert signalled_at <= steps < epoch_steps  # stopped after the current step, mid-epoch
    summary = json.loads(stdout)
    assert summary["steps"] == steps and summary["stopped_reason"] == "interrupted"
    (record,) = [json.loads(x) for x in (vdir / METRICS_FILE).read_text().splitlines()]
    assert record["steps"] == record["global_step"] == steps
    assert np.isfinite(record["val_loss"]) and record["val_loss"] == m.metrics["val_loss"]

    # The partial epoch restores: the train state after exactly `steps` updates, whose parameters
    # give the validation loss recorded for the epoch.
    cfg = from_dict(m.config)
    sample = {
        "seq": np.zeros((1, m.seq_len, 5), np.float32),
        "feats": np.zeros((1, len(m.feature_names)), np.float32),
    }
    fresh = create_train_state(build_model(cfg.model), cfg.train, jax.random.key(0), sample, 2)
    restored = restore_state(vdir, fresh)
    assert int(restored.step) == steps
    chex.assert_tree_all_finite(restored.params)
    assert jax.tree.structure(restored.params) == jax.tree.structure(fresh.params)
    dataset = build_dataset(load_market(cfg.data), cfg.dataset)
    val = evaluate(restored, dataset, "val", cfg.train.eval_batch_size)
    assert val["loss"] == pytest.approx(record["val_loss"], rel=1e-5)
    assert val["accuracy"] == pytest.approx(record["val_acc"])


def test_models_list_empty(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jaxtrader.cli import cli

    (tmp_path / "none").mkdir()  # an empty folder; a missing one is an error (test_checkpoint)
    result = CliRunner().invoke(cli, ["models", "list", "--ckpt-dir", str(tmp_path / "none")])
    assert result.exit_code == 0
    assert result.output.startswith(f"no model versions under {tmp_path / 'none'}")
    result = CliRunner().invoke(cli, ["models", "list", "--json", "--ckpt-dir", str(tmp_path)])
    assert json.loads(result.output) == []


def main_exit(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs the console entry point in this process (same error handling as the script)."""
    from jaxtrader.cli import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_unknown_arch_is_one_line_exit_2(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_exit(["train", "--arch", "gru"], workdir, monkeypatch) == 2
    assert capsys.readouterr().err == (
        "error: --arch 'gru' is not a registered architecture; choose one of lstm, transformer\n"
    )
    assert not (workdir / "ckpt").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "Invalid value for '--epochs'"),
        (["--batch-size", "many"], "Invalid value for '--batch-size'"),
        (["--max-minutes", "-1"], "Invalid value for '--max-minutes'"),
        (["--no-such-flag"], "No such option '--no-such-flag'"),
        (["--data-shards", "0"], "Invalid value for '--data-shards'"),
    ],
)
def test_bad_flags_exit_2(workdir: Path, flags: list[str], message: str) -> None:
    from click.testing import CliRunner

    from jaxtrader.cli import cli

    result = CliRunner().invoke(cli, ["train", "--arch", "lstm", *flags])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_shards_that_do_not_divide_the_batch_are_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_exit(["train", "--arch", "lstm", "--data-shards", "3"], workdir, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: train.batch_size=64 must be a multiple of train.data_shards=3")
    assert not (workdir / "ckpt").exists()  # refused before any version directory


def test_a_wrong_allocator_choice_is_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JAXTRADER_MALLOC", "jemalloc")
    assert main_exit(["train", "--arch", "lstm"], workdir, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: JAXTRADER_MALLOC='jemalloc' is not one")
    assert not (workdir / "ckpt").exists()


@pytest.mark.parametrize(
    ("body", "start"),
    [
        ("[dataset]\nseq_len = 10\n", "error: dataset.seq_len=10 in config file bad.toml"),
        # These trained, wrote half a version directory or crashed before the ranges were checked.
        ("[train]\nepochs = -3\n", "error: train.epochs=-3 in config file bad.toml"),
        ("[train]\nbatch_size = 0\n", "error: train.batch_size=0 in config file bad.toml"),
        ("[train]\nmax_to_keep = 0\n", "error: train.max_to_keep=0 in config file bad.toml"),
        ("[model]\nd_model = 63\n", "error: model.d_model=63 must be even"),
    ],
)
def test_bad_config_value_is_one_line(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: str,
    start: str,
) -> None:
    (workdir / "bad.toml").write_text(body)
    args = ["--config", "bad.toml", "train", "--arch", "lstm", "--ckpt-dir", "ck"]
    assert main_exit(args, workdir, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(start)
    assert not (workdir / "ck").exists()


def test_help_shows_the_defaults_each_command_uses() -> None:
    """walkforward trains with patience 1 and 1 epoch (`WF_DEFAULTS`), train with the config's."""
    from jaxtrader.cli.study_cmds import study
    from jaxtrader.cli.train_cmds import train
    from jaxtrader.cli.walkforward_cmds import walkforward

    def help_of(command: click.Command, name: str) -> str:
        return next(p for p in command.params if p.name == name).help or ""  # type: ignore[attr-defined]

    assert help_of(train, "patience").endswith("(train.patience) [2].")
    for command in (walkforward, study):
        assert help_of(command, "patience").endswith("(train.patience) [1].")
        assert help_of(command, "epochs") == "Maximum epochs per fold [1]."


def test_training_knob_flags_and_tensorboard_events(workdir: Path) -> None:
    """Issue 14: --lr/--weight-decay/--patience/--dropout/--threshold override --config, and every
    run writes TensorBoard event files into its version directory."""
    extra_or_skip("tensorboardX", "tensorboard")
    from jaxtrader.checkpoint import METRICS_FILE, read_manifest

    flags = ["--lr", "0.002", "--weight-decay", "0.001", "--patience", "2", "--dropout", "0.05"]
    flags += ["--threshold", "0.0001", "--epochs", "2"]
    out = run("--config", "tiny.toml", "train", "--arch", "lstm", *flags, cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    vdir = workdir / "ckpt" / "SYNTH-USD" / "lstm" / "v1"
    m = read_manifest(vdir)
    train_cfg, model_cfg = m.config["train"], m.config["model"]
    assert (train_cfg["learning_rate"], train_cfg["weight_decay"]) == (0.002, 0.001)
    assert train_cfg["patience"] == 2 and train_cfg["warmup_steps"] == 2  # the rest: tiny.toml
    assert model_cfg["dropout"] == 0.05 and m.threshold == 0.0001
    assert m.config["dataset"]["threshold"] == 0.0001

    (event_file,) = vdir.glob("events.out.tfevents.*")
    scalars = event_scalars(event_file)
    records = [json.loads(line) for line in (vdir / METRICS_FILE).read_text().splitlines()]
    assert len(records) == m.metrics["epochs"] >= 1
    for tag, key in [("loss/train", "train_loss"), ("loss/val", "val_loss"),
                     ("accuracy/train", "train_acc"), ("accuracy/val", "val_acc"),
                     ("optim/learning_rate", "lr"), ("speed/steps_per_s", "steps_per_s")]:  # fmt: skip
        assert scalars[tag] == {r["epoch"]: pytest.approx(r[key], rel=1e-6) for r in records}, tag


def test_config_show_reflects_training_flags(workdir: Path) -> None:
    import tomllib

    from click.testing import CliRunner

    from jaxtrader.cli import cli
    from jaxtrader.config import from_dict

    args = ["--config", str(workdir / "tiny.toml"), "config", "show", "--lr", "0.0003"]
    result = CliRunner().invoke(cli, [*args, "--dropout", "0.2", "--threshold", "0.001"])
    assert result.exit_code == 0, result.output
    cfg = from_dict(tomllib.loads(result.output))
    assert cfg.train.learning_rate == 0.0003  # flag
    assert cfg.train.patience == 1 and cfg.train.warmup_steps == 2  # the config file
    assert cfg.train.weight_decay == 1e-4  # default
    assert cfg.model.dropout == 0.2 and cfg.dataset.threshold == 0.001
