"""Shared fixtures: paths to the real shared data (skipping with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests compile many tiny programs and run each briefly: XLA's cheapest optimisation level cuts
# compile time about 2x (measured on the train step), which dominates test time on a CPU.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BTC_1H = SHARED_DATA / "binance_btcusdt_1h.csv.gz"
ETH_1H = SHARED_DATA / "binance_ethusdt_1h.csv.gz"
BTC_5M = SHARED_DATA / "binance_btcusdt_5m.csv.gz"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data {path.name} not found: ../shared/data is absent in this checkout")
    return path


@pytest.fixture
def btc_1h() -> Path:
    return _require(BTC_1H)


@pytest.fixture
def eth_1h() -> Path:
    return _require(ETH_1H)


@pytest.fixture
def btc_5m() -> Path:
    return _require(BTC_5M)


def lightgbm_or_skip() -> object:
    """The lightgbm module, or a skip when the optional `gbm` extra is absent. Where the extra is
    meant to be installed (tox's py311 env sets JAXTRADER_REQUIRE_GBM=1) its absence fails the
    test instead, so a broken install cannot pass CI as a quiet skip."""
    if os.environ.get("JAXTRADER_REQUIRE_GBM") == "1":
        import lightgbm

        return lightgbm
    return pytest.importorskip("lightgbm", reason="the optional `gbm` extra is not installed")
