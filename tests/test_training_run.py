"""The training run's stop handling (the run itself is exercised through `jaxtrader train` in
test_train_cli.py and by the fixtures of test_inference.py and test_trade_cli.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from jaxtrader.training_run import StopSignals


def test_stop_signals_first_requests_a_stop_second_interrupts() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals = StopSignals()
    with signals.installed():
        assert not signals.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # let the handler run
        assert signals.stop_requested() and signals.requested == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]  # a second: default
        with pytest.raises(KeyboardInterrupt), signals.hold():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            reached_end_of_save = True  # a held interrupt waits for the save call to return
        assert reached_end_of_save
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert {s: signal.getsignal(s) for s in before} == before


def test_run_training_takes_candles_and_stops_on_request(tmp_path: Path) -> None:
    """The library entry point: given candles, a stop request ends the run after the current step
    and it returns normally (no signal involved), having reported every saved epoch."""
    from test_inference import tiny_config

    from jaxtrader.checkpoint import read_manifest
    from jaxtrader.data import load_market
    from jaxtrader.training_run import run_training

    # The shapes of tests/test_inference.py, so the compiled programs come from the cache.
    cfg = tiny_config(tmp_path)
    records: list[dict[str, float]] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    run = run_training(
        cfg,
        candles=load_market(cfg.data),
        on_epoch=records.append,
        should_stop=lambda: bool(records),
        handle_signals=False,
    )
    assert {s: signal.getsignal(s) for s in before} == before
    assert [r["epoch"] for r in records] == [1]
    assert run.summary["stopped_reason"] == "interrupted" and run.summary["epochs"] == 1
    assert read_manifest(run.summary["path"]).metrics["stopped_reason"] == "interrupted"


def test_tensorboard_writer_is_skipped_with_a_log_line_when_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    from jaxtrader.tensorboard_log import EpochWriter

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    with caplog.at_level("INFO"):
        writer = EpochWriter(tmp_path)
        writer.add({"epoch": 1, "val_loss": 0.7})
        writer.close()
    assert not writer.active and list(tmp_path.iterdir()) == []
    assert any("tensorboard_skipped" in r.getMessage() for r in caplog.records)
