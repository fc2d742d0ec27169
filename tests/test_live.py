"""`jaxtrader trade --feed ccxt:binance` end to end: the real ccxt client, its HTTP layer and parsing,
against the local exchange in tests/exchange_server.py on a simulated clock, with faults injected.

The runner's clock is `SimClock` (JAXTRADER_SIM_CLOCK): its sleeps move the clock instead of
waiting, and a cap file holds it at the end of the run, so hours of candles take seconds. Every
run is compared with a replay of the same candles through `trade --feed replay:` (the same warm-up,
the same model): a live run that lost, repeated or reordered a candle could not match it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from exchange_server import ExchangeServer
from test_trade_cli import processed, run_cli, setup, trade_args  # noqa: F401 (setup: fixture)

from jaxtrader.cli import main
from jaxtrader.data import load_candles
from jaxtrader.fetch import CCXT_CONFIG_ENV
from jaxtrader.trading.feeds import SIM_CLOCK_ENV, SimClock

pytest.importorskip("ccxt", reason="the live path needs ccxt: pip install -e '.[dev]'")

H = pd.Timedelta(1, unit="h")
FIRST_LIVE = 651  # index in the candle file of the first traded candle (503 candles of warm-up)
N_LIVE = 48  # candles traded
RETRY_AFTER_S = 4 * 3600  # a 429's Retry-After: the answer after it catches up four candles

# klines request number -> fault. Warm-up takes requests 1-2; each long 429 is followed by an
# answer with several closed candles, which carries the content fault due from that request on.
HTTP_FAULTS = {4: "500", 6: "429", 10: "502", 12: "timeout", 14: "429", 17: "503",
               19: "truncated", 21: "429", 24: "invalid", 26: "429"}  # fmt: skip
CONTENT_FAULTS = {6: "gap", 14: "repeat", 21: "out_of_order", 26: "nan"}
# What the feed must log for each fault kind: (event, check on its fields).
ERROR_OF = {"500": "ExchangeNotAvailable", "502": "ExchangeNotAvailable",
            "503": "ExchangeNotAvailable", "429": "DDoSProtection", "timeout": "RequestTimeout",
            "truncated": "InvalidResponse", "invalid": "InvalidResponse"}  # fmt: skip
EVENT_OF = {"gap": "feed_gap", "repeat": "feed_repeated_candles",
            "out_of_order": "feed_out_of_order", "nan": "feed_invalid_candle",
            "forming": "feed_forming_dropped"}  # fmt: skip


@pytest.fixture(scope="module")
def frame(setup: dict[str, Path]) -> pd.DataFrame:  # noqa: F811
    return load_candles(setup["csv"]).frame


def close_of(frame: pd.DataFrame, i: int) -> float:
    return (frame.index[i] + H).value / 1e9


class Live:
    """One simulated market: a clock file, an exchange server, the environment for `trade`."""

    def __init__(self, root: Path, frame: pd.DataFrame, **server: Any) -> None:
        self.frame = frame
        self.clock = root / "clock"
        SimClock.write(self.clock, close_of(frame, FIRST_LIVE - 1) + 1800.0)  # mid-candle 651
        self.sim = SimClock(self.clock)
        self.server = ExchangeServer(frame, "SYNTH/USD", self.sim.now, **server).start()

    def cap(self, last: int | None) -> None:
        """Holds the clock once candle `last` has closed and been fetched (None: no cap)."""
        if last is None:
            self.sim.limit_path.unlink(missing_ok=True)
        else:
            SimClock.write(self.sim.limit_path, close_of(self.frame, last) + 10.0)

    def env(self) -> dict[str, str]:
        return {
            SIM_CLOCK_ENV: str(self.clock),
            CCXT_CONFIG_ENV: json.dumps(self.server.ccxt_config()),
        }


@pytest.fixture
def live(tmp_path: Path, frame: pd.DataFrame) -> Iterator[Any]:
    made: list[Live] = []

    def make(name: str = "m", **server: Any) -> Live:
        (tmp_path / name).mkdir()
        made.append(Live(tmp_path / name, frame, **server))
        return made[-1]

    yield make
    for r in Runner.started:
        if r.proc.poll() is None:  # a failed test: a runner held at the clock cap waits forever
            r.kill()
    Runner.started.clear()
    for m in made:
        m.server.stop()


def patient_args(s: dict[str, Path], db: Path, sid: str, *extra: str) -> list[str]:
    """`trade_args` with a 60 s model budget: on a loaded machine a 5 s stall would be a timeout
    fallback in one run and not in the other, and the comparison with the replay would fail."""
    args = trade_args(s, db, sid, *extra)
    args[args.index("--model-timeout-ms") + 1] = "60000"
    return args


def live_args(s: dict[str, Path], db: Path, sid: str) -> list[str]:
    args = patient_args(s, db, sid)
    args[args.index("--feed") + 1] = "ccxt:binance"
    return ["--log-format", "json", "-v", *args]


class Runner:
    """A `jaxtrader trade` subprocess; its stderr goes to a file (a pipe nobody reads until the
    end would block the runner once 64 KB of JSON lines are written)."""

    started: ClassVar[
        list[Runner]
    ] = []  # killed by the `live` fixture if a failed test left them running

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        Runner.started.append(self)
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jaxtrader", *args],
                env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_processed(self, db: Path, sid: str, n: int) -> None:
        deadline = time.monotonic() + 120
        while processed(db, sid) < n and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.proc.poll() is None, self.stderr()[-3000:]
        assert processed(db, sid) >= n, f"only {processed(db, sid)} of {n} candles in 120 s"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> str:
        """SIGTERM, then the run's stderr once it exited cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit 60 s after SIGTERM: {self.stderr()[-3000:]}") from None
        assert self.proc.returncode == 0, self.stderr()[-3000:]
        return self.stderr()


def events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def table(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stored_candles(db: Path, sid: str) -> pd.DataFrame:
    rows = table(db, f"SELECT ts, open, high, low, close, volume, filled FROM candles "
                     f"WHERE strategy_id = '{sid}' ORDER BY ts")  # fmt: skip
    out = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume", "filled"])
    out.index = pd.DatetimeIndex(pd.to_datetime(out.pop("ts"), utc=True), name="timestamp")
    return out


def results(db: Path, sid: str) -> tuple[list[tuple[Any, ...]], ...]:
    """(signals, fills, equity) as stored: what a replay of the same candles must reproduce."""
    q = "SELECT {} FROM {} WHERE strategy_id = '" + sid + "' ORDER BY ts"
    return (
        table(db, q.format("ts, prob_up, fallback, target", "signals")),
        table(db, q.format("order_id, ts, units, price, fee", "fills")),
        table(db, q.format("ts, equity", "equity")),
    )


@pytest.fixture(scope="module")
def reference(
    setup: dict[str, Path],  # noqa: F811
    frame: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[tuple[Any, ...]], ...]:
    """The same candles replayed from the file (same warm-up: the 503 candles before the start)."""
    db = tmp_path_factory.mktemp("ref") / "ref.db"
    start, end = frame.index[FIRST_LIVE], frame.index[FIRST_LIVE + N_LIVE - 1]
    args = patient_args(setup, db, "ref", "--start", start.isoformat(), "--end", end.isoformat(),
                        "--in-sample")  # fmt: skip  # the tiny fixture file: mechanics only
    try:
        main(args)
    except SystemExit as e:
        assert not e.code
    out = results(db, "ref")
    assert len(out[0]) == N_LIVE and out[1], "the tiny model never traded: nothing to prove"
    return out


def report(name: str, m: Live, db: Path, sid: str, **extra: Any) -> None:
    """One line of figures for the README (shown with pytest -s)."""
    stored = stored_candles(db, sid)
    served = m.server.closed_until()
    fills = [f[0] for f in results(db, sid)[1]]
    print(json.dumps({"test": name, "requests": len(m.server.log),
                      "served_closed": int((served.index >= stored.index[0]).sum()),
                      "stored": len(stored), "fills": len(fills),
                      "duplicate_fills": len(fills) - len(set(fills)), **extra}))  # fmt: skip


def assert_same_as_replay(
    db: Path, sid: str, m: Live, reference: tuple[list[tuple[Any, ...]], ...]
) -> None:
    """Stored candles == the server's closed candles, each once; decisions and fills == replay."""
    stored = stored_candles(db, sid)
    served = m.server.closed_until()
    served = served[served.index >= stored.index[0]]
    assert list(stored.index) == list(served.index)  # none lost, none twice, none invented
    assert (stored["filled"] == 0).all()
    cols = ["open", "high", "low", "close", "volume"]
    assert (stored[cols].to_numpy() == served[cols].to_numpy()).all()  # the final values exactly
    signals, fills, equity = results(db, sid)
    assert all(s[2] is None for s in signals), [s for s in signals if s[2] is not None]
    order_ids = [f[0] for f in fills]
    assert len(order_ids) == len(set(order_ids))  # every order filled at most once
    assert (signals, fills, equity) == reference


def test_live_run_through_every_fault_equals_the_replay(
    setup: dict[str, Path],  # noqa: F811
    live: Any,
    reference: tuple[list[tuple[Any, ...]], ...],
) -> None:
    m = live(http_faults=HTTP_FAULTS, content_faults=CONTENT_FAULTS, retry_after_s=RETRY_AFTER_S)
    m.cap(FIRST_LIVE + N_LIVE - 1)
    db = setup["root"] / "live_faults.db"
    run = Runner(live_args(setup, db, "live"), m.env(), db.with_suffix(".log"))
    run.wait_processed(db, "live", N_LIVE)
    err = run.stop()
    log = events(err)
    injected = m.server.injected()
    assert {s.path for s in m.server.log} == {"/api/v3/exchangeInfo", "/api/v3/klines"}
    assert set(injected) == set(ERROR_OF) | set(EVENT_OF), injected  # every kind at least once
    # Each fault is exactly one structured event, of the right kind.
    retries = [e for e in log if e["event"] == "fetch_retry"]
    faulted = [f for s in m.server.log for f in s.faults if f in ERROR_OF]
    assert [e["error"].split(":")[0] for e in retries] == [ERROR_OF[f] for f in faulted]
    for e in retries:
        if e["error"].startswith("DDoSProtection"):
            assert e["delay_s"] == RETRY_AFTER_S  # the exchange's Retry-After, not 1 s
    clean = [s for s in m.server.log if not set(s.faults) & set(ERROR_OF)]
    for kind, name in EVENT_OF.items():
        got = [e for e in log if e["event"] == name]
        assert len(got) == sum(kind in s.faults for s in clean), (kind, got)
        assert all(e.get("action", "refetch") == "refetch" for e in got)
    assert not [e for e in log if e["event"] == "bad_candle"]  # the NaN never reached the manager
    assert sum(e["event"] == "candle" for e in log) == N_LIVE
    assert_same_as_replay(db, "live", m, reference)
    report("faults", m, db, "live", injected=injected, events=len(retries) + sum(
        e["event"] in EVENT_OF.values() for e in log))  # fmt: skip


def test_kill_9_mid_run_then_restart_resumes_without_duplicates(
    setup: dict[str, Path],  # noqa: F811
    live: Any,
    reference: tuple[list[tuple[Any, ...]], ...],
) -> None:
    m = live(http_faults={8: "503", 30: "429"}, retry_after_s=3 * 3600)
    # The cap keeps the first run short of the end even if this process is starved for a while.
    m.cap(FIRST_LIVE + N_LIVE * 3 // 4)
    db = setup["root"] / "live_kill.db"
    args = live_args(setup, db, "k")
    run = Runner(args, m.env(), db.with_suffix(".1.log"))
    run.wait_processed(db, "k", N_LIVE // 3)
    run.kill()
    done = processed(db, "k")
    assert N_LIVE // 3 <= done < N_LIVE
    m.cap(FIRST_LIVE + N_LIVE - 1)
    run = Runner(args, m.env(), db.with_suffix(".2.log"))
    run.wait_processed(db, "k", N_LIVE)
    log = events(run.stop())
    start = next(e for e in log if e["event"] == "trade_start")
    resumed = pd.Timestamp(start["resumed_after"])
    candles = [pd.Timestamp(e["ts"]) for e in log if e["event"] == "candle"]
    assert candles[0] == resumed + H  # right after the last committed candle
    assert len(candles) == N_LIVE - done
    assert_same_as_replay(db, "k", m, reference)
    report("kill_9", m, db, "k", killed_after=done, resumed_at=candles[0].isoformat())


def test_exchange_down_past_the_retry_budget_is_one_line_and_keeps_the_state(
    setup: dict[str, Path],  # noqa: F811
    live: Any,
    reference: tuple[list[tuple[Any, ...]], ...],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = setup["root"] / "live_down.db"
    args = ["--log-format", "json", *live_args(setup, db, "d")[3:]]
    m = live("a", http_faults={12: "down"})
    for k, v in m.env().items():
        monkeypatch.setenv(k, v)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    # Under --log-format json the error is the last record, like every other line on stderr.
    last = events(err)[-1]
    assert (last["level"], last["event"], last["kind"], last["exit_code"]) == (
        "error",
        "error",
        "DataError",
        2,
    )
    message = last["message"]
    assert message.startswith("fetching SYNTH/USD 1h from binance failed after 11 attempts")
    assert "503 Service Unavailable" in message and "rerun the same command to resume" in message
    assert len(err.strip().splitlines()) == len(events(err))  # no line that is not JSON
    assert sum(e["event"] == "fetch_retry" for e in events(err)) == 10
    done = processed(db, "d")
    assert 0 < done < N_LIVE
    # State intact: the same command against the exchange, back up, continues where it stopped.
    m2 = live("b", http_faults={15: "down"})
    SimClock.write(m2.clock, m.sim.now())
    for k, v in m2.env().items():
        monkeypatch.setenv(k, v)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    signals, fills, equity = results(db, "d")
    n = len(signals)
    assert n > done and [s[0] for s in signals] == [s[0] for s in reference[0][:n]]
    assert (signals, equity) == (reference[0][:n], reference[2][:n])
    assert fills == [f for f in reference[1] if f[1] <= signals[-1][0]]
