"""Structured logging (human text or JSON lines) and progress bars.

Every record carries a timestamp, level, event name and key=value fields. Library code calls
`log_event(logger, "event_name", key=value, ...)`; the CLI picks the output format once.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

LogFormat = Literal["text", "json"]
T = TypeVar("T")

_FIELDS_ATTR = "jt_fields"
_EVENT_ATTR = "jt_event"
_state: dict[str, LogFormat] = {"format": "text"}


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / jax scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, _EVENT_ATTR, None) or record.getMessage(),
            "logger": record.name,
        }
        doc.update(jsonable(getattr(record, _FIELDS_ATTR, {})))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def text_value(value: Any) -> str:
    """A field value for a human log line: floats (also numpy's, also inside lists, tuples and
    dicts) to 6 significant digits, so a float32 weight reads 1.0007, not 1.0006999969482422."""
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / jax arrays and scalars
        value = value.tolist()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(text_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {text_value(v)}" for k, v in value.items()) + "}"
    return str(value)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, _EVENT_ATTR, None) or record.getMessage()
        parts = [_timestamp(record), record.levelname.lower(), event]
        for k, v in getattr(record, _FIELDS_ATTR, {}).items():
            parts.append(f"{k}={text_value(v)}")
        return " ".join(str(p) for p in parts)


class BarAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes records to a stream; while a tqdm bar is shown, through `tqdm.write`, which clears
    the bar, writes the line and redraws the bar below it, so a record is never glued onto it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")  # no bar can be active before tqdm is imported
        bar_class = getattr(tqdm_module, "tqdm", None)
        if not getattr(bar_class, "_instances", None):
            super().emit(record)
            return
        try:
            bar_class.write(self.format(record), file=self.stream)  # type: ignore[union-attr]
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> None:
    """Configures the `jaxtrader` logger tree to write to stderr in the chosen format."""
    _state["format"] = fmt
    root = logging.getLogger("jaxtrader")
    root.handlers.clear()
    handler = BarAwareHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def log_format() -> LogFormat:
    return _state["format"]


class _LibraryJsonFormatter(logging.Formatter):
    """A library's log record as one of the project's JSON records: a fixed `event`, the
    library's own logger name and its message."""

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": self.event,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _FixedFormatHandler(BarAwareHandler):
    """A handler that keeps its format when the library sets a formatter on its logger's
    handlers (`ray.init` does, with its `logging_format`)."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(sys.stderr)
        self.fixed = formatter

    def format(self, record: logging.LogRecord) -> str:
        return self.fixed.format(record)


def route_library_logger(name: str, event: str, level: int = logging.WARNING) -> None:
    """Under `--log-format json`, the records of a library's logger `name` (its children's too)
    at `level` and above are written as the project's JSON records (`event`, `logger`, `message`)
    instead of the library's own text lines on stderr, which no JSON reader parses. In text mode
    the library keeps its own lines. Call it after the library has configured its logger (Ray
    does on import) and before it logs."""
    if log_format() != "json":
        return
    log = logging.getLogger(name)
    log.handlers = [_FixedFormatHandler(_LibraryJsonFormatter(event))]
    log.setLevel(level)
    log.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("jaxtrader") else f"jaxtrader.{name}")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Logs one structured event: a name plus key=value fields."""
    logger.log(level, event, extra={_EVENT_ATTR: event, _FIELDS_ATTR: fields})


def notice(event: str, message: str, level: int = logging.WARNING, **fields: Any) -> None:
    """A line for the person at the terminal (an error, an interruption, advice): the message as
    it is in text mode, one JSON record (`event`, `message`, the fields) under `--log-format json`,
    so that a log collector reading stderr never meets a line it cannot parse."""
    if log_format() == "json":
        log_event(get_logger("cli"), event, level, message=message, **fields)
    else:
        print(message, file=sys.stderr, flush=True)


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", leave: bool = False
) -> Iterator[T]:
    """A tqdm bar on stderr in text mode; silent pass-through with JSON logs or no terminal."""
    if log_format() == "json" or not sys.stderr.isatty():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True)


def progress_bar(total: int | None, desc: str = "", leave: bool = False) -> Any:
    """A manually advanced tqdm bar (`update`, `set_postfix`); disabled with JSON logs or no tty."""
    from tqdm import tqdm

    disable = log_format() == "json" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, disable=disable)
