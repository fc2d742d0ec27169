"""Human log lines: rounded floats, and never glued onto a progress bar."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from jaxtrader import logs
from jaxtrader.logs import (
    LogFormat,
    get_logger,
    log_event,
    log_format,
    progress_bar,
    setup_logging,
    text_value,
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(raw: str) -> list[str]:
    """What a terminal shows for `raw`: \\r returns to column 0 and later text overwrites."""
    lines = []
    for chunk in raw.split("\n"):
        row: list[str] = []
        for part in chunk.split("\r"):
            row[: len(part)] = part
        lines.append("".join(row).rstrip())
    return lines


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[LogFormat], _Terminal]]:
    """Call it in the test body: pytest re-points sys.stderr at its capture between a fixture's
    setup and the test call, so a replacement made during setup would not reach the test."""

    def use(fmt: LogFormat = "text") -> _Terminal:
        term = _Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        setup_logging(fmt)
        return term

    root = logging.getLogger("jaxtrader")
    saved = (root.handlers[:], root.level, root.propagate, log_format())
    yield use
    root.handlers[:], root.level, root.propagate = saved[:3]  # as other tests left it
    logs._state["format"] = saved[3]


def test_log_line_is_never_glued_onto_an_active_progress_bar(
    terminal: Callable[[LogFormat], _Terminal],
) -> None:
    term = terminal("text")
    log = get_logger("test")
    bar = progress_bar(10, "epoch 1/3")
    assert not bar.disable  # a real bar: the "terminal" is a tty
    bar.update(4)
    bar.refresh()
    log_event(log, "stop_requested", signal="SIGINT")
    bar.update(2)
    bar.close()
    log_event(log, "fit_end", epochs_run=1)
    screen = _screen(term.getvalue())
    stop = [ln for ln in screen if "stop_requested" in ln]
    assert len(stop) == 1
    # The whole visible line is the record: no bar text before or after it.
    assert re.fullmatch(r"\S+ info stop_requested signal=SIGINT", stop[0]), screen
    # The bar was redrawn after the record (on the next line), then cleared by close().
    assert "epoch 1/3:  40%" in term.getvalue().split("stop_requested")[1]
    assert re.fullmatch(r"\S+ info fit_end epochs_run=1", screen[-2]), screen


def test_text_log_rounds_floats_also_in_lists_and_numpy(
    terminal: Callable[[LogFormat], _Terminal],
) -> None:
    term = terminal("text")
    weights = np.asarray([1.0007, 0.9993], dtype=np.float32)
    assert float(weights[0]) == 1.0006999969482422  # what used to be printed
    log_event(get_logger("test"), "fit_start", class_weights=weights.round(4).tolist(),
              lr=np.float32(3e-4), loss=0.693147180559945, steps=12,
              nested={"a": (0.1 + 0.2, 2)}, arr=weights)  # fmt: skip
    line = term.getvalue().strip()
    assert line.endswith(
        "info fit_start class_weights=[1.0007, 0.9993] lr=0.0003 loss=0.693147 steps=12 "
        "nested={a: [0.3, 2]} arr=[1.0007, 0.9993]"
    ), line


def test_json_log_keeps_full_precision(terminal: Callable[[LogFormat], _Terminal]) -> None:
    import json

    term = terminal("json")
    log_event(get_logger("test"), "x", loss=0.693147180559945)
    doc = json.loads(term.getvalue().strip())
    assert doc["loss"] == 0.693147180559945  # machine readers get the exact value


def test_text_value_leaves_non_floats_alone() -> None:
    assert text_value("a b") == "a b" and text_value(True) == "True" and text_value(None) == "None"
    assert text_value(np.int64(7)) == "7" and text_value(float("nan")) == "nan"


def test_a_notice_is_the_bare_line_in_text_and_one_record_in_json(
    terminal: Callable[[LogFormat], _Terminal], capsys: pytest.CaptureFixture[str]
) -> None:
    """Interruptions, advice and the walk-forward plan under --json go to stderr: as the person
    reads them in text mode, as JSON records (multi-line text in one record) under json."""
    import json

    from jaxtrader.cli.common import echo
    from jaxtrader.logs import notice

    message = "interrupted: fold 0 is saved in runs/x\nsecond line"
    term = terminal("text")
    notice("interrupted", message)
    echo("plan table", err=True, event="walkforward_plan", out="runs/x")
    echo("to stdout", err=False, event="walkforward_plan")
    assert term.getvalue() == f"{message}\nplan table\n"
    assert capsys.readouterr().out == "to stdout\n"

    term = terminal("json")
    notice("interrupted", message, logging.WARNING, done=[0])
    echo("plan table", err=True, event="walkforward_plan", out="runs/x")
    echo("to stdout", err=False, event="walkforward_plan")
    first, second = (json.loads(line) for line in term.getvalue().splitlines())
    assert (first["level"], first["event"], first["message"]) == ("warning", "interrupted", message)
    assert first["done"] == [0]
    assert (second["level"], second["event"], second["message"]) == (
        "info",
        "walkforward_plan",
        "plan table",
    )
    assert second["out"] == "runs/x"
    assert capsys.readouterr().out == "to stdout\n"  # a command's result stays on stdout as is


def test_a_library_logger_writes_json_records_under_json_and_its_own_lines_in_text(
    terminal: Callable[[LogFormat], _Terminal],
) -> None:
    """Ray's "ray" logger has its own text handler on stderr: under --log-format json its
    warnings were lines no JSON reader parses. Routed, they are the project's records; a
    formatter the library sets later on its handlers (ray.init does) changes nothing."""
    import json

    from jaxtrader.logs import route_library_logger

    library = logging.getLogger("jt_test_library")
    saved = (library.handlers[:], library.level, library.propagate)
    try:
        for fmt in ("text", "json"):
            term = terminal(fmt)  # type: ignore[arg-type]
            own = logging.StreamHandler(sys.stderr)
            own.setFormatter(logging.Formatter("%(levelname)s %(filename)s -- %(message)s"))
            library.handlers[:] = [own]
            library.propagate = False
            route_library_logger("jt_test_library", "library_log", logging.WARNING)
            for handler in library.handlers:  # as ray.init's logging_format does
                handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logging.getLogger("jt_test_library.part").info("not shown under json")
            logging.getLogger("jt_test_library.part").warning("the library's warning")
            lines = term.getvalue().splitlines()
            if fmt == "text":  # untouched: the library's own lines
                assert lines[-1].endswith(" the library's warning")
                continue
            records = [json.loads(line) for line in lines]
            assert [(r["level"], r["event"], r["logger"], r["message"]) for r in records] == [
                ("warning", "library_log", "jt_test_library.part", "the library's warning")
            ]
    finally:
        library.handlers[:], library.level, library.propagate = saved
