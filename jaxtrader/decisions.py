"""How a P(up) becomes a position, and how the resulting returns are scored: the one module below
both `evaluate/` (the backtest) and `trading/` (the live strategy), so they decide and measure alike.

Owns: the settings check (`check_settings`), the decision policy (`Policy`: entry/exit thresholds
with a hysteresis band, a minimum holding time, a position size; `policy_positions` maps a whole
probability series to positions, `policy_step` does the same one candle at a time for the trade
runner, and the two agree exactly), the plain rule (`positions_from_probs`: long above the
threshold, short below 1 - threshold with long/short, which is `Policy.plain`), the one fill rule
(`order_fill`: how an order for a target exposure becomes units, price and fee, used by the paper
broker and by evaluate's backtest alike), and the
performance figures both report (`max_drawdown`, `sharpe`, and the annualization:
`periods_per_year`, `has_weekend_candles`, `annualization`). The settings (fee, slippage,
threshold, long/short) are one frozen type, `jaxtrader.config.TradeRules`.

Annualization comes from the candle interval, never a constant: 8760 periods a year for 1h, 105120
for 5m, 365 for 1d crypto; 252 trading days only when the data has no weekend candles (equities).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrader.errors import ConfigError

YEAR_SECONDS = 365 * 24 * 3600
DAY_SECONDS = 24 * 3600
TRADING_DAYS = 252

# -- decisions ----------------------------------------------------------------------------------


def check_settings(
    *,
    threshold: float = 0.5,
    long_short: bool = False,
    fee_bps: float = 0.0,
    slippage_bps: float = 0.0,
) -> None:
    """ConfigError naming the flag for settings that make no sense (checked before any work)."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {threshold}")
    if long_short and threshold < 0.5:
        raise ConfigError(
            f"--threshold {threshold} < 0.5 with --long-short makes long and short overlap; "
            "use a threshold >= 0.5"
        )
    for flag, value in (("--fee-bps", fee_bps), ("--slippage-bps", slippage_bps)):
        if not 0.0 <= value < 10_000.0:
            raise ConfigError(f"{flag} must be between 0 and 10000 bps, got {value}")


def _refuse_tables(entries: Mapping[str, Any], path: Path, prefix: str, known: str) -> None:
    """Refuses any table among a policy file's `entries` by name: TOML hands `[polcy]` over as
    one more entry, which the key check would call an unknown key."""
    for name, value in entries.items():
        if isinstance(value, dict):
            raise ConfigError(f"unknown table '[{prefix}{name}]' in policy file {path}; {known}")


@dataclass(frozen=True)
class Policy:
    """How P(up) becomes a position over time.

    Long-only: enter a long when P(up) > `enter`; hold it while P(up) > `exit` (exit <= enter is a
    hysteresis band: the position survives the noise between the two); leave when P(up) <= exit.
    With `long_short` the mirror pair applies to shorts (enter when P(up) < 1 - enter, cover when
    P(up) >= 1 - exit), and a long whose P(up) falls below 1 - enter flips straight to a short.
    A position is held for at least `min_hold` decisions (1 = may leave at the next decision) and
    is `max_position` x equity. `Policy.plain(t)` (enter = exit = t, min_hold 1) is the rule
    "long above t, re-decided every candle"; `Policy.flat()` (enter = 1, which no P(up) exceeds)
    never trades: "stand aside", the choice when nothing beats it on validation.
    """

    enter: float = 0.5
    exit: float = 0.5
    min_hold: int = 1
    max_position: float = 1.0
    long_short: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.enter <= 1.0:
            raise ConfigError(f"policy enter must be in (0, 1] (1 never trades), got {self.enter}")
        if not 0.0 < self.exit <= self.enter:
            raise ConfigError(
                f"policy exit {self.exit} must be in (0, enter={self.enter}]: exit <= enter is the "
                "hysteresis band; set --exit at or below --enter"
            )
        if self.long_short and self.enter < 0.5:
            raise ConfigError(
                f"policy enter {self.enter} < 0.5 with --long-short makes long and short overlap"
            )
        if int(self.min_hold) != self.min_hold or self.min_hold < 1:
            raise ConfigError(f"policy min_hold must be an integer >= 1, got {self.min_hold}")
        if not 0.0 < self.max_position <= 1.0:
            raise ConfigError(
                f"policy max_position must be in (0, 1] (no leverage), got {self.max_position}"
            )

    @classmethod
    def plain(cls, threshold: float = 0.5, long_short: bool = False) -> Policy:
        """The rule before policies existed: long above `threshold`, re-decided every candle."""
        check_settings(threshold=threshold, long_short=long_short)
        return cls(enter=threshold, exit=threshold, min_hold=1, long_short=long_short)

    @classmethod
    def flat(cls, long_short: bool = False, max_position: float = 1.0) -> Policy:
        """Stand aside: no P(up) is above 1 (or, for shorts, below 0), so it never trades."""
        return cls(
            enter=1.0, exit=1.0, min_hold=1, max_position=max_position, long_short=long_short
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], where: str = "policy", overrides: Mapping[str, Any] = {}
    ) -> Policy:
        """From a mapping (a manifest's `policy`, a TOML file); unknown keys are an error.
        `overrides` (the command's flags) replace the mapping's values before they are checked,
        so a flag can correct a file's value."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown policy keys {unknown}; allowed: {sorted(names)}")
        values = {**{k: v for k, v in d.items() if k in names}, **overrides}
        for key, value in values.items():
            # TOML and JSON hand over any type: enter = "x" failed as "'<' not supported between
            # float and str", and long_short = "yes" was silently true.
            flag = isinstance(value, bool | np.bool_)
            if key == "long_short" and not flag:
                raise ConfigError(
                    f"{where}: policy long_short must be true or false, got {value!r}"
                )
            if key != "long_short" and (flag or not isinstance(value, numbers.Real)):
                raise ConfigError(f"{where}: policy {key} must be a number, got {value!r}")
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None
        except ConfigError as e:
            if where == "policy":
                raise
            raise ConfigError(f"{where}: {e}") from None

    @staticmethod
    def toml_values(path: str | Path, choices: str = "auto, plain") -> dict[str, Any]:
        """The `[policy]` table (or top-level keys) of a policy file, unchecked. Any other table
        is refused as a table, by name: TOML hands `[polcy]` over as one more entry, which the
        key check would call an unknown key (or, beside a `[policy]` table, nothing would read
        at all); so is a key beside `[policy]`, which would be dropped without a word."""
        import tomllib

        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(
                f"cannot read policy file {p}: {e}; pass --policy {choices} or a TOML file"
            ) from None
        keys = ", ".join(sorted(f.name for f in dataclasses.fields(Policy)))
        if "policy" not in doc:
            _refuse_tables(
                doc,
                p,
                "",
                f"known tables: policy (or the keys {keys} at the top of the file, "
                "without a table)",
            )
            return dict(doc)
        table = doc["policy"]
        if not isinstance(table, dict):
            raise ConfigError(f"'policy' in policy file {p} must be a table like [policy]")
        others = {name: value for name, value in doc.items() if name != "policy"}
        _refuse_tables(others, p, "", "known tables: policy")
        if others:
            raise ConfigError(
                f"'{next(iter(others))}' in policy file {p} is a key outside the [policy] table; "
                "put it under [policy], or every key at the top of the file without the [policy] "
                "line"
            )
        _refuse_tables(table, p, "policy.", f"[policy] holds keys only: {keys}")
        return dict(table)

    @classmethod
    def from_toml(
        cls, path: str | Path, choices: str = "auto, plain", overrides: Mapping[str, Any] = {}
    ) -> Policy:
        """A `[policy]` table (or top-level keys) of enter, exit, min_hold, max_position, with
        `overrides` (flags) applied before the values are checked.

        `choices`: the command's other --policy values, named in the error (evaluate's are auto
        and plain, trade's checkpoint and plain)."""
        return cls.from_dict(cls.toml_values(path, choices), str(path), overrides)


def stands_aside(policy: Mapping[str, Any]) -> bool:
    """Whether a policy (as `Policy.to_dict()` or a manifest's `policy.rule`) never trades."""
    return bool(policy["enter"] >= 1.0)


def describe_policy(policy: Mapping[str, Any]) -> str:
    """A policy (as `Policy.to_dict()` or a manifest's `policy.rule`) in words, for reports and
    messages."""
    if stands_aside(policy):
        return "stand aside (never trades)"
    band = f"exit <= {policy['exit']:g}" if policy["exit"] < policy["enter"] else "no band"
    return f"enter > {policy['enter']:g}, {band}, min hold {policy['min_hold']}"


@dataclass(frozen=True)
class PolicyRequest:
    """What the user asked for: "auto", "plain" or a TOML file, plus explicit --enter/--exit/
    --min-hold (which win). Resolved against the checkpoint's label horizon by `resolve`."""

    spec: str = "plain"
    enter: float | None = None
    exit: float | None = None
    min_hold: int | None = None

    @property
    def manual(self) -> bool:
        return self.enter is not None or self.exit is not None or self.min_hold is not None

    def resolve(self, *, threshold: float, long_short: bool, horizon: int) -> str | Policy:
        """ "auto", "plain", or the manual `Policy` (min_hold defaults to the label horizon)."""
        if self.spec in ("auto", "plain") and not self.manual:
            return self.spec
        if self.spec in ("auto", "plain"):
            base = Policy(enter=threshold, exit=threshold, min_hold=horizon, long_short=long_short)
        else:
            # The flags override the file's values before they are checked (a --exit can fix an
            # exit above the file's enter); an --enter alone lowers the file's exit to it.
            raw = Policy.toml_values(self.spec)
            flags: dict[str, Any] = {"long_short": long_short}
            if self.enter is not None:
                flags["enter"] = self.enter
                file_exit = raw.get("exit", Policy.exit)
                if self.exit is None and isinstance(file_exit, (int, float)):
                    flags["exit"] = min(self.enter, file_exit)
            if self.exit is not None:
                flags["exit"] = self.exit
            if self.min_hold is not None:
                flags["min_hold"] = self.min_hold
            return Policy.from_dict(raw, self.spec, flags)
        enter = base.enter if self.enter is None else self.enter
        return dataclasses.replace(
            base,
            enter=enter,
            exit=min(enter, base.exit) if self.exit is None else self.exit,
            min_hold=base.min_hold if self.min_hold is None else self.min_hold,
        )


@dataclass(frozen=True)
class PolicyState:
    """Where a policy stands after a decision: the unit position (-1/0/+1) and for how many
    decisions it has been held (1 on the decision that entered it; 0 when flat)."""

    position: int = 0
    held: int = 0


def _next_position(policy: Policy, position: int, p: float) -> int:
    """The desired unit position at probability p from `position`, ignoring min_hold."""
    ls = policy.long_short
    if position > 0:
        if ls and p < 1.0 - policy.enter:
            return -1
        return 1 if p > policy.exit else 0
    if position < 0:
        if p > policy.enter:
            return 1
        return -1 if p < 1.0 - policy.exit else 0
    if p > policy.enter:
        return 1
    return -1 if ls and p < 1.0 - policy.enter else 0


def policy_step(policy: Policy, state: PolicyState, p: float | None) -> PolicyState:
    """One decision: the state after seeing P(up) = p. `p=None` (no usable prediction) holds the
    position and counts the time held. The target exposure is `state.position * max_position`."""
    if p is None or (state.position != 0 and state.held < policy.min_hold):
        return PolicyState(state.position, state.held + 1 if state.position else 0)
    nxt = _next_position(policy, state.position, float(p))
    if nxt == state.position:
        return PolicyState(nxt, state.held + 1 if nxt else 0)
    return PolicyState(nxt, 1 if nxt else 0)


def policy_positions(policy: Policy, prob_up: np.ndarray) -> np.ndarray:
    """Positions (float64, in units of equity) for a probability series, from flat.

    Equal to folding `policy_step` over the series (tested on real predictions), but without a
    Python step per row: each state's "leave" condition is a boolean array turned into a
    next-true index array once, and the loop jumps from one position change to the next (O(1)
    each), so the cost is O(n) numpy plus O(changes) Python. Without a band or a minimum hold
    the rule is stateless and fully vectorized. Measured by scripts/bench_policy.py.
    """
    p = np.asarray(prob_up, dtype=np.float64)
    n = p.size
    if policy.exit == policy.enter and policy.min_hold == 1:
        unit = (p > policy.enter).astype(np.float64)
        if policy.long_short:
            unit -= (p < 1.0 - policy.enter).astype(np.float64)
        return unit * policy.max_position
    short_entry = (p < 1.0 - policy.enter) if policy.long_short else np.zeros(n, dtype=bool)
    leave = {  # from state s, the rows at which the desired position differs from s
        0: (p > policy.enter) | short_entry,
        1: (p <= policy.exit) | short_entry,
        -1: (p >= 1.0 - policy.exit) | (p > policy.enter),
    }
    idx = np.arange(n)
    next_leave = {
        s: np.minimum.accumulate(np.where(c, idx, n)[::-1])[::-1] for s, c in leave.items()
    }
    at: list[int] = [0]
    to: list[int] = [0]
    pos, i = 0, 0
    while i < n:
        j = int(next_leave[pos][i])
        if j >= n:
            break
        pos = _next_position(policy, pos, float(p[j]))
        at.append(j)
        to.append(pos)
        # A new position is held for min_hold decisions before it may change again.
        i = j + (policy.min_hold if pos else 1)
    lengths = np.diff(np.array([*at, n]))
    return np.repeat(np.array(to, dtype=np.float64), lengths) * policy.max_position


def positions_from_probs(
    prob_up: np.ndarray, threshold: float = 0.5, long_short: bool = False
) -> np.ndarray:
    """+1 above `threshold`, -1 below 1 - threshold with long_short, else 0 (float64): the plain
    policy, computed directly (no state is needed when a position is re-decided every candle)."""
    check_settings(threshold=threshold, long_short=long_short)
    p = np.asarray(prob_up, dtype=np.float64)
    pos = (p > threshold).astype(np.float64)
    if long_short:
        pos -= (p < 1.0 - threshold).astype(np.float64)
    return pos


# -- fills --------------------------------------------------------------------------------------


def target_units(cash: float, units: float, target: float, price: float, fee_rate: float) -> float:
    """Units to hold after a fill at `price` so the position is `target` x equity.

    When a long grows, the fee is paid from the same equity, so the size solves
    u' * p = target * (equity - fee) with fee = (u' - u) * p * fee_rate: buying with all equity
    gets equity / (price * (1 + fee_rate)) units, the exchange's "buy with 100%" order.
    """
    equity = cash + units * price
    if target == 0 or equity <= 0:
        return 0.0
    naive = target * equity / price
    if target > 0 and naive > units:  # buying (also covering a short): fees come from equity
        return target * (equity + fee_rate * price * units) / (price * (1.0 + target * fee_rate))
    return naive


def order_fill(
    cash: float,
    units: float,
    target: float,
    open_price: float,
    fee_rate: float,
    slippage_rate: float,
) -> tuple[float, float, float] | None:
    """The one fill rule (paper broker and backtest): (delta units, fill price, fee) of a market
    order for `target` x equity at a candle's open, or None when nothing needs trading.

    The price moves against the trader by the slippage (up for a buy, down for a sell); the fee is
    `fee_rate` x the notional |delta| x price, paid in cash. An exit sells exactly the units held.
    """
    # The side, and so the slippage direction, follows from the unslipped target size.
    side = target_units(cash, units, target, open_price, fee_rate) - units
    if side == 0:
        return None
    price = open_price * (1.0 + slippage_rate if side > 0 else 1.0 - slippage_rate)
    delta = target_units(cash, units, target, price, fee_rate) - units
    if target == 0:
        delta = -units  # exits close exactly, with no float residue
    if delta == 0:
        return None
    return delta, price, abs(delta) * price * fee_rate


# -- performance --------------------------------------------------------------------------------


def max_drawdown(equity: np.ndarray, start: float = 1.0) -> float:
    """Largest peak-to-trough fall of an equity curve (including the starting equity), as <= 0."""
    e = np.concatenate([[start], np.asarray(equity, dtype=np.float64)])
    peak = np.maximum.accumulate(e)
    dd = np.divide(e, peak, out=np.zeros_like(e), where=peak > 0) - 1.0
    return float(dd.min())


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualized Sharpe ratio of per-period returns (risk-free 0); 0 when returns never vary."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return 0.0
    sd = r.std(ddof=1)
    if not np.isfinite(sd) or sd <= 1e-15:
        return 0.0
    return float(r.mean() / sd * math.sqrt(periods_per_year))


def periods_per_year(interval_seconds: float, weekends: bool = True) -> float:
    """Candles per year: calendar time for 24/7 markets; 252 trading days when weekends are absent.

    Without weekend candles an intraday interval counts 252 days of 24h / interval candles; markets
    with shorter sessions should pass their own factor.
    """
    if interval_seconds <= 0:
        raise ConfigError(f"candle interval must be positive, got {interval_seconds} s")
    if weekends:
        return YEAR_SECONDS / interval_seconds
    return TRADING_DAYS * DAY_SECONDS / interval_seconds


def has_weekend_candles(timestamps_ns: np.ndarray) -> bool:
    """True when any timestamp (int64 ns since the epoch, UTC: `data.timestamps_ns` makes them)
    is on a Saturday or Sunday."""
    days = np.asarray(timestamps_ns, dtype=np.int64) // (DAY_SECONDS * 1_000_000_000)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    return bool(np.any(weekday >= 5))


def covers_a_weekend_day(timestamps_ns: np.ndarray, interval_seconds: float) -> bool:
    """True when the span from the first candle to the end of the last holds a whole Saturday or
    Sunday (UTC), so that a market trading on weekends would have candles there."""
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    if ts.size == 0:
        return False
    day_ns = DAY_SECONDS * 1_000_000_000
    first = -(-int(ts.min()) // day_ns)  # the first day that starts inside the span
    end = (int(ts.max()) + round(interval_seconds * 1e9)) // day_ns  # days before it end inside
    return any((day + 3) % 7 >= 5 for day in range(first, min(end, first + 7)))


def annualization(interval_seconds: float, timestamps_ns: np.ndarray) -> tuple[float, str]:
    """Periods per year from the interval, and a human description of the basis.

    Pass the market's candles (the whole file), not an evaluated span: whether a market trades on
    weekends is a property of the market, and a span of weekdays from a 24/7 market would be
    annualised as a stock's. A span holding no whole weekend day cannot tell; it counts the
    calendar year (crypto, the common case) and the basis says so."""
    if has_weekend_candles(timestamps_ns):
        return (
            periods_per_year(interval_seconds, True),
            "calendar year (365 days; weekend candles present)",
        )
    if covers_a_weekend_day(timestamps_ns, interval_seconds):
        return periods_per_year(interval_seconds, False), "252 trading days (no weekend candles)"
    return (
        periods_per_year(interval_seconds, True),
        "calendar year (365 days; no whole weekend day in the candles to tell)",
    )
