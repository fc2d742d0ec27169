"""SQLite state: atomic candles, config/model checks, shared files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from jaxtrader.errors import StateError
from jaxtrader.trading.broker import Order
from jaxtrader.trading.portfolio import Portfolio
from jaxtrader.trading.records import (
    EquitySnapshot,
    PositionSnapshot,
    SignalRecord,
    StrategyState,
)
from jaxtrader.trading.store import (
    APPLICATION_ID,
    SCHEMA,
    SCHEMA_VERSION,
    CandleCommit,
    CandleRow,
    Store,
)

MODEL = {"hash": "m1", "checkpoint": "ckpt/a"}


def _state(n: int) -> StrategyState:
    return StrategyState(Portfolio(cash=100.0), next_order_id=n)


def _commit(ts: str, equity: float, order: Order | None = None) -> CandleCommit:
    return CandleCommit(
        ts=ts,
        state=_state(7),
        candles=[CandleRow(ts, 1.0, 2.0, 0.5, 1.5, 10.0)],
        signal=SignalRecord(
            prob_up=0.6,
            desired=1.0,
            fallback=None,
            action="allow",
            reason="signal",
            target=1.0,
            latency_ms=1.0,
        ),
        position=PositionSnapshot(
            units=0.0, avg_entry=0.0, cash=equity, realized_pnl=0.0, fees=0.0
        ),
        equity=EquitySnapshot(close=1.5, equity=equity, unrealized=0.0),
        new_order=order,
        events=[("risk", "clamp", "max_position")],
    )


def _loaded(store: Store, sid: str) -> tuple[str | None, dict[str, Any]] | None:
    """The stored state as (last ts, JSON document): compared as documents, because a dataclass
    holding NaN (`last_close` before the first candle) is never equal to itself on Python 3.13,
    whose dataclass __eq__ compares field by field instead of as tuples."""
    loaded = store.load_state(sid)
    return None if loaded is None else (loaded[0], loaded[1].to_dict())


def test_register_refuses_other_model_or_config(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store.register("a", {"fee_bps": 10}, MODEL) is True
    assert store.register("a", {"fee_bps": 10}, MODEL) is False
    with pytest.raises(StateError, match=r"different config \(changed: fee_bps\).*--new-strategy"):
        store.register("a", {"fee_bps": 5}, MODEL)
    with pytest.raises(StateError, match=r"checkpoint ckpt/a .* not ckpt/b"):
        store.register("a", {"fee_bps": 10}, {"hash": "m2", "checkpoint": "ckpt/b"})
    store.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 100.0))
    assert store.register("a", {"fee_bps": 5}, MODEL, fresh=True) is True
    assert store.rows("equity", "a") == [] and store.load_state("a") is None


def test_commit_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.register("a", {}, MODEL)
    order = Order(1, pd.Timestamp("2024-01-01T00:00:00+00:00"), 1.0, "s")
    store.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 100.0, order))
    # The same candle again violates the primary keys half-way through: nothing may stick.
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 999.0))
    assert [r["equity"] for r in store.rows("equity", "a")] == [100.0]
    assert len(store.rows("signals", "a")) == 1
    assert store.event_counts("a") == {"clamp": 1}
    assert _loaded(store, "a") == ("2024-01-01T00:00:00+00:00", _state(7).to_dict())
    assert store.rows("orders", "a")[0]["status"] == "pending"


def test_two_connections_share_one_file_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    one, two = Store(path), Store(path)
    assert one.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    one.register("a", {}, MODEL)
    two.register("b", {}, MODEL)
    one.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 1.0))
    two.commit_candle("b", _commit("2024-01-01T00:00:00+00:00", 2.0))
    assert one.strategy_ids() == ["a", "b"]
    assert [r["equity"] for r in one.rows("equity", "b")] == [2.0]
    assert one.rows("equity", "a")[0]["equity"] == 1.0


def test_history_returns_last_n_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.register("a", {}, MODEL)
    rows = [CandleRow(f"2024-01-01T0{i}:00:00+00:00", i, i, i, i, i) for i in range(5)]
    store.commit_warmup("a", _state(1), rows)
    assert [r.open for r in store.history("a", 3)] == [2, 3, 4]
    assert _loaded(store, "a") == (None, _state(1).to_dict())


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite at all, just text" * 100)
    with pytest.raises(StateError) as e:
        Store(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "not a usable SQLite database" in msg
    assert "pass --state a new file name" in msg and "restore this file from a backup" in msg


@pytest.mark.parametrize("below", ["s.db", "sub/s.db"])
def test_a_file_in_the_way_of_the_state_files_folder_is_named(tmp_path: Path, below: str) -> None:
    """`--state prices.csv/s.db` was "not a usable SQLite database (unable to open database
    file) ... restore this file from a backup", and `prices.csv/sub/s.db` "create it"."""
    blocker = tmp_path / "prices.csv"
    blocker.write_text("timestamp,open\n")
    with pytest.raises(StateError) as e:
        Store(blocker / below)
    assert str(e.value) == (
        f"state file {blocker / below}: {blocker} is a file, and a folder is needed there; pass "
        "--state another path, or move that file"
    )
    assert blocker.read_text() == "timestamp,open\n"


def _pragmas(path: Path) -> tuple[int, int, str]:
    with sqlite3.connect(path) as c:
        return (
            c.execute("PRAGMA application_id").fetchone()[0],
            c.execute("PRAGMA user_version").fetchone()[0],
            c.execute("PRAGMA journal_mode").fetchone()[0],
        )


def test_new_state_file_is_marked_as_jaxtrader(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    assert _pragmas(tmp_path / "s.db") == (APPLICATION_ID, SCHEMA_VERSION, "wal")
    assert int.from_bytes(b"JXTR", "big") == APPLICATION_ID
    store = Store(tmp_path / "s.db")  # our own mark is accepted
    assert store.register("a", {"x": 1}, MODEL) is True


def _foreign(path: Path, sql: str, app_id: int = 0) -> bytes:
    """A database written by another application; returns its bytes."""
    c = sqlite3.connect(path)
    c.executescript(sql)
    c.execute(f"PRAGMA application_id = {app_id}")
    c.commit()
    c.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("sql", "app_id", "shown"),
    [
        # freqtrade's tradesv3.sqlite: a `trades` table of its own.
        ("CREATE TABLE trades (id INTEGER PRIMARY KEY, pair TEXT); INSERT INTO trades VALUES "
         "(1, 'BTC/USDT');", 0, "no jaxtrader mark; holds trades"),
        # A table named like ours with other columns used to fail as an internal error.
        ("CREATE TABLE strategies (name TEXT); CREATE TABLE orders (x);", 0,
         "holds orders, strategies"),
        # Our exact tables but another application's mark: theirs.
        (SCHEMA, 0x12345678, "application_id 0x12345678; holds candles"),
        ("CREATE TABLE t (a); CREATE VIEW v AS SELECT a FROM t;", 0, "holds t, v"),
    ],
)  # fmt: skip
def test_another_applications_database_is_refused_untouched(
    tmp_path: Path, sql: str, app_id: int, shown: str
) -> None:
    path = tmp_path / "tradesv3.sqlite"
    before = _foreign(path, sql, app_id)
    with pytest.raises(StateError) as e:
        Store(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "another application's database" in msg
    assert shown in msg and "pass --state a new file name" in msg
    # Not a byte changed (not even the journal mode), and no WAL/journal files left behind.
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tradesv3.sqlite"]


def test_unmarked_state_file_of_an_older_jaxtrader_is_accepted_and_marked(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # Before the mark existed; the oldest files also lack the `runners` table added later.
    old_schema = SCHEMA[: SCHEMA.index("CREATE TABLE IF NOT EXISTS runners")]
    state_json = json.dumps(_state(1).to_dict())
    _foreign(path, old_schema + f"INSERT INTO state VALUES ('a', NULL, '{state_json}', 'now');")
    assert _pragmas(path)[:2] == (0, 0)
    store = Store(path)
    assert _loaded(store, "a") == (None, _state(1).to_dict())
    store.claim("a")  # the runners table was created
    store.close()
    assert _pragmas(path)[:2] == (APPLICATION_ID, SCHEMA_VERSION)


def test_empty_sqlite_file_is_taken(tmp_path: Path) -> None:
    (tmp_path / "zero.db").touch()  # e.g. `touch state.db`
    Store(tmp_path / "zero.db").close()
    assert _pragmas(tmp_path / "zero.db")[:2] == (APPLICATION_ID, SCHEMA_VERSION)


def test_state_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(path).close()
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Store(path)


def test_one_live_runner_per_strategy_id(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = Store(tmp_path / "s.db")
    store.claim("a")
    store.claim("a")  # the same process may claim again (a restart in-process)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        store.conn.execute("UPDATE runners SET pid = ? WHERE strategy_id = 'a'", (other.pid,))
        with pytest.raises(StateError, match=r"'a' .* is already running \(pid"):
            store.claim("a")
        store.claim("b")  # other ids are independent
    finally:
        other.kill()
        other.wait()
    store.claim("a")  # the holder died (as after SIGKILL): taken over
    store.release("a")
    assert [r[0] for r in store.conn.execute("SELECT strategy_id FROM runners")] == ["b"]


def test_state_json_keeps_the_layout_of_existing_state_files(tmp_path: Path) -> None:
    """A state document as earlier versions wrote it loads, and is written back identically."""
    old = {
        "portfolio": {"cash": 9.5, "units": 2.0, "avg_entry": 1.25, "realized_pnl": 0.5,
                      "fees": 0.01, "position_fees": 0.01},
        "risk": {"day": "2024-01-01", "day_start_equity": 12.0, "halted": False,
                 "trades_today": 1, "model_failures": 0, "losing_trades": 1, "cooldown_left": 0},
        "pending": {"order_id": 3, "decided_ts": "2024-01-01T05:00:00+00:00", "target": 0.0,
                    "reason": "signal"},
        "target": 0.0,
        "next_order_id": 4,
        "last_close": None,
        "counts": {"candles": 5, "fallback_gap": 1},
    }  # fmt: skip
    store = Store(tmp_path / "s.db")
    store.register("a", {}, MODEL)
    store.conn.execute(
        "INSERT INTO state VALUES ('a', '2024-01-01T05:00:00+00:00', ?, 'now')",
        (json.dumps(old, sort_keys=True),),
    )
    loaded = store.load_state("a")
    assert loaded is not None and loaded[1].pending is not None and loaded[1].pending.order_id == 3
    assert loaded[1].to_dict() == old


def test_a_resume_on_another_market_names_both(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    started = {**MODEL, "feed": "replay:synth.csv"}
    store.register("a", {"symbol": "SYN/USD", "fee_bps": 10}, started)
    with pytest.raises(StateError) as e:
        store.register(
            "a", {"symbol": "ETH/USDT", "fee_bps": 10}, {**MODEL, "feed": "replay:eth.csv"}
        )
    assert str(e.value) == (
        f"strategy 'a' in {tmp_path / 's.db'} trades SYN/USD (started on replay:synth.csv), not "
        "ETH/USDT (replay:eth.csv); its history and open position are of that market: pass "
        "--new-strategy to start it afresh on the new one, or use a different --strategy-id"
    )
    assert store.register("a", {"symbol": "SYN/USD", "fee_bps": 10}, MODEL) is False


def test_damaged_pages_are_a_state_error_on_every_access(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.register("a", {}, MODEL)
    store.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 100.0))
    store.close()
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    # Page 1 (the schema) is intact; the check of every page at opening finds the rest.
    with pytest.raises(StateError, match=r"not a usable SQLite database \((damaged pages|database "
                       r"disk image is malformed).*\); pass --state a new file name"):  # fmt: skip
        Store(path)


@pytest.mark.parametrize("cell_pointer", [8, 10])
def test_a_damaged_index_page_that_reads_back_wrong_rows_is_refused_at_opening(
    tmp_path: Path, cell_pointer: int
) -> None:
    """A damaged cell pointer in the strategies' index page reads back a strategy id of None
    without any SQLite error (portfolio showed a '-' row, exit 0, or failed as an internal
    error): every page is checked when the file is opened."""
    path = tmp_path / "s.db"
    store = Store(path)
    store.register("a", {}, MODEL)
    store.register("b", {}, MODEL)
    store.close()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        (page,) = con.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_strategies_1'"
        ).fetchone()
    data = bytearray(path.read_bytes())
    at = (page - 1) * 4096 + cell_pointer
    data[at : at + 2] = bytes(b ^ 0x5A for b in data[at : at + 2])
    path.write_bytes(bytes(data))
    with sqlite3.connect(path) as con:  # the damage SQLite does not report by itself
        ids = [r[0] for r in con.execute("SELECT strategy_id FROM strategies ORDER BY 1")]
    assert None in ids
    with pytest.raises(StateError) as e:
        Store(path)
    msg = str(e.value)
    assert msg.startswith(f"state file {path} is not a usable SQLite database (damaged pages: ")
    assert f"On tree page {page} cell" in msg and "\n" not in msg


def test_a_lock_held_past_the_busy_timeout_is_busy_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jaxtrader.trading.store as store_module

    path = tmp_path / "s.db"
    Store(path).register("a", {}, MODEL)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.1)
    reader = Store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for call in (lambda: Store(path), lambda: reader.claim("a")):
            with pytest.raises(StateError) as e:
                call()
            msg = str(e.value)
            assert msg.startswith(f"state file {path} is busy: another process has held it locked")
            assert "retry when that process is done" in msg and "restore" not in msg
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    reader.claim("a")  # nothing was wrong with the file


def test_constraint_violations_stay_sqlite_errors(tmp_path: Path) -> None:
    # A duplicate candle is our bug, not the user's file: it must not read as a damaged file.
    store = Store(tmp_path / "s.db")
    store.register("a", {}, MODEL)
    store.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 1.0))
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_candle("a", _commit("2024-01-01T00:00:00+00:00", 1.0))


def test_a_policy_changed_under_a_strategy_says_how_to_resume_with_its_own() -> None:
    """`evaluate --policy auto` records a policy in the checkpoint; a strategy that started
    before it was refused with only "changed: policy" and the advice to throw its state away."""
    import tempfile

    auto = {"enter": 0.54, "exit": 0.49, "min_hold": 10, "max_position": 1.0, "long_short": False}
    later = {**auto, "enter": 0.6}
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "s.db")
        store.register("plain", {"fee_bps": 10.0}, MODEL)
        store.register("auto", {"fee_bps": 10.0, "policy": auto}, MODEL)
        with pytest.raises(StateError) as e:
            store.register("plain", {"fee_bps": 10.0, "policy": auto}, MODEL)
        assert (
            "(changed: policy); it started with the plain rule and would now run enter = 0.54, "
            "exit = 0.49, min_hold = 10, max_position = 1.0 (`evaluate --policy auto` records a "
            "policy in the checkpoint); to resume with its own rule pass --policy plain; pass "
            "--new-strategy"
        ) in str(e.value)
        with pytest.raises(StateError, match=r"pass --policy FILE\.toml holding enter = 0\.54, "
                           r"exit = 0\.49, min_hold = 10, max_position = 1\.0; pass"):  # fmt: skip
            store.register("auto", {"fee_bps": 10.0, "policy": later}, MODEL)
        with pytest.raises(StateError) as e:  # other changes keep the short message
            store.register("plain", {"fee_bps": 5.0}, MODEL)
        assert "(changed: fee_bps); pass --new-strategy" in str(e.value)
        store.close()
