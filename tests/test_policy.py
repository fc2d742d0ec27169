"""The decision policy: hand-checked hysteresis and minimum hold, the vectorized series function
equal to the one-candle step the trade runner uses, selection on validation rows only, and the
one place timestamps become nanoseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import TradeRules
from jaxtrader.data import timestamps_ns
from jaxtrader.decisions import (
    Policy,
    PolicyRequest,
    PolicyState,
    annualization,
    describe_policy,
    has_weekend_candles,
    policy_positions,
    policy_step,
    positions_from_probs,
)
from jaxtrader.errors import ConfigError
from jaxtrader.evaluate.selection import policy_grid, select_policy


def stepped(policy: Policy, probs: np.ndarray) -> np.ndarray:
    """The trade runner's way: one `policy_step` per candle."""
    state, out = PolicyState(), []
    for p in probs:
        state = policy_step(policy, state, float(p))
        out.append(state.position * policy.max_position)
    return np.array(out, dtype=np.float64)


def test_hysteresis_and_min_hold_by_hand() -> None:
    p = np.array([0.50, 0.56, 0.53, 0.51, 0.49, 0.56, 0.40, 0.40, 0.52])
    # enter > 0.55, stay while > 0.50: in at 1, held through 0.53 and 0.51, out at 0.49.
    band = Policy(enter=0.55, exit=0.50)
    np.testing.assert_array_equal(policy_positions(band, p), [0, 1, 1, 1, 0, 1, 0, 0, 0])
    # min_hold 3: the entry at row 5 must be held through rows 6 and 7 despite P(up) = 0.40;
    # at row 8 it may leave, but 0.52 is above the exit, so it stays.
    hold = Policy(enter=0.55, exit=0.50, min_hold=3)
    np.testing.assert_array_equal(policy_positions(hold, p), [0, 1, 1, 1, 0, 1, 1, 1, 1])
    # long-short mirror: short below 1 - enter = 0.45, covered at >= 1 - exit = 0.50; a long
    # falling below 0.45 flips straight to a short.
    ls = Policy(enter=0.55, exit=0.50, long_short=True)
    np.testing.assert_array_equal(policy_positions(ls, p), [0, 1, 1, 1, 0, 1, -1, -1, 0])
    half = Policy(enter=0.55, exit=0.50, max_position=0.5)
    np.testing.assert_array_equal(policy_positions(half, p), 0.5 * policy_positions(band, p))


@pytest.mark.parametrize("long_short", [False, True])
def test_the_plain_policy_is_the_threshold_rule(long_short: bool) -> None:
    p = np.random.default_rng(0).random(500)
    p[:5] = [0.6, 0.6, 0.4, 0.4, 0.5]  # exact ties at the thresholds
    for t in (0.5, 0.6):
        plain = Policy.plain(t, long_short)
        np.testing.assert_array_equal(
            policy_positions(plain, p), positions_from_probs(p, t, long_short)
        )


def test_series_function_equals_the_one_candle_step_on_many_policies() -> None:
    rng = np.random.default_rng(1)
    # A persistent, model-like probability series around 0.5 (AR(1)), plus random grid policies.
    z = np.zeros(3000)
    for i in range(1, z.size):
        z[i] = 0.9 * z[i - 1] + rng.normal(0, 0.03)
    p = np.clip(0.5 + z, 0.01, 0.99)
    policies = policy_grid(5, False) + policy_grid(3, True, max_position=0.7)
    for pol in policies:
        np.testing.assert_array_equal(policy_positions(pol, p), stepped(pol, p), err_msg=str(pol))


def test_a_missing_prediction_holds_and_counts_the_candle() -> None:
    pol = Policy(enter=0.55, exit=0.5, min_hold=2)
    s = policy_step(pol, PolicyState(), 0.6)
    assert s == PolicyState(1, 1)
    s = policy_step(pol, s, None)  # held through the neutral candle, which counts
    assert s == PolicyState(1, 2)
    assert policy_step(pol, s, 0.3) == PolicyState(0, 0)


def test_bad_policies_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exit 0\.6 must be in"):
        Policy(enter=0.55, exit=0.6)
    with pytest.raises(ConfigError, match="min_hold"):
        Policy(min_hold=0)
    with pytest.raises(ConfigError, match="max_position"):
        Policy(max_position=2.0)
    bad = tmp_path / "p.toml"
    bad.write_text("[policy]\nenter = 0.6\nexitt = 0.5\n")
    with pytest.raises(ConfigError, match="unknown policy keys"):
        Policy.from_toml(bad)
    with pytest.raises(ConfigError, match="cannot read policy file"):
        Policy.from_toml(tmp_path / "missing.toml")
    good = tmp_path / "g.toml"
    good.write_text("[policy]\nenter = 0.6\nexit = 0.52\nmin_hold = 4\n")
    assert Policy.from_toml(good) == Policy(enter=0.6, exit=0.52, min_hold=4)
    # Explicit flags win over the file; min_hold defaults to the label horizon for flags.
    req = PolicyRequest(str(good), enter=0.7)
    assert req.resolve(threshold=0.5, long_short=False, horizon=5) == Policy(0.7, 0.52, 4)
    assert PolicyRequest("auto", exit=0.45).resolve(
        threshold=0.5, long_short=False, horizon=5
    ) == Policy(0.5, 0.45, 5)
    assert PolicyRequest("auto").resolve(threshold=0.5, long_short=False, horizon=5) == "auto"


def test_selection_reads_only_the_rows_it_is_given() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    r = rng.normal(0, 0.01, n)
    # A weakly informative signal: P(up) leans toward the sign of the next return.
    p = np.clip(0.5 + 0.04 * np.sign(r) + rng.normal(0, 0.05, n), 0, 1)
    rules = TradeRules(fee_bps=10.0)
    chosen, table = select_policy(p, r, rules, horizon=5, periods_per_year=8760)
    assert sum(row["selected"] for row in table) == 1
    best = next(row for row in table if row["selected"])
    assert best["net_sharpe"] == max(row["net_sharpe"] for row in table)
    assert Policy.from_dict({k: best[k] for k in chosen.to_dict()}) == chosen
    assert len(table) == len(policy_grid(5)) == 64  # standing aside, then 7 x 3 x 3
    # Free trading makes the most active good policy win; costly trading favours fewer trades.
    free, _ = select_policy(p, r, TradeRules(fee_bps=0.0), horizon=5, periods_per_year=8760)
    costly, t2 = select_policy(p, r, TradeRules(fee_bps=50.0), horizon=5, periods_per_year=8760)
    trades = {(row["enter"], row["exit"], row["min_hold"]): row["trades"] for row in t2}
    assert (
        trades[(costly.enter, costly.exit, costly.min_hold)]
        <= trades[(free.enter, free.exit, free.min_hold)]
    )


def test_selection_ties_go_to_fewer_trades() -> None:
    # Zero returns: every policy has Sharpe 0 before costs; with no fee, all tie at 0 and the
    # policy with the fewest trades (the highest enter) wins.
    p = np.random.default_rng(3).random(300)
    _, table = select_policy(
        p, np.zeros(300), TradeRules(fee_bps=0.0), horizon=1, periods_per_year=8760
    )
    fewest = min(row["trades"] for row in table)
    assert next(row for row in table if row["selected"])["trades"] == fewest


def test_when_every_policy_loses_on_validation_the_choice_is_to_stand_aside() -> None:
    # P(up) > 0.5 exactly where the next return is negative: every policy that trades loses.
    rng = np.random.default_rng(4)
    r = rng.normal(0, 0.01, 1500)
    p = np.clip(0.5 - 0.2 * np.sign(r) + rng.normal(0, 0.02, r.size), 0.01, 0.62)
    chosen, table = select_policy(p, r, TradeRules(fee_bps=10.0), horizon=5, periods_per_year=8760)
    assert chosen == Policy.flat() and describe_policy(chosen.to_dict()).startswith("stand aside")
    assert table[0]["selected"] and table[0]["trades"] == 0 and table[0]["net_sharpe"] == 0.0
    traded = [row for row in table[1:] if row["trades"]]
    assert traded and max(row["net_sharpe"] for row in traded) < 0
    # enter 0.65 never trades on these rows (P(up) <= 0.62) and also scores 0 with no trades, but
    # it would trade on rows above 0.65 later: standing aside, first in the grid, wins the tie.
    assert any(row["enter"] == 0.65 and row["trades"] == 0 for row in table)
    assert not np.any(policy_positions(chosen, np.linspace(0.0, 1.0, 101)))
    ls = Policy.flat(long_short=True)
    assert not np.any(policy_positions(ls, np.linspace(0.0, 1.0, 101)))
    # One good policy on validation is chosen over standing aside.
    good, _ = select_policy(
        np.clip(1.0 - p, 0.01, 0.99), r, TradeRules(fee_bps=10.0), horizon=5, periods_per_year=8760
    )
    assert good != Policy.flat()


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_are_nanoseconds_whatever_the_pandas_resolution(unit: str) -> None:
    # 2024-01-06 is a Saturday. An index held in a coarser unit than ns has `.asi8` in THAT unit
    # (pandas 2 and 3 alike; pandas 3 also parses ISO strings to microseconds), which made
    # has_weekend_candles see 1970 dates, find no weekend and annualize 1h with 252 x 24 = 6048.
    idx = pd.date_range("2024-01-01", periods=24 * 14, freq="1h", tz="UTC").as_unit(unit)
    expected = pd.date_range("2024-01-01", periods=24 * 14, freq="1h", tz="UTC").as_unit("ns")
    want = np.asarray(expected.asi8, dtype=np.int64)
    for given in (idx, pd.Series(idx), list(idx), [t.isoformat() for t in idx], want):
        np.testing.assert_array_equal(timestamps_ns(given), want)
    assert has_weekend_candles(timestamps_ns(idx))
    assert annualization(3600, timestamps_ns(idx))[0] == 8760.0
    if unit != "ns":  # the bug, reproduced: the raw integers of a coarser unit are not ns
        assert not has_weekend_candles(idx.asi8)


def test_trade_takes_the_policy_recorded_in_the_manifest(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from jaxtrader.trading.runner import trade_policy

    rule = Policy(enter=0.58, exit=0.53, min_hold=10).to_dict()
    recorded = SimpleNamespace(policy={"rule": rule, "source": "evaluate --policy auto"})
    rules = TradeRules()
    assert trade_policy("checkpoint", recorded, rules) == Policy(0.58, 0.53, 10)
    assert trade_policy("plain", recorded, rules) is None  # the override
    assert trade_policy("checkpoint", SimpleNamespace(policy=None), rules) is None  # old manifest
    f = tmp_path / "p.toml"
    f.write_text("enter = 0.6\nexit = 0.5\n")
    assert trade_policy(str(f), recorded, rules) == Policy(0.6, 0.5)


POLICY_KEYS = "enter, exit, long_short, max_position, min_hold"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # A misspelt table was called an unknown policy "key" ['polcy'].
        (
            "[polcy]\nenter = 0.6\n",
            "unknown table '[polcy]' in policy file {f}; known tables: policy (or the keys "
            f"{POLICY_KEYS} at the top of the file, without a table)",
        ),
        # Beside a [policy] table it was not read at all: its exit was dropped without a word.
        (
            "[policy]\nenter = 0.6\n[polcy]\nexit = 0.5\n",
            "unknown table '[polcy]' in policy file {f}; known tables: policy",
        ),
        (
            "[policy]\nenter = 0.6\n[policy.extra]\nx = 1\n",
            f"unknown table '[policy.extra]' in policy file {{f}}; [policy] holds keys only: "
            f"{POLICY_KEYS}",
        ),
        # A key above the [policy] line was dropped without a word too.
        (
            "min_hold = 3\n[policy]\nenter = 0.6\n",
            "'min_hold' in policy file {f} is a key outside the [policy] table; put it under "
            "[policy], or every key at the top of the file without the [policy] line",
        ),
        # `policy = 3` was a TypeError from dict(3): an internal error, not a message.
        ("policy = 3\n", "'policy' in policy file {f} must be a table like [policy]"),
    ],
    ids=["misspelt-table", "beside-policy", "nested-table", "key-beside-policy", "not-a-table"],
)
def test_a_policy_files_tables_are_called_tables(tmp_path: Path, text: str, problem: str) -> None:
    """A policy file's unknown table is named as a table, with the known table, whether
    evaluate (`PolicyRequest`) or trade (`Policy.from_toml`) reads it; nothing in the file is
    dropped silently."""
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Policy.from_toml(f)
    assert str(caught.value) == problem.format(f=f)
    with pytest.raises(ConfigError) as caught:
        PolicyRequest(str(f), enter=0.55).resolve(threshold=0.5, long_short=False, horizon=5)
    assert str(caught.value) == problem.format(f=f)


def test_trade_refuses_a_threshold_the_policy_in_force_ignores(tmp_path: Path) -> None:
    """`trade --threshold 0.6` with a recorded or TOML policy traded that policy and dropped the
    threshold without a word; the plain rule (given, or no policy recorded) still takes it."""
    from types import SimpleNamespace

    from jaxtrader.trading.runner import trade_policy

    rule = Policy(enter=0.58, exit=0.53, min_hold=10).to_dict()
    recorded = SimpleNamespace(policy={"rule": rule, "source": "evaluate --policy auto"})
    rules = TradeRules(threshold=0.6)
    with pytest.raises(ConfigError) as e:
        trade_policy("checkpoint", recorded, rules, threshold_flag=0.6)
    assert str(e.value) == (
        "--threshold 0.6 has no effect under the policy recorded in the checkpoint by `evaluate "
        "--policy auto` (enter > 0.58, exit <= 0.53, min hold 10); pass --policy plain to trade long "
        "above --threshold, or drop --threshold"
    )
    f = tmp_path / "p.toml"
    f.write_text("enter = 0.6\nexit = 0.5\n")
    with pytest.raises(ConfigError, match=rf"^--threshold 0.6 has no effect under --policy {f} "):
        trade_policy(str(f), recorded, rules, threshold_flag=0.6)
    assert trade_policy("plain", recorded, rules, threshold_flag=0.6) is None
    assert trade_policy("checkpoint", SimpleNamespace(policy=None), rules, 0.6) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('enter = "x"', "policy enter must be a number, got 'x'"),
        ("min_hold = true", "policy min_hold must be a number, got True"),
        ('long_short = "yes"', "policy long_short must be true or false, got 'yes'"),
        ("long_short = 1", "policy long_short must be true or false, got 1"),
    ],
)
def test_a_policy_value_of_the_wrong_type_is_named(
    tmp_path: Path, line: str, expected: str
) -> None:
    """enter = "x" failed as "'<' not supported between ... 'float' and 'str'", and long_short =
    "yes" was silently true."""
    path = tmp_path / "p.toml"
    path.write_text(f"[policy]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        Policy.from_toml(path)
    assert str(caught.value).endswith(expected)
