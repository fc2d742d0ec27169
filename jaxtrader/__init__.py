"""jaxtrader: LSTM and Transformer models on market candles with JAX/Flax, run as a risk-controlled strategy."""

__version__ = "0.1.0"
