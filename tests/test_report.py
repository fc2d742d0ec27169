"""Report rendering: the CLI table, report.md/json and real PNG files with the expected content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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
    assert "policy (given): enter > 0.56, exit <= 0.5, min hold 3" in text
    assert "trades_per_month" in text and "fee_drag" in text
    assert "n/a" in text  # undefined values (e.g. momentum log loss) are shown, not invented


def test_missing_training_log_reads_as_empty(tmp_path: Path) -> None:
    assert r.read_metrics_jsonl(tmp_path / "nope.jsonl") == []
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 1, "val_loss": 0.7}\n\n{"epoch": 2, "val_loss": 0.69}\n')
    assert [x["epoch"] for x in r.read_metrics_jsonl(p)] == [1, 2]


# -- plots: inspected as matplotlib objects (tick values, norms, texts, error bars), not pixels --


def _epoch(e: int, val_loss: float, steps: int = 160) -> dict[str, float]:
    return {"epoch": e, "train_loss": 0.70 - 0.005 * e, "val_loss": val_loss, "train_acc": 0.5,
            "val_acc": 0.51, "val_majority_rate": 0.515, "steps": steps}  # fmt: skip


def _visible(values: np.ndarray, lim: tuple[float, float]) -> list[float]:
    lo, hi = sorted(lim)
    return [float(v) for v in values if lo <= v <= hi]


def test_training_plot_has_integer_epoch_ticks_and_marks_the_best_epoch() -> None:
    records = [_epoch(1, 0.6935), _epoch(2, 0.6900), _epoch(3, 0.6930)]
    fig = r.figure_training(records, "lstm v1: training")
    for ax in fig.axes:
        ticks = _visible(ax.get_xticks(), ax.get_xlim())
        assert ticks == [1.0, 2.0, 3.0]
        best = [ln for ln in ax.get_lines() if ln.get_label().startswith("best epoch")]
        assert len(best) == 1 and list(best[0].get_xdata()) == [2.0, 2.0]
        assert best[0].get_label() == "best epoch 2: val loss 0.6900"
    assert r.epoch_positions(records) == ([1.0, 2.0, 3.0], False)
    # A one-epoch run (the README's tiny configs) still gets the integer tick only.
    ax = r.figure_training(records[:1]).axes[0]
    assert _visible(ax.get_xticks(), ax.get_xlim()) == [1.0]


def test_training_plot_draws_a_partial_last_epoch_at_its_fraction() -> None:
    # Interrupted after 49 of 160 steps of epoch 4, whose val loss happens to be the lowest.
    records = [_epoch(1, 0.6935), _epoch(2, 0.6925), _epoch(3, 0.6930), _epoch(4, 0.6906, 49)]
    xs, partial = r.epoch_positions(records)
    assert partial and xs == [1.0, 2.0, 3.0, 3 + 49 / 160]
    # The full epoch's length from the evaluation wins over the longest record.
    only = [{**_epoch(1, 0.69, 49), "epoch_steps": 160}]
    assert r.epoch_positions(only) == ([49 / 160], True)
    fig = r.figure_training(records)
    ax_loss = fig.axes[0]
    texts = [t.get_text() for t in ax_loss.texts]
    assert texts == ["partial epoch 4: 49/160 steps"]
    lines = ax_loss.get_lines()
    color = next(ln.get_color() for ln in lines if ln.get_label() == "val_loss")
    val = [ln for ln in lines if ln.get_color() == color]
    solid, dashed, hollow = val
    assert list(solid.get_xdata()) == [1.0, 2.0, 3.0] and solid.get_label() == "val_loss"
    assert dashed.get_linestyle() == "--" and list(dashed.get_xdata()) == [3.0, 3 + 49 / 160]
    assert list(hollow.get_xdata()) == [3 + 49 / 160] and hollow.get_markerfacecolor() == "white"
    best = [ln for ln in ax_loss.get_lines() if ln.get_label().startswith("best epoch")]
    assert best[0].get_label() == "best epoch 4 (partial): val loss 0.6906"
    assert _visible(ax_loss.get_xticks(), ax_loss.get_xlim()) == [1.0, 2.0, 3.0]


def test_training_plot_of_a_seed_ensemble_draws_the_seed_mean_and_spread(tmp_path: Path) -> None:
    """A walk-forward fold's metrics.jsonl holds per-seed lists (`val_loss: [s0, s1]`); the plot
    crashed on them (`float()` of a list), so `evaluate --report-dir` on a fold wrote no report."""
    records = [
        {"epoch": 1, "train_loss": 0.71, "val_loss": [0.695, 0.725], "val_acc": [0.53, 0.52],
         "val_majority_rate": 0.501, "steps": 4},
        {"epoch": 2, "train_loss": 0.69, "val_loss": [0.700, 0.690], "val_acc": [0.55, 0.51],
         "val_majority_rate": 0.501, "steps": 4},
    ]  # fmt: skip
    # The whole report is written with such records (it stopped after the first plots).
    table, settings = make_table(tmp_path)
    doc = summarize(table, settings) | {"source": {"label": "lstm v1", "data": "synthetic"}}
    paths = r.write_report(tmp_path / "rep", doc, table, training_records=records)
    assert {"report.json", "report.md", "training.png"} <= {p.name for p in paths}
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["n"] == doc["n"]
    assert r.seed_spread(records, "val_loss") == (
        pytest.approx([0.71, 0.695]),
        [0.695, 0.690],
        [0.725, 0.700],
    )
    assert r.seed_spread(records, "train_loss") == ([0.71, 0.69], [0.71, 0.69], [0.71, 0.69])
    fig = r.figure_training(records, "lstm v1: training")
    ax_loss, ax_acc = fig.axes
    val = next(ln for ln in ax_loss.get_lines() if ln.get_label().startswith("val_loss"))
    assert val.get_label() == "val_loss (mean of seeds, min-max shaded)"
    np.testing.assert_allclose(val.get_ydata(), [0.71, 0.695])
    (band,) = ax_loss.collections  # the seeds' spread: min 0.690 .. max 0.725
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.690) and ys.max() == pytest.approx(0.725)
    best = [ln for ln in ax_loss.get_lines() if ln.get_label().startswith("best epoch")]
    assert best[0].get_label() == "best epoch 2: seed-mean val loss 0.6950"
    acc = next(ln for ln in ax_acc.get_lines() if ln.get_label().startswith("val_acc"))
    np.testing.assert_allclose(acc.get_ydata(), [0.525, 0.53])


def test_attention_colour_scale_is_centred_on_uniform_attention() -> None:
    T = 50
    rng = np.random.default_rng(0)
    attn = np.abs(1 + 0.05 * rng.standard_normal((2, 3, 2, T, T)))  # near-uniform
    attn /= attn.sum(-1, keepdims=True)
    stamps = ["2024-03-01 10:00", "2024-03-01 11:00", "2024-03-01 12:00"]
    fig = r.figure_attention(attn, stamps, "transformer v3: attention")
    ax, bar_ax = fig.axes
    (im,) = ax.get_images()
    assert im.get_cmap().name == "RdBu_r"  # diverging
    assert im.norm.vcenter == pytest.approx(1 / T) and im.norm(1 / T) == pytest.approx(0.5)
    assert im.norm.vmin == 0.0 and im.norm.vmax == pytest.approx(2 / T)
    # Near-uniform attention stays near the pale centre of the map.
    assert np.all(np.abs(im.norm(im.get_array()) - 0.5) < 0.15)
    assert bar_ax.get_ylabel() == "attention weight (white = uniform 1/50 = 0.02)"
    assert ax.get_title() == "transformer v3: attention"
    assert [t.get_text() for t in ax.get_yticklabels()] == stamps
    assert ax.get_ylabel() == "prediction candle (UTC)"


def test_reliability_points_carry_count_and_wilson_interval() -> None:
    from jaxtrader.evaluate.significance import wilson_interval

    table = [
        {"bin_lo": 0.4, "bin_hi": 0.5, "count": 200, "mean_predicted": 0.45, "observed_frequency": 0.47},
        {"bin_lo": 0.5, "bin_hi": 0.6, "count": 0, "mean_predicted": None, "observed_frequency": None},
        {"bin_lo": 0.8, "bin_hi": 0.9, "count": 4, "mean_predicted": 0.84, "observed_frequency": 0.25},
    ]  # fmt: skip
    fig = r.figure_reliability(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["n=200", "n=4"]
    (container,) = ax.containers
    (bars,) = container.lines[2]
    segments = [np.asarray(s) for s in bars.get_segments()]
    for seg, row in zip(segments, (table[0], table[2]), strict=True):
        lo, hi = wilson_interval(row["observed_frequency"], row["count"])
        assert seg[:, 0] == pytest.approx([row["mean_predicted"]] * 2)
        assert seg[:, 1] == pytest.approx([lo, hi])
    # The bin of 4 has an interval wide enough to reach the diagonal: not evidence of miscalibration.
    assert segments[1][1, 1] > 0.84 - 0.5 and segments[1][1, 1] - segments[1][0, 1] > 0.5


def test_equity_log_axis_labels_only_1_2_5_per_decade(tmp_path: Path) -> None:
    import dataclasses

    from matplotlib import ticker

    table, _ = make_table(tmp_path)
    n = len(table)
    grow = np.expm1(np.full(n, np.log(12) / n))  # buy and hold ends at 12x
    shrink = np.cumprod(1 + np.expm1(np.full(n, np.log(0.3) / n)))  # the strategy at 0.3x
    rows = dataclasses.replace(table, asset_return=grow, equity=shrink, position=np.zeros(n))
    fig = r.figure_equity(rows, 0.0, 0.0, "lstm v1: equity")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    labels = [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
    assert labels == ["0.5", "1", "2", "5", "10"]
    assert isinstance(ax.yaxis.get_minor_formatter(), ticker.NullFormatter)
    assert r._plain_number(1000.0) == "1,000" and r._plain_number(0.05) == "0.05"


def test_write_report_titles_every_plot_with_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, settings = make_table(tmp_path)
    doc = summarize(table, settings) | {"source": {"label": "transformer v3", "data": "synthetic"}}
    titles: dict[str, str] = {}
    save = r._save

    def spy(fig, path):  # type: ignore[no-untyped-def]
        titles[path.name] = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        return save(fig, path)

    monkeypatch.setattr(r, "_save", spy)
    attn = np.full((1, 2, 2, 8, 8), 1 / 8)
    r.write_report(tmp_path / "rep", doc, table, training_records=[_epoch(1, 0.69)],
                   attention=(attn, ["2024-01-01 00:00", "2024-01-01 01:00"]))  # fmt: skip
    assert len(titles) == 6 and {"attention.png", "coverage.png"} <= set(titles)
    assert all(t.startswith("transformer v3: ") for t in titles.values()), titles


def test_a_report_folder_is_refused_only_for_files_evaluate_did_not_write(tmp_path: Path) -> None:
    """`refuse_foreign_report_dir`: names write_report writes (report.md, the plots) that are
    there but not under an evaluate report.json would be replaced silently: refused. A new,
    empty or unrelated folder, and evaluate's own earlier report, are not."""
    from jaxtrader.errors import ConfigError

    r.refuse_foreign_report_dir(tmp_path / "new")  # does not exist yet
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    r.refuse_foreign_report_dir(other)  # nothing evaluate writes is there

    table, settings = make_table(tmp_path)
    doc = summarize(table, settings) | {"source": {"label": "lstm v1", "data": "synthetic"}}
    own = tmp_path / "own"
    written = r.write_report(own, doc, table, training_records=[])
    assert {p.name for p in written} <= set(r.REPORT_FILES)  # every name it writes is checked
    assert r.is_evaluate_report(own)
    r.refuse_foreign_report_dir(own)

    for content in ("not json", json.dumps({"folds": [], "pooled": {}, **doc}), "[1, 2]"):
        (own / "report.json").write_text(content)  # damaged, walk-forward's, not an object
        assert not r.is_evaluate_report(own)
        with pytest.raises(ConfigError) as exc:
            r.refuse_foreign_report_dir(own)
        assert str(exc.value) == (
            f"--report-dir {own} holds report.json, report.md, equity.png, ..., which evaluate "
            "would overwrite and did not write (no evaluate report.json there); choose a new or "
            "empty folder, or move those files"
        )
    (other / "report.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds report\.md, which evaluate would overwrite"):
        r.refuse_foreign_report_dir(other)
