"""Persistent trading state in one SQLite file, every table keyed by strategy_id.

WAL mode plus a busy timeout lets several strategy processes share a file. Each processed candle is
written in ONE transaction (`commit_candle`), so a crash leaves all or none of a candle's effects and
a restart resumes after the last committed candle. Timestamps are stored as ISO 8601 UTC text, which
sorts chronologically.

A state file is marked as jaxtrader's on creation (`PRAGMA application_id` = APPLICATION_ID,
`user_version` = SCHEMA_VERSION) so `--state` pointed at another application's database is refused
instead of silently gaining our tables.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from jaxtrader.errors import StateError

if TYPE_CHECKING:
    from jaxtrader.trading.broker import Order
    from jaxtrader.trading.records import (
        EquitySnapshot,
        FillRecord,
        PositionSnapshot,
        SignalRecord,
        StrategyState,
    )

SCHEMA = """
CREATE TABLE IF NOT EXISTS strategies (
  strategy_id TEXT PRIMARY KEY, config_json TEXT NOT NULL, config_hash TEXT NOT NULL,
  model_json TEXT NOT NULL, model_hash TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
  strategy_id TEXT PRIMARY KEY, last_ts TEXT, state_json TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candles (
  strategy_id TEXT NOT NULL, ts TEXT NOT NULL, open REAL, high REAL, low REAL, close REAL,
  volume REAL, filled INTEGER NOT NULL, processed INTEGER NOT NULL,
  PRIMARY KEY (strategy_id, ts));
CREATE TABLE IF NOT EXISTS signals (
  strategy_id TEXT NOT NULL, ts TEXT NOT NULL, prob_up REAL, desired REAL, fallback TEXT,
  action TEXT NOT NULL, reason TEXT NOT NULL, target REAL NOT NULL, latency_ms REAL NOT NULL,
  PRIMARY KEY (strategy_id, ts));
CREATE TABLE IF NOT EXISTS orders (
  strategy_id TEXT NOT NULL, order_id INTEGER NOT NULL, decided_ts TEXT NOT NULL,
  target REAL NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL, filled_ts TEXT,
  PRIMARY KEY (strategy_id, order_id));
CREATE TABLE IF NOT EXISTS fills (
  strategy_id TEXT NOT NULL, order_id INTEGER NOT NULL, ts TEXT NOT NULL, units REAL NOT NULL,
  price REAL NOT NULL, fee REAL NOT NULL, realized REAL NOT NULL, trade_pnl REAL,
  PRIMARY KEY (strategy_id, order_id));
CREATE TABLE IF NOT EXISTS positions (
  strategy_id TEXT NOT NULL, ts TEXT NOT NULL, units REAL NOT NULL, avg_entry REAL NOT NULL,
  cash REAL NOT NULL, realized_pnl REAL NOT NULL, fees REAL NOT NULL,
  PRIMARY KEY (strategy_id, ts));
CREATE TABLE IF NOT EXISTS equity (
  strategy_id TEXT NOT NULL, ts TEXT NOT NULL, close REAL NOT NULL, equity REAL NOT NULL,
  unrealized REAL NOT NULL, PRIMARY KEY (strategy_id, ts));
CREATE TABLE IF NOT EXISTS risk_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, strategy_id TEXT NOT NULL, ts TEXT NOT NULL,
  category TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS risk_events_sid ON risk_events (strategy_id, ts);
CREATE TABLE IF NOT EXISTS runners (
  strategy_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL);
"""
TABLES = ("strategies", "state", "candles", "signals", "orders", "fills", "positions", "equity")
# "JXTR" as a signed 32-bit integer: the SQLite header field identifying the file's application.
APPLICATION_ID = 0x4A585452
SCHEMA_VERSION = 1
# Table sets of unmarked files written before the marking existed (`runners` came later); such a
# file is ours and is marked on open. Any other unmarked non-empty database is someone else's.
_LEGACY_TABLE_SETS = (
    frozenset({*TABLES, "risk_events", "runners"}),
    frozenset({*TABLES, "risk_events"}),
)


# How long a write waits for another process's transaction before giving up (tests shorten it).
BUSY_TIMEOUT_S = 30.0
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """Turns SQLite's errors about the file (damaged pages, a lock held past the busy timeout)
    into a StateError naming it. Constraint violations stay sqlite3 errors: they are our bugs."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as e:
            raise self._unusable(e) from None

    return wrapper


def _policy_hint(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How to resume a strategy whose policy changed under it: usually `evaluate --policy auto`
    recorded one in the checkpoint after the strategy started with the manifest's (or no) policy."""

    def rule(cfg: dict[str, Any]) -> str:
        p = cfg.get("policy")
        if p is None:
            return "the plain rule"
        return ", ".join(f"{k} = {p[k]}" for k in ("enter", "exit", "min_hold", "max_position"))

    keep = (
        "--policy plain" if old.get("policy") is None else f"--policy FILE.toml holding {rule(old)}"
    )
    return (
        f"; it started with {rule(old)} and would now run {rule(new)} (`evaluate --policy auto` "
        f"records a policy in the checkpoint); to resume with its own rule pass {keep}"
    )


def stable_hash(obj: Any) -> str:
    """SHA-256 of canonical JSON: equal configs hash equal whatever their key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _alive(host: str, pid: int) -> bool:
    """Whether a runner claim is held by a live process (other hosts are trusted as live)."""
    import os
    import socket

    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CandleRow:
    ts: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    filled: bool = False


@dataclass
class CandleCommit:
    """Everything one processed candle changes; written atomically by `Store.commit_candle`."""

    ts: str
    state: StrategyState
    candles: list[CandleRow]  # the processed candle plus any gap-filled ones before it
    signal: SignalRecord
    position: PositionSnapshot
    equity: EquitySnapshot
    new_order: Order | None = None
    fill: FillRecord | None = None
    settled: tuple[int, str] | None = None  # (order_id, "filled" | "skipped") of the open order
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (category, kind, reason)


class Store:
    """A connection to one state file. Not thread-safe; one per process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        blocker = next((p for p in self.path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            # SQLite says "unable to open database file", which read as a damaged state file to
            # restore from a backup (and "create it" cannot be done past a file).
            raise StateError(
                f"state file {self.path}: {blocker} is a file, and a folder is needed there; "
                "pass --state another path, or move that file"
            )
        if self.path.parent and not self.path.parent.exists():
            raise StateError(f"state file directory {self.path.parent} does not exist; create it")
        if self.path.is_dir():
            raise StateError(
                f"state file {self.path} is a folder; pass --state a file inside it, e.g. "
                f"{self.path / 'state.db'}"
            )
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
        except sqlite3.DatabaseError as e:
            raise self._unusable(e) from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {round(BUSY_TIMEOUT_S * 1000)}")
            # Identify the file before writing anything: journal_mode=WAL alone would already
            # change another application's database.
            self._check_owner(self.conn)
            # A damaged page can read back as wrong rows rather than fail (a strategy id of
            # None from a damaged index): check every page before trusting any (0.2 s for two
            # strategies of 10,732 hourly candles, 0.9 s for 71,569, measured cold).
            problems = [r[0] for r in self.conn.execute("PRAGMA quick_check(3)").fetchall()]
            if problems != ["ok"]:
                found = " ".join("; ".join(problems).split())  # one line
                raise sqlite3.DatabaseError(f"damaged pages: {found[:200]}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against process crashes (SIGKILL) in WAL mode; only a power loss
            # may drop the last transactions, never corrupt the file.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            with self.transaction() as c:
                # Re-checked under the write lock: another process may have created it meanwhile.
                if not self._check_owner(c):
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
        except StateError:
            self.conn.close()
            raise
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise self._unusable(e) from None

    def _unusable(self, e: sqlite3.DatabaseError) -> StateError:
        # A lock is not damage: "use a new file or restore a backup" would throw away good state.
        code = getattr(e, "sqlite_errorcode", None)
        if code in _BUSY_CODES or "locked" in str(e) or "busy" in str(e):
            return StateError(
                f"state file {self.path} is busy: another process has held it locked for more "
                f"than {BUSY_TIMEOUT_S:g} s ({e}); retry when that process is done (the file is "
                "fine; check for a stuck process or an open SQLite shell on it)"
            )
        return StateError(
            f"state file {self.path} is not a usable SQLite database ({e}); pass --state a new "
            "file name, or restore this file from a backup if it was a jaxtrader state file"
        )

    def _check_owner(self, c: sqlite3.Connection) -> bool:
        """Whether the file is already marked as ours; refuses a database that is not a jaxtrader
        state file. An empty file, or an unmarked one with exactly our tables, is accepted."""
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if app_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"state file {self.path} has schema version {version}, newer than this "
                    f"jaxtrader's {SCHEMA_VERSION}; upgrade jaxtrader or pass --state a new file"
                )
            return version == SCHEMA_VERSION
        names = {
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger')"
            )
            if not r[0].startswith("sqlite_")
        }
        if app_id == 0 and (not names or names in _LEGACY_TABLE_SETS):
            return False
        owner = f"application_id {app_id:#x}" if app_id else "no jaxtrader mark"
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise StateError(
            f"state file {self.path} is another application's database ({owner}; holds "
            f"{shown or 'nothing'}); jaxtrader will not write into it: pass --state a new file name"
        )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # SQLite may already have rolled back (a damaged page, a full disk); a second
            # ROLLBACK would fail and hide the error that matters.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- strategies ---------------------------------------------------------------------------

    @_guarded
    def register(
        self, sid: str, config: dict[str, Any], model: dict[str, Any], *, fresh: bool = False
    ) -> bool:
        """Records (or checks) a strategy's config and model; True when it starts fresh.

        A different config or model for an existing id is refused: mixing them would make the
        stored history meaningless. `fresh=True` deletes the id's old rows first.
        """
        config_hash, model_hash = stable_hash(config), str(model["hash"])
        with self.transaction() as c:
            if fresh:
                self._delete(c, sid)
            row = c.execute(
                "SELECT config_hash, model_hash, config_json, model_json FROM strategies "
                "WHERE strategy_id = ?",
                (sid,),
            ).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO strategies VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        sid,
                        json.dumps(config, sort_keys=True),
                        config_hash,
                        json.dumps(model, sort_keys=True, default=str),
                        model_hash,
                        _now(),
                    ),
                )
                return True
        old_cfg = json.loads(row[2])
        if old_cfg.get("symbol", config.get("symbol")) != config.get("symbol"):
            # Checked first: a strategy's candles, positions and equity are of one market, and
            # prices of another would revalue its position silently.
            started = json.loads(row[3]).get("feed")
            was = f" (started on {started})" if started else ""
            now = f" ({model['feed']})" if model.get("feed") else ""
            raise StateError(
                f"strategy '{sid}' in {self.path} trades {old_cfg['symbol']}{was}, not "
                f"{config.get('symbol')}{now}; its history and open position are of that market: "
                "pass --new-strategy to start it afresh on the new one, or use a different "
                "--strategy-id"
            )
        if row[1] != model_hash:
            old = json.loads(row[3])
            raise StateError(
                f"strategy '{sid}' in {self.path} was started with checkpoint "
                f"{old.get('checkpoint')} (manifest {str(row[1])[:12]}), not "
                f"{model.get('checkpoint')} (manifest {model_hash[:12]}); pass --new-strategy to "
                "start it afresh or use a different --strategy-id"
            )
        if row[0] != config_hash:
            diff = sorted(k for k in set(old_cfg) | set(config) if old_cfg.get(k) != config.get(k))
            raise StateError(
                f"strategy '{sid}' in {self.path} was started with a different config "
                f"(changed: {', '.join(diff)}){_policy_hint(old_cfg, config) if diff == ['policy'] else ''}; "
                "pass --new-strategy to start it afresh or use a different --strategy-id"
            )
        return False

    def _delete(self, c: sqlite3.Connection, sid: str) -> None:
        for table in (*TABLES, "risk_events"):
            c.execute(f"DELETE FROM {table} WHERE strategy_id = ?", (sid,))

    # -- one runner per strategy id ------------------------------------------------------------

    @_guarded
    def claim(self, sid: str) -> None:
        """Marks this process as the strategy's runner; refuses while another live process on
        this host holds it (two runners of one id would interleave its candles). A claim left by
        a killed process is taken over."""
        import os
        import socket

        host, pid = socket.gethostname(), os.getpid()
        with self.transaction() as c:
            row = c.execute(
                "SELECT host, pid, since FROM runners WHERE strategy_id = ?", (sid,)
            ).fetchone()
            if row is not None and (row[0], row[1]) != (host, pid) and _alive(row[0], row[1]):
                raise StateError(
                    f"strategy '{sid}' in {self.path} is already running (pid {row[1]} on "
                    f"{row[0]} since {row[2]}); stop it first or use a different --strategy-id"
                )
            c.execute(
                "INSERT OR REPLACE INTO runners VALUES (?, ?, ?, ?)", (sid, host, pid, _now())
            )

    @_guarded
    def release(self, sid: str) -> None:
        import os

        with self.transaction() as c:
            c.execute("DELETE FROM runners WHERE strategy_id = ? AND pid = ?", (sid, os.getpid()))

    @_guarded
    def strategy_ids(self) -> list[str]:
        rows = self.conn.execute("SELECT strategy_id FROM strategies ORDER BY strategy_id")
        return [r[0] for r in rows]

    @_guarded
    def strategy(self, sid: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT config_json, model_json, created_at FROM strategies WHERE strategy_id = ?",
            (sid,),
        ).fetchone()
        if row is None:
            return None
        return {"config": json.loads(row[0]), "model": json.loads(row[1]), "created_at": row[2]}

    # -- resumable state ----------------------------------------------------------------------

    @_guarded
    def load_state(self, sid: str) -> tuple[str | None, StrategyState] | None:
        from jaxtrader.trading.records import StrategyState

        row = self.conn.execute(
            "SELECT last_ts, state_json FROM state WHERE strategy_id = ?", (sid,)
        ).fetchone()
        return None if row is None else (row[0], StrategyState.from_dict(json.loads(row[1])))

    @_guarded
    def history(self, sid: str, n: int) -> list[CandleRow]:
        """The last `n` candles of the strategy's rolling buffer (warm-up and processed)."""
        rows = self.conn.execute(
            "SELECT ts, open, high, low, close, volume, filled FROM candles WHERE strategy_id = ? "
            "ORDER BY ts DESC LIMIT ?",
            (sid, n),
        ).fetchall()
        return [CandleRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in reversed(rows)]

    @_guarded
    def commit_warmup(self, sid: str, state: StrategyState, candles: Sequence[CandleRow]) -> None:
        """Stores the warm-up history (never traded) and the initial state in one transaction."""
        with self.transaction() as c:
            self._insert_candles(c, sid, candles, processed=False)
            self._put_state(c, sid, None, state)

    @_guarded
    def commit_candle(self, sid: str, cc: CandleCommit) -> None:
        with self.transaction() as c:
            self._insert_candles(c, sid, cc.candles[:-1], processed=False)
            self._insert_candles(c, sid, cc.candles[-1:], processed=True)
            s = cc.signal
            c.execute(
                "INSERT INTO signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, cc.ts, s.prob_up, s.desired, s.fallback, s.action, s.reason, s.target,
                 s.latency_ms),
            )  # fmt: skip
            if cc.fill is not None:
                f = cc.fill
                c.execute(
                    "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, f.order_id, cc.ts, f.units, f.price, f.fee, f.realized, f.trade_pnl),
                )
            if cc.settled is not None:
                oid, status = cc.settled
                c.execute(
                    "UPDATE orders SET status = ?, filled_ts = ? WHERE strategy_id = ? AND "
                    "order_id = ?",
                    (status, cc.ts, sid, oid),
                )
            if cc.new_order is not None:
                o = cc.new_order
                c.execute(
                    "INSERT INTO orders VALUES (?, ?, ?, ?, ?, 'pending', NULL)",
                    (sid, o.order_id, o.decided_ts.isoformat(), o.target, o.reason),
                )
            p = cc.position
            c.execute(
                "INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sid, cc.ts, p.units, p.avg_entry, p.cash, p.realized_pnl, p.fees),
            )
            e = cc.equity
            c.execute(
                "INSERT INTO equity VALUES (?, ?, ?, ?, ?)",
                (sid, cc.ts, e.close, e.equity, e.unrealized),
            )
            c.executemany(
                "INSERT INTO risk_events (strategy_id, ts, category, kind, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                [(sid, cc.ts, *ev) for ev in cc.events],
            )
            self._put_state(c, sid, cc.ts, cc.state)

    @_guarded
    def add_event(self, sid: str, ts: str, category: str, kind: str, reason: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO risk_events (strategy_id, ts, category, kind, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (sid, ts, category, kind, reason),
            )

    def _insert_candles(
        self, c: sqlite3.Connection, sid: str, rows: Sequence[CandleRow], processed: bool
    ) -> None:
        c.executemany(
            "INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (sid, r.ts, r.open, r.high, r.low, r.close, r.volume, int(r.filled), int(processed))
                for r in rows
            ],
        )

    def _put_state(
        self, c: sqlite3.Connection, sid: str, last_ts: str | None, state: StrategyState
    ) -> None:
        c.execute(
            "INSERT INTO state VALUES (?, ?, ?, ?) ON CONFLICT (strategy_id) DO UPDATE SET "
            "last_ts = COALESCE(excluded.last_ts, state.last_ts), state_json = excluded.state_json, "
            "updated_at = excluded.updated_at",
            (sid, last_ts, json.dumps(state.to_dict(), sort_keys=True), _now()),
        )

    # -- reads for reports and tests ----------------------------------------------------------

    @_guarded
    def rows(self, table: str, sid: str) -> list[dict[str, Any]]:
        """All rows of one table for one strategy, in time order, as dicts."""
        if table not in (*TABLES, "risk_events"):
            raise ValueError(f"unknown table {table}")
        order = "id" if table == "risk_events" else "rowid"
        cur = self.conn.execute(
            f"SELECT * FROM {table} WHERE strategy_id = ? ORDER BY {order}", (sid,)
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    @_guarded
    def event_counts(self, sid: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT kind, COUNT(*) FROM risk_events WHERE strategy_id = ? GROUP BY kind", (sid,)
        )
        return {k: int(n) for k, n in rows}
