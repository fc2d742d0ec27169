"""Honest evaluation of a trained model.

metrics (classification, calibration), baselines (coin, training majority, always long, momentum,
logistic regression, optional LightGBM), significance (Wilson CI and binomial test on the effective
n, bootstrap Sharpe CI), backtest (causal, next-open fills, fees), summary (the per-candle table and
every number computed from it), selection (the decision-policy grid scored on the validation
split), trades (the `--trades` export read off the backtest), report (table, markdown, plots) and
run (one checkpoint end to end).
"""
