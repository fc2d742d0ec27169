"""Report rendering: the CLI table, report.md/json and real PNG files with the expected content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_summary import make_table

from jaxtrader.evaluate import report as r
from jaxtrader.evaluate.summary import summarize


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_write_report_creates_json_markdown_and_plots(tmp_path: Path) -> None:
    table, settings = make_table(tmp_path)
    doc = summarize(table, settings) | {"source": {"label": "lstm v1", "data": "synthetic"}}
    records = [
        {
            "epoch": 1,
            "train_loss": 0.70,
            "val_loss": 0.69,
            "train_acc": 0.5,
            "val_acc": 0.51,
            "val_majority_rate": 0.52,
        },
        {
            "epoch": 2,
            "train_loss": 0.68,
            "val_loss": 0.695,
            "train_acc": 0.55,
            "val_acc": 0.50,
            "val_majority_rate": 0.52,
        },
    ]
    attn = np.random.default_rng(0).random((2, 3, 4, 8, 8))
    attn /= attn.sum(-1, keepdims=True)
    paths = r.write_report(
        tmp_path / "rep",
        doc,
        table,
        training_records=records,
        attention=(attn, ["a", "b", "c"]),
    )
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "report.json",
            "report.md",
            "equity.png",
            "confusion.png",
            "reliability.png",
            "coverage.png",
            "training.png",
            "attention.png",
        ]
    )
    for p in paths:
        if p.suffix == ".png":
            w, h = _png_size(p)
            assert w > 300 and h > 300
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["backtest"]["sharpe"] == doc["backtest"]["sharpe"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "![equity](equity.png)" in md
    assert f"{doc['classification']['accuracy']:.4f}" in md
    assert "| 0.9-1.0 |" in md
    assert "![coverage](coverage.png)" in md
    assert "accuracy at coverage" in md and "| fee_drag |" in md


def test_table_states_ci_p_value_fees_and_annualization(tmp_path: Path) -> None:
    table, settings = make_table(tmp_path)
    doc = summarize(table, settings)
    text = r.format_table(doc)
    lo, hi = doc["significance"]["accuracy_ci95"]
    assert f"[{lo:.4f}, {hi:.4f}]" in text
    assert f"effective n {doc['significance']['effective_n']}" in text
    assert "8760 periods/year" in text
    assert "fees 10 bps + slippage 2 bps" in text
    for name in ("majority", "always_long", "momentum", "logistic", "buy_and_hold"):
        assert name in text
    assert "policy (given): enter > 0.56, leave at <= 0.5, min hold 3" in text
    assert "trades_per_month" in text and "fee_drag" in text
    assert "n/a" in text  # undefined values (e.g. momentum log loss) are shown, not invented


def test_missing_training_log_reads_as_empty(tmp_path: Path) -> None:
    assert r.read_metrics_jsonl(tmp_path / "nope.jsonl") == []
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 1, "val_loss": 0.7}\n\n{"epoch": 2, "val_loss": 0.69}\n')
    assert [x["epoch"] for x in r.read_metrics_jsonl(p)] == [1, 2]
