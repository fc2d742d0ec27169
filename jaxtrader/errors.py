"""The error hierarchy. Library code raises these; only the CLI turns them into exit codes.

Every message names the thing that is wrong (file, row, flag, path) and what to do about it.
"""


class JaxTraderError(Exception):
    """Base of every error a user can cause or fix."""


class DataError(JaxTraderError):
    """Candle data that cannot be read or fails validation."""


class FeatureError(JaxTraderError):
    """Engineered features that cannot be computed or are not finite after warm-up."""


class DeepLearningError(JaxTraderError):
    """Model building, training or inference failed (NaN loss, bad shapes, timeouts)."""


class DeadlineExceeded(DeepLearningError):
    """A call did not finish within its time budget."""


class CheckpointError(JaxTraderError):
    """A checkpoint is missing, partial, corrupt or incompatible."""


class StateError(JaxTraderError):
    """A trading state file refuses an action: unusable file, another config or model for a
    strategy id, a strategy already running, an unknown strategy."""


class ConfigError(JaxTraderError):
    """A configuration file or flag is invalid."""
