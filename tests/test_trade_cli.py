"""`jaxtrader trade` / `portfolio` on a tiny checkpoint trained here: accounting by hand, refusals,
one-line errors, and real subprocesses (two strategies on one file, SIGKILL + resume, SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from jaxtrader.cli import cli, main
from jaxtrader.config import AppConfig, DataConfig, DatasetConfig, ModelConfig, TrainConfig
from jaxtrader.data import load_candles, synth_candles, write_candles
from jaxtrader.errors import StateError
from jaxtrader.trading.store import Store
from jaxtrader.training_run import run_training

# The same shapes as tests/test_inference.py, so the persistent compilation cache is shared.
W = 50


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trade")
    csv = write_candles(synth_candles(rows=1200, seed=1).frame, root / "synth.csv")
    cfg = AppConfig(
        data=DataConfig(path=str(csv), symbol="SYNTH/USD"),
        dataset=DatasetConfig(seq_len=W),
        model=ModelConfig(
            arch="lstm", num_layers=1, hidden=8, d_model=16, num_heads=2, ff_dim=32, dropout=0.0
        ),
        train=TrainConfig(
            epochs=1, batch_size=32, eval_batch_size=64, warmup_steps=2, ckpt_dir=str(root / "ck")
        ),
    )
    run = run_training(cfg)
    return {"root": root, "csv": csv, "ckpt": Path(run.summary["path"])}


def trade_args(s: dict[str, Path], db: Path, sid: str, *extra: str) -> list[str]:
    return ["trade", "--checkpoint", str(s["ckpt"]), "--feed", f"replay:{s['csv']}", "--state",
            str(db), "--strategy-id", sid, "--capital", "1000", "--fee-bps", "10",
            "--slippage-bps", "5", "--model-timeout-ms", "5000", *extra]  # fmt: skip


def with_feed(args: list[str], spec: str) -> list[str]:
    """`trade_args` with another --feed."""
    out = list(args)
    out[out.index("--feed") + 1] = spec
    return out


def one_line_error(code: int, err: str) -> str:
    """The `error: ...` line of a failed command (info records may precede it), checked."""
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_replay_of_the_test_split_matches_hand_accounting(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db = setup["root"] / "ref.db"
    code, out, err = run_cli(["--log-format", "json", *trade_args(setup, db, "ref")], capsys)
    assert code == 0, err
    manifest = json.loads((setup["ckpt"] / "manifest.json").read_text())
    test = manifest["splits"]["test"]
    frame = load_candles(setup["csv"]).frame
    in_test = frame.loc[pd.Timestamp(test["start"]) : pd.Timestamp(test["end"])]
    store = Store(db)
    signals = store.rows("signals", "ref")
    assert [pd.Timestamp(s["ts"]) for s in signals] == list(in_test.index)
    assert all(s["fallback"] is None for s in signals)  # warm-up covered the buffer
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "candle" for e in events) == len(in_test)
    # Replay the fills by hand: price = next open +- 5 bps, fee = 10 bps of notional.
    cash, units = 1000.0, 0.0
    fills = store.rows("fills", "ref")
    orders = {o["order_id"]: o for o in store.rows("orders", "ref")}
    assert fills, "the tiny model never traded; the test would prove nothing"
    for f in fills:
        ts = pd.Timestamp(f["ts"])
        assert ts == pd.Timestamp(orders[f["order_id"]]["decided_ts"]) + pd.Timedelta(1, unit="h")
        side = 1.0 if f["units"] > 0 else -1.0
        assert f["price"] == pytest.approx(frame.loc[ts, "open"] * (1 + side * 5e-4))
        assert f["fee"] == pytest.approx(abs(f["units"]) * f["price"] * 1e-3)
        cash -= f["units"] * f["price"] + f["fee"]
        units += f["units"]
        assert cash >= -1e-9  # long-only sizing never borrows
    last_close = float(in_test["close"].iloc[-1])
    equity = store.rows("equity", "ref")
    assert equity[-1]["equity"] == pytest.approx(cash + units * last_close)
    summary = next(e for e in events if e["event"] == "trade_summary")
    assert json.loads(out)["equity"] == summary["equity"]  # the result document on stdout
    assert summary["fees"] == pytest.approx(sum(f["fee"] for f in fills))
    assert summary["equity"] == pytest.approx(cash + units * last_close)
    assert summary["return"] == pytest.approx((cash + units * last_close) / 1000.0 - 1.0)
    assert summary["fills"] == len(fills)


def test_replay_without_risk_limits_agrees_with_the_evaluate_backtest(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two independent implementations (vectorized evaluate backtest, per-candle paper broker)
    must agree on the same checkpoint, split, threshold and costs."""
    db = setup["root"] / "norisk.db"
    off = ["--daily-drawdown", "1", "--breaker-losses", "1000000", "--breaker-failures", "1000000"]
    args = ["trade", "--checkpoint", str(setup["ckpt"]), "--feed", f"replay:{setup['csv']}",
            "--state", str(db), "--strategy-id", "n", "--fee-bps", "10", *off]  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    # The trade ran the plain rule (no policy recorded yet), so evaluate does too.
    code, out, err = run_cli(["evaluate", "--checkpoint", str(setup["ckpt"]), "--json",
                              "--policy", "plain"], capsys)  # fmt: skip
    assert code == 0, err
    backtest = json.loads(out)["backtest"]
    code, out, _ = run_cli(["portfolio", "--state", str(db), "--json"], capsys)
    mine = json.loads(out)[0]
    assert backtest["trades"] > 0
    assert mine["trades_closed"] + (mine["position_units"] != 0) == backtest["trades"]
    # evaluate marks an open last position at the close of the next candle and liquidates it
    # (one exit fee); do the same by hand from the state file.
    store = Store(db)
    last = store.rows("positions", "n")[-1]
    nxt = load_candles(setup["csv"]).frame.loc[pd.Timestamp(last["ts"]) + pd.Timedelta(1, unit="h")]
    units, close = last["units"], float(nxt["close"])
    liquidated = last["cash"] + units * close - abs(units) * close * 1e-3
    # One fee rule (decisions.order_fill) on both sides: they agree to float precision.
    assert liquidated / 10_000 == pytest.approx(1 + backtest["total_return"], rel=1e-9)
    fees = mine["fees"] + abs(units) * close * 1e-3
    assert fees / 10_000 == pytest.approx(backtest["fees_paid"], rel=1e-9)


def test_restart_with_other_config_or_model_is_refused(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db = setup["root"] / "refuse.db"
    args = trade_args(setup, db, "x", "--start", "2023-02-18T00:00", "--end", "2023-02-18T03:00")
    assert run_cli(args, capsys)[0] == 0
    err = one_line_error(*run_cli([*args, "--max-position", "0.5"], capsys)[::2])
    assert "different config (changed: risk)" in err and "--new-strategy" in err
    con = sqlite3.connect(str(db))  # the refused start left no runner claim behind
    assert con.execute("SELECT * FROM runners").fetchall() == []
    con.close()
    code, _, err = run_cli([*args, "--max-position", "0.5", "--new-strategy"], capsys)
    assert code == 0, err
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        con = sqlite3.connect(str(db))
        con.execute(
            "INSERT OR REPLACE INTO runners VALUES ('x', ?, ?, 'now')",
            (socket.gethostname(), holder.pid),
        )
        con.commit()
        con.close()
        err = one_line_error(*run_cli([*args, "--max-position", "0.5"], capsys)[::2])
        assert "'x'" in err and "already running" in err  # a second runner of one id
    finally:
        holder.kill()
        holder.wait()
    # Same command again: resumes after the last candle, nothing is processed twice.
    assert run_cli([*args, "--max-position", "0.5"], capsys)[0] == 0
    assert len(Store(db).rows("signals", "x")) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "nowhere/v1", "--feed", "replay:x.csv"], "nowhere"),
        (["--arch", "lstm", "--feed", "bogus"], "--feed 'bogus' is not replay:PATH or ccxt"),
        (["--feed", "replay:x.csv"], "--checkpoint PATH or --arch"),
        (["--arch", "lstm", "--feed", "replay:x.csv", "--strategy-id", " "],
         "--strategy-id ' ' must be a non-blank name"),
        (["--arch", "lstm", "--feed", "replay:x.csv", "--strategy-id", "a "],
         "--strategy-id 'a ' must be a non-blank name without surrounding spaces"),
    ],
)  # fmt: skip
def test_bad_start_is_one_line_exit_2(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The case's own --strategy-id, if any, comes last and wins.
    code, _, err = run_cli(
        ["trade", "--state", str(tmp_path / "s.db"), "--strategy-id", "a", *args], capsys
    )
    assert message in one_line_error(code, err)


def test_an_empty_replay_range_names_the_bound_that_came_from_the_test_split(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only --start typed, after the test split's end: "replay range is empty: start ... is after
    end ..." named an end the user never gave, and no fix."""
    test = json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]
    start, end = pd.Timestamp(test["start"]), pd.Timestamp(test["end"])
    later, earlier = end + pd.Timedelta(1, unit="h"), start - pd.Timedelta(1, unit="h")
    db = tmp_path / "r.db"
    for extra, expected in (
        (["--start", later.isoformat()], f"--start {later.isoformat()} is after the replay's end "
         f"{end.isoformat()} (the test split's; no --end given); pass --end too, or an earlier "
         "--start"),
        (["--end", earlier.isoformat()], f"--end {earlier.isoformat()} is before the replay's "
         f"start {start.isoformat()} (the test split's; no --start given); pass --start too, or a "
         "later --end"),
        (["--start", later.isoformat(), "--end", end.isoformat()], f"--start {later.isoformat()} "
         f"is after --end {end.isoformat()}; pass a --start before --end"),
    ):  # fmt: skip
        err = one_line_error(*run_cli(trade_args(setup, db, "r", *extra), capsys)[::2])
        assert err == f"error: {expected}"
    assert not db.exists()


def test_corrupt_checkpoint_and_missing_ccxt_are_one_line(
    setup: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "v9"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    code, _, err = run_cli(["trade", "--checkpoint", str(bad), "--feed", "replay:x.csv",
                            "--state", str(tmp_path / "s.db"), "--strategy-id", "a"], capsys)  # fmt: skip
    assert "corrupt" in one_line_error(code, err)
    # ccxt absent even where it is installed (there, this run would try the real binance and,
    # without a network, retry for 17 minutes).
    monkeypatch.setitem(sys.modules, "ccxt", None)
    code, _, err = run_cli(["trade", "--checkpoint", str(setup["ckpt"]), "--feed", "ccxt:binance",
                            "--state", str(tmp_path / "s.db"), "--strategy-id", "a"], capsys)  # fmt: skip
    assert "pip install 'jaxtrader[live]'" in one_line_error(code, err)


def test_portfolio_of_a_missing_file_or_id_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_line_error(*run_cli(["portfolio", "--state", str(tmp_path / "no.db")], capsys)[::2])
    assert "does not exist" in err and not (tmp_path / "no.db").exists()
    folder = tmp_path / "state.db"  # a folder where the file goes: said so, not "damaged"
    folder.mkdir()
    err = one_line_error(*run_cli(["portfolio", "--state", str(folder)], capsys)[::2])
    assert err == f"error: state file {folder} is a folder; pass --state the file in it"
    with pytest.raises(StateError, match=rf"^state file {folder} is a folder; pass --state a "):
        Store(folder)
    Store(tmp_path / "empty.db").close()
    code, out, _ = run_cli(["portfolio", "--state", str(tmp_path / "empty.db")], capsys)
    assert code == 0 and "no strategies" in out
    args = ["portfolio", "--state", str(tmp_path / "empty.db"), "--strategy-id", "zz"]
    assert "no strategy 'zz'" in one_line_error(*run_cli(args, capsys)[::2])


def test_trade_and_portfolio_refuse_another_applications_database(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "tradesv3.sqlite"  # freqtrade's state file, with its own `trades` table
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, pair TEXT)")
    before = db.read_bytes()
    for args in (trade_args(setup, db, "a"), ["portfolio", "--state", str(db)]):
        err = one_line_error(*run_cli(args, capsys)[::2])
        assert f"state file {db} is another application's database" in err
        assert "pass --state a new file name" in err
    assert db.read_bytes() == before


def test_help_says_paper_trading_only() -> None:
    out = CliRunner().invoke(cli, ["trade", "--help"]).output
    assert "PAPER TRADING ONLY" in out and "real order placement is out of scope" in out
    for flag in ("--daily-drawdown", "--breaker-failures", "--cooldown", "--model-timeout-ms"):
        assert flag in out


def test_shared_flags_help_describes_trade() -> None:
    """--threshold's shared help said "beside another policy, its comparison", but trade refuses
    --threshold under a policy; --symbol spoke of "the ccxt market for trade" in trade's own help."""
    from jaxtrader.cli.trade_cmds import trade

    helps = {p.name: getattr(p, "help", "") or "" for p in trade.params}
    assert "comparison" not in helps["threshold"]
    assert "refused where a policy is in force" in helps["threshold"]
    assert "the market a ccxt: feed trades (default: the model's)" in helps["symbol"]


# -- real subprocesses ------------------------------------------------------------------------


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "jaxtrader", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def processed(db: Path, sid: str) -> int:
    try:
        con = sqlite3.connect(str(db), timeout=10)
        try:
            q = "SELECT COUNT(*) FROM signals WHERE strategy_id = ?"
            return int(con.execute(q, (sid,)).fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def wait_for(db: Path, sid: str, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while processed(db, sid) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"{sid} finished before it could be interrupted: {proc.stderr}"


def final(db: Path, sid: str) -> tuple[Any, ...]:
    store = Store(db)
    fills = [(f["ts"], f["units"], f["price"], f["fee"]) for f in store.rows("fills", sid)]
    equity = [(e["ts"], e["equity"]) for e in store.rows("equity", sid)]
    return fills, equity


def test_two_strategies_side_by_side_kill_resume_and_sigterm(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A and B share one state file in two processes. B's drawdown limit is tiny (it halts);
    A is SIGKILLed mid-run and restarted; B gets SIGTERM and stops cleanly, then resumes. A must
    end identical to the uninterrupted reference run, B unaffected by A and vice versa."""
    # 650 candles, all the file allows before the test end, for both: each must still be running
    # when it is interrupted (A at a third, B at half), even when this polling process is starved
    # on a busy machine (the tests run two at a time; the trading hot path does 300 candles of the
    # tiny model in about a second). Both spans reach into the tiny fixture's training span: this
    # tests the mechanics only.
    end = pd.Timestamp(
        json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]["end"]
    )
    n_all = 650
    span = ["--start", (end - pd.Timedelta(n_all - 1, unit="h")).isoformat(), "--end",
            end.isoformat(), "--in-sample"]  # fmt: skip
    ref = setup["root"] / "ref650.db"
    assert run_cli(trade_args(setup, ref, "ref", *span), capsys)[0] == 0
    n = len(final(ref, "ref")[1])
    assert n == n_all
    db = setup["root"] / "shared.db"
    b_flags = [*span, "--daily-drawdown", "0.0005", "--max-position", "0.5"]
    a = spawn(trade_args(setup, db, "A", *span))
    b = spawn(trade_args(setup, db, "B", *b_flags))
    wait_for(db, "A", n // 3, a)
    a.send_signal(signal.SIGKILL)
    a.communicate()  # reaps it and closes its pipes
    wait_for(db, "B", n // 2, b)
    b.send_signal(signal.SIGTERM)
    out_b, err_b = b.communicate(timeout=60)
    assert b.returncode == 0, err_b
    assert "strategy" in out_b and "B" in out_b  # the summary table
    assert "trade_stopped" in err_b
    n_b = processed(db, "B")
    assert n // 2 <= n_b < n
    a2 = spawn(trade_args(setup, db, "A", *span))
    b2 = spawn(trade_args(setup, db, "B", *b_flags))
    for p in (a2, b2):
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    # A, killed and resumed next to B, ends exactly like the uninterrupted run.
    assert final(db, "A") == final(ref, "ref")
    store = Store(db)
    for sid, total in (("A", n), ("B", n)):
        ts = [s["ts"] for s in store.rows("signals", sid)]
        assert len(ts) == len(set(ts)) == total  # none twice, none lost
        orders = {o["order_id"] for o in store.rows("orders", sid) if o["status"] == "filled"}
        assert orders == {f["order_id"] for f in store.rows("fills", sid)}
    counts_b = store.event_counts("B")
    assert counts_b.get("daily_drawdown", 0) >= 1
    units_b = [f["units"] for f in store.rows("fills", "B")]
    assert units_b and np.all(np.abs(np.array(units_b)) > 0)
    # portfolio shows both side by side.
    code, out, _ = run_cli(["portfolio", "--state", str(db), "--json"], capsys)
    rows = {r["strategy_id"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {"A", "B"}
    assert rows["A"]["equity"] == pytest.approx(final(ref, "ref")[1][-1][1])
    assert rows["B"]["risk_event_kinds"].get("daily_drawdown", 0) >= 1
    code, out, _ = run_cli(["portfolio", "--state", str(db)], capsys)
    assert code == 0 and "sharpe" in out and "max_dd" in out
    assert out.count("\n") >= 3


def test_portfolio_trades_export_and_buy_and_hold(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14: `portfolio --trades` (totals = the strategy's own PnL and fees) and buy-and-hold
    over the strategy's own span beside it."""
    db = setup["root"] / "exp.db"
    assert run_cli(trade_args(setup, db, "exp"), capsys)[0] == 0
    out_csv = setup["root"] / "paper_trades.csv"
    code, out, err = run_cli(["portfolio", "--state", str(db), "--json", "--trades",
                              str(out_csv)], capsys)  # fmt: skip
    assert code == 0, err
    mine = json.loads(out)[0]
    trades = pd.read_csv(out_csv)
    assert list(trades.columns) == [
        "strategy_id", "entry_time", "exit_time", "status", "side", "entry_price", "exit_price",
        "size", "holding_candles", "fees", "pnl_gross", "pnl_net",
    ]  # fmt: skip
    store = Store(db)
    fills = store.rows("fills", "exp")
    closed = trades[trades["status"] == "closed"]
    assert len(closed) == mine["trades_closed"] > 0
    assert len(trades) - len(closed) == int(mine["position_units"] != 0)
    # Net PnL of closed trades is what the manager recorded at the closing fill.
    recorded = [f["trade_pnl"] for f in fills if f["trade_pnl"] is not None]
    np.testing.assert_allclose(closed["pnl_net"], recorded, rtol=1e-12, atol=1e-9)
    # Totals: every trade's net PnL sums to the equity change, its fees to the fees paid.
    assert trades["pnl_net"].sum() == pytest.approx(mine["equity"] - 1000.0, abs=1e-6)
    assert trades["fees"].sum() == pytest.approx(sum(f["fee"] for f in fills), abs=1e-9)
    assert trades["pnl_gross"].sum() == pytest.approx(
        trades["pnl_net"].sum() + trades["fees"].sum(), abs=1e-9
    )
    first = closed.iloc[0]
    first_fill = next(f for f in fills if f["ts"] == first["entry_time"])
    assert first["entry_price"] == pytest.approx(first_fill["price"])
    # A trade opened by one fill has that fill's price as its entry, to the last bit: the CSV
    # printed one-ulp noise (107711.56000000001) from averaging a single fill.
    for _, t in trades.iterrows():
        entry_fills = [f for f in fills if f["ts"] == t["entry_time"]]
        if len(entry_fills) == 1 and abs(entry_fills[0]["units"]) == t["size"]:
            assert t["entry_price"] == entry_fills[0]["price"]

    # Buy-and-hold: the whole capital at the open after the first candle (+5 bps slippage, 10 bps
    # fee on the notional), held to the last close of the strategy's candles.
    equity = store.rows("equity", "exp")
    frame = load_candles(setup["csv"]).frame
    price = frame.loc[pd.Timestamp(equity[1]["ts"]), "open"] * (1 + 5e-4)
    units = 1000.0 / (price * (1 + 1e-3))
    expected = units * equity[-1]["close"] / 1000.0 - 1.0
    assert mine["buy_and_hold"]["return"] == pytest.approx(expected, rel=1e-9)
    # Its Sharpe is annualised like the strategy's: hourly candles with weekends are 8760 a year.
    # `.asi8` of the stored ISO times is microseconds on pandas 3, which read as 1970 weekdays
    # and gave 252 x 24 = 6048 (a Sharpe 0.83 times the right one).
    assert any(pd.Timestamp(e["ts"]).weekday() >= 5 for e in equity)
    cash = 1000.0 - units * price * (1 + 1e-3)
    bh_equity = np.array([1000.0, *(cash + units * e["close"] for e in equity[1:])])
    r = np.concatenate([[0.0], bh_equity[1:] / bh_equity[:-1] - 1.0])
    assert mine["bh_sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(8760.0), rel=1e-9)
    assert mine["bh_return"] == mine["buy_and_hold"]["return"]
    assert mine["buy_and_hold"]["last"] == equity[-1]["ts"] == mine["last"]
    store.close()
    code, out, _ = run_cli(["portfolio", "--state", str(db)], capsys)
    header = out.splitlines()[0].split()
    assert header[header.index("max_dd") + 1 : header.index("max_dd") + 5] == [
        "b&h", "return", "b&h", "sharpe",
    ]  # fmt: skip


def test_pnl_is_named_gross_and_net_and_clamps_are_not_risk_events(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14.6: `realized_pnl` read as net beside a losing return, and every routine
    --max-position clamp counted as a risk event."""
    db = setup["root"] / "clamp.db"
    code, out, err = run_cli(
        ["--log-format", "json", *trade_args(setup, db, "half", "--max-position", "0.5")], capsys
    )
    assert code == 0, err
    traded = json.loads(out)
    code, out, _ = run_cli(["portfolio", "--state", str(db), "--json"], capsys)
    mine = json.loads(out)[0]
    for doc in (traded, mine):
        assert "realized_pnl" not in doc
        assert doc["pnl_net"] == pytest.approx(doc["equity"] - 1000.0, abs=1e-9)
        assert doc["pnl_gross"] == pytest.approx(doc["pnl_net"] + doc["fees"], abs=1e-9)
    store = Store(db)
    events = store.rows("risk_events", "half")
    fills = store.rows("fills", "half")
    store.close()
    clamps = sum(e["kind"] == "clamp" for e in events)
    assert clamps > 0 and mine["position_clamps"] == clamps
    real = [e for e in events if e["category"] == "risk" and e["kind"] != "clamp"]
    assert mine["risk_events"] == len(real) and "clamp" not in mine["risk_event_kinds"]
    assert mine["fees"] == pytest.approx(sum(f["fee"] for f in fills))
    assert mine["pnl_gross_realized"] == pytest.approx(sum(f["realized"] for f in fills))


# -- refusals found by the audit: market, limits, damaged or locked state, in-sample, interval ---


def test_another_market_is_refused_for_the_model_and_for_a_stored_strategy(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SYNTH/USD model on a file named as ETH/USDT (its prices a tenth): refused unless
    --other-market; a SYNTH/USD strategy resumed on it is refused even then, its state intact."""
    frame = load_candles(setup["csv"]).frame
    eth = tmp_path / "binance_ethusdt_1h.csv"
    scaled = frame.drop(columns="filled", errors="ignore").copy()
    scaled[["open", "high", "low", "close"]] /= 10.0
    write_candles(scaled, eth)
    db = tmp_path / "m.db"
    test = json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]
    first_end = (pd.Timestamp(test["start"]) + pd.Timedelta(5, unit="h")).isoformat()
    args = trade_args(setup, db, "m", "--end", first_end)
    assert run_cli(args, capsys)[0] == 0
    before = final(db, "m")
    on_eth = with_feed(trade_args(setup, db, "m"), f"replay:{eth}")
    err = one_line_error(*run_cli(on_eth, capsys)[::2])
    assert f"the model was trained on SYNTH/USD but {eth} holds ETH/USDT" in err
    assert "pass --other-market" in err
    # A file whose name gives no market: the market came from --symbol, and the error says so.
    err = one_line_error(*run_cli([*trade_args(setup, db, "m"), "--symbol", "ETH/USDT"],
                                  capsys)[::2])  # fmt: skip
    assert "the model was trained on SYNTH/USD but --symbol asks for ETH/USDT" in err
    err = one_line_error(*run_cli([*on_eth, "--other-market"], capsys)[::2])
    assert f"strategy 'm' in {db} trades SYNTH/USD (started on replay:{setup['csv']})" in err
    assert f"not ETH/USDT (replay:{eth})" in err
    assert "--new-strategy" in err and "--strategy-id" in err
    assert final(db, "m") == before  # nothing valued at the other market's prices
    # The same market through the same file resumes; a fresh id may trade ETH out of market.
    code, _, err = run_cli(trade_args(setup, db, "m"), capsys)
    assert code == 0, err
    assert len(final(db, "m")[1]) > len(before[1]) == 6
    args = with_feed(trade_args(setup, db, "e"), f"replay:{eth}")
    code, _, err = run_cli([*args, "--other-market"], capsys)
    assert code == 0, err
    store = Store(db)
    assert store.strategy("e")["config"]["symbol"] == "ETH/USDT"  # type: ignore[index]
    store.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-position", "-1"], "max"),
        (["--max-position", "5"], "--max-position must be in (0, 1]"),
        (["--max-position", "nan"], "max"),
        (["--slippage-bps", "-50"], "slippage"),
        (["--fee-bps", "-10"], "fee"),
        (["--stop-loss", "-0.1"], "stop"),
        (["--take-profit", "-0.1"], "take"),
        (["--daily-drawdown", "-0.1"], "drawdown"),
        (["--daily-drawdown", "2"], "drawdown"),
        (["--cooldown", "-1"], "cooldown"),
        (["--breaker-failures", "0"], "breaker"),
        (["--breaker-losses", "-3"], "breaker"),
        (["--model-timeout-ms", "0"], "timeout"),
        (["--capital", "nan"], "--capital must be a positive amount, got nan"),
        (["--capital", "inf"], "--capital must be a positive amount, got inf"),
    ],
)
def test_nonsense_limits_and_costs_are_refused_before_the_state_file_is_touched(
    setup: dict[str, Path],
    tmp_path: Path,
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "limits.db"
    err = one_line_error(*run_cli(trade_args(setup, db, "x", *flags), capsys)[::2])
    # The message names the flag (or its config key, as the config layer spells it).
    assert message in err.replace("_", "-"), err
    assert not db.exists()


def test_portfolio_shows_the_readable_strategies_and_names_a_broken_one(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A strategy stored with a negative fee by an older jaxtrader made every `portfolio` run an
    internal error; now the others are shown and the broken one is named, exit 2."""
    db = tmp_path / "p.db"
    test = json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]
    end = (pd.Timestamp(test["start"]) + pd.Timedelta(30, unit="h")).isoformat()
    for sid in ("good", "bad"):
        assert run_cli(trade_args(setup, db, sid, "--end", end), capsys)[0] == 0
    with sqlite3.connect(db) as con:
        cfg = json.loads(con.execute("SELECT config_json FROM strategies WHERE strategy_id = "
                                     "'bad'").fetchone()[0])  # fmt: skip
        con.execute("UPDATE strategies SET config_json = ? WHERE strategy_id = 'bad'",
                    (json.dumps({**cfg, "fee_bps": -10.0}),))  # fmt: skip
    code, out, err = run_cli(["portfolio", "--state", str(db), "--json"], capsys)
    assert [r["strategy_id"] for r in json.loads(out)] == ["good"]
    err = one_line_error(code, err)
    assert f"left out 1 strategy of {db}" in err and "'bad' (ValueError: invalid fill" in err
    assert "--new-strategy" in err


def _state_file(setup: dict[str, Path], db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test = json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]
    end = (pd.Timestamp(test["start"]) + pd.Timedelta(20, unit="h")).isoformat()
    assert run_cli(trade_args(setup, db, "s", "--end", end), capsys)[0] == 0
    # Everything into the main file, so damaging it below damages the state itself.
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_damaged_state_file_is_one_line_for_trade_and_portfolio(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "damaged.db"
    _state_file(setup, db, capsys)
    data = bytearray(db.read_bytes())
    assert len(data) > 8192
    for i in range(4096, len(data)):  # page 1 (header, schema) intact; every table page damaged
        data[i] ^= 0x5A
    db.write_bytes(bytes(data))
    for args in (trade_args(setup, db, "s"), ["portfolio", "--state", str(db)]):
        err = one_line_error(*run_cli(args, capsys)[::2])
        assert f"state file {db} is not a usable SQLite database" in err
        assert ("damaged pages" in err or "malformed" in err) and "from a backup" in err


def test_locked_state_file_says_busy_and_retry_not_restore(
    setup: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jaxtrader.trading.store as store_module

    db = tmp_path / "locked.db"
    _state_file(setup, db, capsys)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for args in (trade_args(setup, db, "s"), ["portfolio", "--state", str(db)]):
            err = one_line_error(*run_cli(args, capsys)[::2])
            assert f"state file {db} is busy" in err and "locked" in err
            assert "retry when that process is done" in err
            assert "restore" not in err and "new file name" not in err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    code, _, err = run_cli(trade_args(setup, db, "s"), capsys)  # the file was fine all along
    assert code == 0, err


def test_replay_start_inside_the_training_span_needs_in_sample(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((setup["ckpt"] / "manifest.json").read_text())
    train_end = pd.Timestamp(manifest["splits"]["train"]["end"])
    allowed = train_end + pd.Timedelta(manifest["horizon"] + manifest["seq_len"], unit="h")
    assert allowed == pd.Timestamp(manifest["splits"]["val"]["start"])  # the split's own purge
    db = tmp_path / "ins.db"
    inside = ["--start", train_end.isoformat(), "--end", allowed.isoformat()]
    err = one_line_error(*run_cli(trade_args(setup, db, "i", *inside), capsys)[::2])
    assert f"--start {train_end.isoformat()} overlaps the training span" in err
    assert f"use --start {allowed.isoformat()} or later, or pass --in-sample" in err
    assert not db.exists()
    last = (allowed - pd.Timedelta(1, unit="h")).isoformat()
    args = trade_args(setup, db, "i", "--start", last, "--end", allowed.isoformat())
    assert "overlaps the training span" in one_line_error(*run_cli(args, capsys)[::2])
    code, _, err = run_cli(trade_args(setup, db, "o", "--start", allowed.isoformat(), "--end",
                                      allowed.isoformat()), capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(trade_args(setup, db, "i", *inside, "--in-sample"), capsys)
    assert code == 0, err
    assert len(Store(db).rows("signals", "i")) == manifest["horizon"] + manifest["seq_len"] + 1


def test_feed_of_another_interval_names_the_models(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    five = write_candles(synth_candles(rows=2_000, seed=2, interval="5m").frame,
                         tmp_path / "synth5m.csv")  # fmt: skip
    err = one_line_error(*run_cli(trade_args(setup, tmp_path / "iv.db", "v", "--feed",
                                             f"replay:{five}"), capsys)[::2])  # fmt: skip
    assert f"{five} holds 5m candles but the model was trained on 1h candles" in err
    assert "replay 1h candles of the market, or use a model trained on 5m candles" in err
    assert "--interval" not in err


def test_text_logs_without_a_terminal_get_progress_lines(
    setup: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no terminal there is no bar; a replay in text mode printed nothing until its
    summary. Now it says where it is every PROGRESS_EVERY candles and at the end."""
    import jaxtrader.trading.runner as runner

    monkeypatch.setattr(runner, "PROGRESS_EVERY", 20)
    test = json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]
    end = (pd.Timestamp(test["start"]) + pd.Timedelta(49, unit="h")).isoformat()
    code, _, err = run_cli(trade_args(setup, tmp_path / "p.db", "p", "--end", end), capsys)
    assert code == 0, err
    counts = [int(line.split("candles=")[1].split()[0])
              for line in err.splitlines() if " trade_progress " in line]  # fmt: skip
    assert counts == [20, 40, 50]
    assert all(" of=50 " in line for line in err.splitlines() if " trade_progress " in line)


def test_portfolio_trades_export_never_overwrites_the_state_file(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`portfolio --state X --trades X` replaced the state file with a CSV, exit 0: every
    strategy's state was gone."""
    db = tmp_path / "keep.db"
    _state_file(setup, db, capsys)
    before = db.read_bytes()
    err = one_line_error(*run_cli(["portfolio", "--state", str(db), "--trades", str(db)],
                                  capsys)[::2])  # fmt: skip
    assert (
        err == f"error: --trades {db} would overwrite what --state {db} holds; write it "
        "somewhere else"
    )
    assert db.read_bytes() == before


def test_threshold_ignored_by_the_policy_in_force_is_refused_before_the_model_loads(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trade --threshold 0.6` under the policy `evaluate --policy auto` recorded (or a TOML file)
    traded that policy, the threshold silently dropped. Refused before the state file opens."""
    import shutil

    from jaxtrader.checkpoint import record_policy

    vdir = Path(shutil.copytree(setup["ckpt"], tmp_path / "v1"))
    record_policy(vdir, {"rule": {"enter": 0.58, "exit": 0.53, "min_hold": 10}})
    db = tmp_path / "t.db"
    args = trade_args(setup, db, "t", "--threshold", "0.6")
    args[args.index("--checkpoint") + 1] = str(vdir)
    err = one_line_error(*run_cli(args, capsys)[::2])
    assert err == (
        "error: --threshold 0.6 has no effect under the policy recorded in the checkpoint by "
        "`evaluate --policy auto` (enter > 0.58, exit <= 0.53, min hold 10); pass --policy plain to "
        "trade long above --threshold, or drop --threshold"
    )
    toml = tmp_path / "p.toml"
    toml.write_text("enter = 0.6\nexit = 0.5\n")
    err = one_line_error(*run_cli([*args, "--policy", str(toml)], capsys)[::2])
    assert err.startswith(
        f"error: --threshold 0.6 has no effect under --policy {toml} (enter > 0.6"
    )
    assert not db.exists()


def test_dedupe_reads_a_replay_file_with_duplicate_timestamps(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The duplicate-timestamp error advised --dedupe, which trade did not have: a replay file
    with a repeated candle could not be traded without editing it."""
    lines = setup["csv"].read_text().splitlines(keepends=True)
    dup = tmp_path / "synth_dup.csv"
    dup.write_text("".join([*lines, lines[-1]]))
    args = with_feed(trade_args(setup, tmp_path / "d.db", "d"), f"replay:{dup}")
    err = one_line_error(*run_cli(args, capsys)[::2])
    assert "duplicate timestamp" in err and "evaluate, trade)" in err
    code, out, err = run_cli(["--log-format", "json", *args, "--dedupe"], capsys)
    assert code == 0, err
    test = json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]
    frame = load_candles(setup["csv"]).frame
    assert json.loads(out)["candles"] == len(frame.loc[test["start"] : test["end"]])
    err = one_line_error(*run_cli([*with_feed(args, "ccxt:binance"), "--dedupe"], capsys)[::2])
    assert (
        err == "error: --dedupe applies to a replay:PATH feed's file, not to --feed "
        "ccxt:binance; drop it"
    )


def test_bad_policy_advice_names_trades_own_choices(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trade advised `--policy auto`, which trade itself rejects (evaluate's choices)."""
    from jaxtrader.decisions import Policy
    from jaxtrader.errors import ConfigError

    db = tmp_path / "p.db"
    err = one_line_error(*run_cli([*trade_args(setup, db, "p"), "--policy", "auto"], capsys)[::2])
    # evaluate's --policy auto was read as a file name: "cannot read policy file auto: [Errno 2]"
    assert err == (
        "error: --policy auto is evaluate's: `jaxtrader evaluate --policy auto` chooses a policy "
        "on the val split and records it in the checkpoint, which trade applies with --policy "
        "checkpoint (the default); pass --policy checkpoint, plain or a TOML file"
    )
    bad = tmp_path / "p.toml"
    bad.write_text("enter 0.6\n")
    err = one_line_error(*run_cli([*trade_args(setup, db, "p"), "--policy", str(bad)], capsys)[::2])
    assert err.startswith(f"error: cannot read policy file {bad}: ")
    assert err.endswith("; pass --policy checkpoint, plain or a TOML file")
    assert not db.exists()
    with pytest.raises(ConfigError, match=r"; pass --policy auto, plain or a TOML file$"):
        Policy.from_toml(bad)  # evaluate's advice is unchanged


def test_the_policy_in_force_is_named_and_standing_aside_is_explained(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint whose recorded policy stands aside (every policy lost on val) traded nothing,
    and nothing said why or which rule was in force: it looked like a broken strategy."""
    import shutil

    from jaxtrader.checkpoint import record_policy
    from jaxtrader.decisions import Policy

    vdir = Path(shutil.copytree(setup["ckpt"], tmp_path / "v1"))
    record_policy(vdir, {"rule": Policy.flat().to_dict()})
    args = trade_args(setup, tmp_path / "a.db", "aside")
    args[args.index("--checkpoint") + 1] = str(vdir)
    code, out, err = run_cli(["--log-format", "json", *args], capsys)
    assert code == 0, err
    events = {e["event"]: e for e in map(json.loads, err.splitlines()) if e.get("event")}
    assert events["trade_start"]["policy"] == (
        "stand aside (never trades) (recorded in the checkpoint by `evaluate --policy auto`)"
    )
    assert events["policy_stands_aside"]["message"] == (
        "note: strategy 'aside' stands aside (evaluate found no policy with a positive net Sharpe "
        "on the val split): it records signals and places no orders; to trade anyway use --policy "
        "plain or a policy file, with another --strategy-id or --new-strategy"
    )
    assert json.loads(out)["fills"] == 0
    code, out, err = run_cli([*trade_args(setup, tmp_path / "p.db", "p", "--policy", "plain",
                                          "--long-short")], capsys)  # fmt: skip
    assert code == 0, err
    assert (
        "policy=enter > 0.5, no band, min hold 1, long-short (--policy plain)" in err
        and "stands aside" not in err
    )


def _dump(db: Path) -> list[str]:
    con = sqlite3.connect(str(db))
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_resume_with_a_later_start_is_refused_and_an_earlier_one_resumes(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A later --start on resume skipped the candles in between without a word."""
    db = tmp_path / "r.db"
    base = trade_args(setup, db, "r")
    assert (
        run_cli([*base, "--start", "2023-02-18T00:00", "--end", "2023-02-18T03:00"], capsys)[0] == 0
    )
    before = _dump(db)
    later = [*base, "--start", "2023-02-18T06:00", "--end", "2023-02-18T08:00"]
    err = one_line_error(*run_cli(later, capsys)[::2])
    assert err == (
        f"error: strategy 'r' in {db} has run up to the candle of 2023-02-18T03:00:00+00:00: "
        "--start 2023-02-18T06:00:00+00:00 would skip the 2 candle(s) in between and leave a hole "
        "in its history; pass --start 2023-02-18T04:00:00+00:00 to continue after it, or use a "
        "new --strategy-id"
    )
    assert _dump(db) == before  # refused before the state file is written
    # The next candle itself, then an earlier --start: both resume where the strategy stopped.
    assert (
        run_cli([*base, "--start", "2023-02-18T04:00", "--end", "2023-02-18T06:00"], capsys)[0] == 0
    )
    assert (
        run_cli([*base, "--start", "2023-02-18T00:00", "--end", "2023-02-18T08:00"], capsys)[0] == 0
    )
    store = Store(db)
    ts = [pd.Timestamp(s["ts"]) for s in store.rows("signals", "r")]
    store.close()
    assert ts == list(pd.date_range("2023-02-18T00:00", "2023-02-18T08:00", freq="h", tz="UTC"))
    # A fresh id may start anywhere; so may --new-strategy on this one.
    assert run_cli([*trade_args(setup, db, "r2"), *later[-4:]], capsys)[0] == 0
    assert run_cli([*later, "--new-strategy"], capsys)[0] == 0


def test_resume_without_start_after_an_earlier_span_is_refused(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A strategy run on a span before the test split, resumed without --start, would replay
    from the test split's start and skip the candles in between, as a later --start would."""
    test_start = pd.Timestamp(
        json.loads((setup["ckpt"] / "manifest.json").read_text())["splits"]["test"]["start"]
    )
    db = tmp_path / "d.db"
    base = trade_args(setup, db, "d", "--in-sample")
    early = [(test_start - pd.Timedelta(h, unit="h")).isoformat() for h in (10, 8)]
    assert run_cli([*base, "--start", early[0], "--end", early[1]], capsys)[0] == 0
    before = _dump(db)
    err = one_line_error(*run_cli(base, capsys)[::2])
    next_candle = (test_start - pd.Timedelta(7, unit="h")).isoformat()
    assert err == (
        f"error: strategy 'd' in {db} has run up to the candle of {early[1]}: the replay start "
        f"{test_start.isoformat()} (the test split's; no --start given) would skip the 7 "
        f"candle(s) in between and leave a hole in its history; pass --start {next_candle} to "
        "continue after it, or use a new --strategy-id"
    )
    assert _dump(db) == before
