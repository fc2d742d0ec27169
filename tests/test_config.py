from __future__ import annotations

from pathlib import Path

import pytest

from jaxtrader.config import AppConfig, data_shards, load_config, to_toml, with_overrides
from jaxtrader.errors import ConfigError


def test_defaults_are_hashable_and_frozen() -> None:
    cfg = AppConfig()
    assert hash(cfg) == hash(AppConfig())
    with pytest.raises(AttributeError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_file_values_then_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = 7\nbatch_size = 32\n[model]\narch = "lstm"\n')
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.arch) == (7, 32, "lstm")
    cfg2 = with_overrides(cfg, {"train.epochs": 2, "train.batch_size": None})
    assert (cfg2.train.epochs, cfg2.train.batch_size) == (2, 32)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepoch = 7\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'"):
        load_config(path)


def test_unknown_table_and_bad_type(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[trian]\nepochs = 7\n")
    with pytest.raises(ConfigError, match=r"unknown table '\[trian\]'"):
        load_config(path)
    path.write_text('[train]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match=r"train\.epochs='many' in config file .* is a string"):
        load_config(path)
    path.write_text('[data]\ngaps = "guess"\n')
    with pytest.raises(ConfigError, match=r"data\.gaps"):
        load_config(path)


_TABLES = "backtest, data, dataset, model, risk, train"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[train]\nepochs = 2\n[train.extra]\nx = 1\n",
            "unknown table '[train.extra]' in config file {path}; [train] holds keys only: "
            "batch_size, ckpt_dir, class_weights, data_shards, epochs, eval_batch_size, "
            "grad_clip, learning_rate, max_minutes, max_to_keep, patience, seed, warmup_steps, "
            "weight_decay",
        ),
        (
            "[policy]\nenter = 0.6\n",
            f"unknown table '[policy]' in config file {{path}}; known tables: {_TABLES} (a "
            "decision policy is a file of its own, given as --policy FILE)",
        ),
        (
            "[polcy]\nenter = 0.6\n",
            f"unknown table '[polcy]' in config file {{path}}; known tables: {_TABLES}",
        ),
    ],
)
def test_a_table_is_called_a_table(tmp_path: Path, text: str, expected: str) -> None:
    """`[train.extra]` was reported as an unknown key 'train.extra'; and a [policy] table (the
    decision policy's file layout) in a config file is pointed at --policy FILE."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == expected.format(path=path)


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = with_overrides(AppConfig(), {"train.max_minutes": 2.5, "model.arch": "lstm"})
    path = tmp_path / "round.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[train]\nepochs = -3\n", "train.epochs=-3 in config file {path} is out of range: "
         "it must be an integer >= 1; change it in that file"),
        ("[train]\nepochs = 0\n", "train.epochs=0 in config file {path} is out of range: "
         "it must be an integer >= 1"),
        ("[train]\nbatch_size = 0\n", "train.batch_size=0 in config file {path} is out of range: "
         "it must be an integer >= 1"),
        ("[dataset]\nscaler_clip = -1\n", "dataset.scaler_clip=-1.0 in config file {path} is out "
         "of range: it must be a number > 0"),
        ("[model]\ndropout = 1.5\n", "model.dropout=1.5 in config file {path} is out of range: "
         "it must be a number in [0, 1)"),
        ("[train]\nlearning_rate = -1\n", "train.learning_rate=-1.0 in config file {path} is out "
         "of range: it must be a number > 0"),
        ("[train]\nlearning_rate = nan\n", "train.learning_rate=nan in config file {path}"),
        ("[train]\nmax_minutes = 0\n", "train.max_minutes=0.0 in config file {path} is out of "
         "range: it must be a number > 0"),
        ("[train]\npatience = 0\n", "train.patience=0 in config file {path}"),
        ("[train]\nweight_decay = -0.1\n", "train.weight_decay=-0.1 in config file {path} is out "
         "of range: it must be a number >= 0"),
        ("[train]\nmax_to_keep = 0\n", "train.max_to_keep=0 in config file {path}"),
        ("[dataset]\nseq_len = 10\n", "dataset.seq_len=10 in config file {path} is out of range: "
         "it must be an integer in 50..200"),
        ("[dataset]\nhorizon = 0\n", "dataset.horizon=0 in config file {path}"),
        ("[risk]\ncooldown = -5\n", "risk.cooldown=-5 in config file {path}"),
        ("[backtest]\nfee_bps = -10\n", "backtest.fee_bps=-10.0 in config file {path} is out of "
         "range: it must be a number in [0, 10000)"),
        ("[dataset]\ntrain_frac = 0.9\nval_frac = 0.3\n", "dataset.train_frac + dataset.val_frac "
         "= 1.2 leaves no test data (config file {path}); keep the sum below 1"),
        ("[model]\nd_model = 63\nnum_heads = 4\n", "model.d_model=63 must be even and divisible "
         "by model.num_heads=4 (config file {path})"),
        ('[model]\narch = "gru"\n', "model.arch='gru' (config file {path}) is not a registered "
         "architecture; choose one of lstm, transformer"),
    ],
)  # fmt: skip
def test_out_of_range_file_values_name_file_key_value_and_range(
    tmp_path: Path, body: str, message: str
) -> None:
    """A config file cannot set what the flags refuse: the same table of ranges checks both."""
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message.format(path=path) in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[train]\nepochs = "3"\n', "train.epochs='3' in config file {path} is a string: it must "
         "be an integer >= 1; change it in that file"),
        ("[train]\nepochs = 2.5\n", "train.epochs=2.5 in config file {path} is a float: it must "
         "be an integer >= 1; change it in that file"),
        ("[train]\nepochs = true\n", "train.epochs=true in config file {path} is a boolean: it "
         "must be an integer >= 1; change it in that file"),
        ("[dataset]\nhorizon = 3.0\n", "dataset.horizon=3.0 in config file {path} is a float: it "
         "must be an integer >= 1; change it in that file"),
        ("[dataset]\nseq_len = 60.5\n", "dataset.seq_len=60.5 in config file {path} is a float: "
         "it must be an integer in 50..200; change it in that file"),
        ('[data]\ndedupe = "yes"\n', "data.dedupe='yes' in config file {path} is a string: it "
         "must be true or false; change it in that file"),
        ("[data]\ndedupe = 1\n", "data.dedupe=1 in config file {path} is an integer: it must be "
         "true or false; change it in that file"),
        ('[train]\nlearning_rate = "1e-3"\n', "train.learning_rate='1e-3' in config file {path} "
         "is a string: it must be a number > 0; change it in that file"),
        ("[backtest]\nthreshold = false\n", "backtest.threshold=false in config file {path} is a "
         "boolean: it must be a number in (0, 1); change it in that file"),
        ('[risk]\nstop_loss = "5%"\n', "risk.stop_loss='5%' in config file {path} is a string: it "
         "must be a number in (0, 1) (or leave the key out); change it in that file"),
        ("[data]\npath = 3\n", "data.path=3 in config file {path} is an integer: it must be a "
         "string (or leave the key out); change it in that file"),
        ('[data]\ngaps = "guess"\n', "data.gaps='guess' in config file {path} is not one of the "
         "choices: it must be one of 'fill', 'drop', 'error'; change it in that file"),
        ("[model]\nfeature_join = [1]\n", "model.feature_join=[1] in config file {path} is an "
         "array: it must be one of 'add', 'token'; change it in that file"),
    ],
)  # fmt: skip
def test_wrong_type_file_values_name_file_key_value_and_what_is_allowed(
    tmp_path: Path, body: str, message: str
) -> None:
    """A wrong type is worded like a range error: the key, the value as the file spells it, the
    file, what the key may hold and what to do."""
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == message.format(path=path)


def test_right_types_still_load_and_an_integer_is_a_fine_float(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[train]\nlearning_rate = 1\nmax_minutes = 2\n[data]\ndedupe = true\n"
        '[risk]\nmax_trades_per_day = 4\n[model]\nfeature_join = "token"\n'
    )
    cfg = load_config(path)
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.max_minutes == 2.0 and isinstance(cfg.train.max_minutes, float)
    assert (cfg.data.dedupe, cfg.risk.max_trades_per_day) == (True, 4)
    assert cfg.model.feature_join == "token"


def test_wrong_type_override_names_key_value_and_what_is_allowed() -> None:
    """Overrides come from flags, not a file: the message has no file to name."""
    with pytest.raises(ConfigError) as caught:
        with_overrides(AppConfig(), {"train.epochs": "3"})
    assert str(caught.value) == "train.epochs='3' is a string: it must be an integer >= 1"


def test_every_ranged_flag_agrees_with_the_config_table() -> None:
    """The click ranges of train/walkforward/study flags are built from `RANGES`, so a value a
    flag refuses is refused in a config file, and the other way round."""
    import click

    from jaxtrader.cli.study_cmds import study
    from jaxtrader.cli.train_cmds import train
    from jaxtrader.cli.walkforward_cmds import walkforward
    from jaxtrader.config import RANGES

    keys = {
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "seq_len": "dataset.seq_len",
        "horizon": "dataset.horizon",
        "horizons": "dataset.horizon",
        "max_minutes": "train.max_minutes",
        "lr": "train.learning_rate",
        "weight_decay": "train.weight_decay",
        "patience": "train.patience",
        "dropout": "model.dropout",
        "threshold": "dataset.threshold",
    }
    seen = set()
    for command in (train, walkforward, study):
        for param in command.params:
            if param.name not in keys:
                continue
            r, t = RANGES[keys[param.name]], param.type
            assert isinstance(t, click.IntRange | click.FloatRange), param.name
            assert (t.min, t.max, t.min_open, t.max_open) == (r.lo, r.hi, r.lo_open, r.hi_open)
            seen.add((command.name, param.name))
    assert len(seen) == 30  # 10 such flags on each command


def test_a_key_outside_any_table_is_named_with_its_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("epochs = 3\n[model]\narch = 'lstm'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"'epochs' in config file {path} is a key outside any table; put it under [train] "
        "(tables: [backtest], [data], [dataset], [model], [risk], [train])"
    )


@pytest.mark.parametrize(
    ("overrides", "shards"),
    [
        ({"model.arch": "lstm"}, 2),  # the LSTM's default: its step 1.3x faster on 2 cores
        ({"model.arch": "transformer"}, 1),
        ({"model.arch": "lstm", "train.batch_size": 33}, 1),  # the default must divide the batch
        ({"model.arch": "transformer", "train.data_shards": 4}, 4),
        ({"model.arch": "lstm", "train.data_shards": 1}, 1),
    ],
)
def test_data_shards_are_the_arch_default_unless_set(overrides: dict, shards: int) -> None:
    assert data_shards(with_overrides(AppConfig(), overrides)) == shards


def test_data_shards_that_do_not_divide_the_batch_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train]\nbatch_size = 30\ndata_shards = 4\n")
    with pytest.raises(
        ConfigError,
        match=r"train\.batch_size=30 must be a multiple of "
        r"train\.data_shards=4 \(config file .*c\.toml\)",
    ):
        load_config(path)
