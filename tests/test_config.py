from __future__ import annotations

from pathlib import Path

import pytest

from jaxtrader.config import AppConfig, load_config, to_toml, with_overrides
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
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(path)
    path.write_text('[data]\ngaps = "guess"\n')
    with pytest.raises(ConfigError, match=r"data\.gaps"):
        load_config(path)


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
