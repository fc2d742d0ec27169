"""The error hierarchy. Library code raises these; only the CLI turns them into exit codes.

Every message names the thing that is wrong (file, row, flag, path) and what to do about it.
"""

from pathlib import Path


class JaxTraderError(Exception):
    """Base of every error a user can cause or fix."""


class DataError(JaxTraderError):
    """Candle data that cannot be read or fails validation."""


class EmptySplitError(DataError):
    """A chronological split with no candles left after the window, horizon and purge gaps."""


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


def path_problem(e: OSError) -> str:
    """What is wrong with the path of `e` and what to do. A file standing where a folder must go
    (an output folder named after a file, or below one) is said as such, not in errno's words
    ("File exists", "Not a directory")."""
    if isinstance(e, FileExistsError | NotADirectoryError) and e.filename is not None:
        path = Path(e.filename)
        blocker = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocker is not None:
            return (
                f"{blocker} is a file, and a folder is needed there; pass another path or move "
                "that file"
            )
    return f"{e.strerror or e}; check the path"
