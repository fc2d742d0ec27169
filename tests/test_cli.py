"""CLI behaviour in real subprocesses: help is fast and JAX-free, errors are one line with exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_interrupted_line

from jaxtrader.cli import cli


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jaxtrader", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def _all_command_paths() -> list[list[str]]:
    import click

    paths: list[list[str]] = [[]]

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, cmd in group.commands.items():
            paths.append([*prefix, name])
            if isinstance(cmd, click.Group):
                walk(cmd, [*prefix, name])

    walk(cli, [])
    return paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "root")
def test_help_works_for_every_command(path: list[str]) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_help_does_not_import_jax() -> None:
    code = (
        "import sys; from jaxtrader.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('jax', 'flax', 'optax', 'pandas', 'talib') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("HEAVY:"), out.stdout + out.stderr


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 1\n")
    result = run("--config", str(bad), "config", "show")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: unknown key 'train.epoch'")
    assert "Traceback" not in result.stderr


def test_wrong_flag_exits_2_without_traceback() -> None:
    result = run("config", "show", "--nope")
    assert result.returncode == 2
    assert "No such option" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["features", "compute"], "error: Missing option '--out'; see 'jaxtrader features compute "
         "--help'"),
        (["features", "compute", "--out", "f.txt"], "error: Invalid value for --out: f.txt: "
         "unsupported extension; use .csv, .csv.gz or .parquet; see 'jaxtrader features compute "
         "--help'"),
        (["evaluate", "--arch", "foo"], "error: Invalid value for '--arch': 'foo' is not one of "
         "'lstm', 'transformer'; see 'jaxtrader evaluate --help'"),
        (["train", "--bogus"], "error: No such option '--bogus'. Did you mean '--gaps'?; see "
         "'jaxtrader train --help'"),
        (["bogus"], "error: No such command 'bogus'; see 'jaxtrader --help'"),
        (["data", "info", "a.csv", "extra"], "error: Got unexpected extra argument (extra); see "
         "'jaxtrader data info --help'"),
        (["--log-format", "xml", "train"], "error: Invalid value for '--log-format': 'xml' is not "
         "one of 'text', 'json'; see 'jaxtrader --help'"),
        # click raises this one without its context: the command is read from the arguments.
        (["--config", "x.toml", "data", "synth", "--rows"], "error: Option '--rows' requires an "
         "argument; see 'jaxtrader data synth --help'"),
        (["train", "--config", "x.toml"], "error: No such option '--config'. Global options such "
         "as --config go before the command: jaxtrader --config ... train ...; see 'jaxtrader "
         "train --help'"),
        # NaN and infinity compare False with every bound: --max-minutes nan trained to the end
        # and lost the run to the manifest's JSON, --lr inf failed later naming no flag.
        (["train", "--max-minutes", "nan"], "error: Invalid value for '--max-minutes': 'nan' is "
         "not a finite number; see 'jaxtrader train --help'"),
        (["walkforward", "--max-minutes", "inf"], "error: Invalid value for '--max-minutes': "
         "'inf' is not a finite number; see 'jaxtrader walkforward --help'"),
        (["study", "--lr", "NaN"], "error: Invalid value for '--lr': 'NaN' is not a finite "
         "number; see 'jaxtrader study --help'"),
        (["config", "show", "--weight-decay", "inf"], "error: Invalid value for '--weight-decay': "
         "'inf' is not a finite number; see 'jaxtrader config show --help'"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_error_line_exit_2(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """click's three-line usage block ("Usage: ...", "Try ...", "Error: ...") is one `error:` line
    like every other error, naming the --help to read; the exit code stays click's 2."""
    from jaxtrader.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    assert (exc.value.code, captured.out, captured.err) == (2, "", line + "\n")


def test_help_and_a_group_without_its_command_still_show_the_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from click.testing import CliRunner

    from jaxtrader.cli import main

    main(["features", "compute", "--help"])  # returns: exit code 0
    expected = CliRunner().invoke(cli, ["features", "compute", "--help"], prog_name="jaxtrader")
    assert capsys.readouterr().out == expected.output
    assert expected.output.startswith("Usage: jaxtrader features compute [OPTIONS]")
    with pytest.raises(SystemExit) as exc:
        main(["config"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("Usage: jaxtrader config [OPTIONS] COMMAND")


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (
            [
                "--log-format",
                "json",
                "--config",
                "walkforward.toml",
                "walkforward",
                "--arch",
                "lstm",
            ],
            "walkforward",
        ),
        (["--debug", "-v", "study", "--seeds", "2"], "study"),
        (["--config=x.toml", "train"], "train"),
        (["--log-format", "json"], None),
    ],
)
def test_the_command_name_is_found_before_click_parses(args: list[str], name: str | None) -> None:
    from jaxtrader.cli import _command_name

    assert _command_name(args) == name


def test_a_wrong_allocator_choice_is_one_line_before_any_work(tmp_path: Path) -> None:
    import os

    for command in (["walkforward"], ["study", "--executor", "ray"]):
        result = subprocess.run(
            [sys.executable, "-m", "jaxtrader", *command, "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "JAXTRADER_MALLOC": "jemalloc"},
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
        assert "JAXTRADER_MALLOC='jemalloc' is not one of auto, tcmalloc, glibc" in result.stderr
        assert not (tmp_path / "x").exists()


def test_config_show_refuses_an_out_of_range_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndropout = 1.5\n")
    result = run("--config", str(bad), "config", "show")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: model.dropout=1.5 in config file {bad} is out of range: it must be a number in "
        "[0, 1); change it in that file\n"
    )


@pytest.mark.parametrize(
    "command",
    ["train", "walkforward", "study", "evaluate", "trade", "portfolio", "data info",
     "features compute", "models list", "config show"],
)  # fmt: skip
def test_a_global_option_after_the_command_says_where_it_goes(command: str) -> None:
    result = run(*command.split(), "--config", "x.toml")
    assert result.returncode == 2
    assert (
        "No such option '--config'. Global options such as --config go before the command: "
        f"jaxtrader --config ... {command} ..."
    ) in result.stderr
    assert "Traceback" not in result.stderr
    # An option no level has keeps click's own message.
    assert "go before" not in run(*command.split(), "--nope").stderr


def test_an_output_that_would_overwrite_an_input_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`portfolio --trades` on its own state file, `evaluate --predictions` on a manifest or on
    the candles, `features compute --out` on its --data: each wrote over its input, exit 0."""
    from jaxtrader.cli.common import refuse_overwriting
    from jaxtrader.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck" / "v1").mkdir(parents=True)
    cases = [
        ({"--trades": "paper.db"}, {"--state": "./paper.db"}, "--trades paper.db would overwrite "
         "what --state ./paper.db holds"),
        ({"--predictions": "ck/v1/manifest.json"}, {"--checkpoint": "ck/v1"}, "--predictions "
         "ck/v1/manifest.json would overwrite what --checkpoint ck/v1 holds"),
        ({"--predictions": "p.csv", "--trades": str(tmp_path / "p.csv")}, {}, "--predictions and "
         f"--trades both name {tmp_path / 'p.csv'}"),
    ]  # fmt: skip
    for outputs, inputs, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            refuse_overwriting(outputs, inputs)
    # Different files, unset flags and an output folder next to (not inside) an input pass.
    refuse_overwriting(
        {"--predictions": "p.csv", "--trades": None, "--report-dir": "ck/report"},
        {"--data": "candles.csv", "--checkpoint": "ck/v1", "--policy": None},
    )


@pytest.mark.parametrize("name", ["f.parquet", "f.csv"])
def test_an_output_path_that_is_a_folder_is_one_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`features compute --out f.parquet` with a folder of that name was an internal error
    (pyarrow's IsADirectoryError names no file); the CSV path already said what was wrong."""
    from jaxtrader.cli import main

    (tmp_path / name).mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["features", "compute", "--out", str(tmp_path / name)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot "), err
    assert name in err[0] and "internal error" not in err[0]


def test_a_csv_output_named_otherwise_is_refused(tmp_path: Path) -> None:
    """`evaluate --predictions p.parquet` wrote CSV text into a file no Parquet reader opens."""
    from jaxtrader.cli.common import refuse_non_csv
    from jaxtrader.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        refuse_non_csv({"--predictions": "p.csv", "--trades": "t.parquet"})
    assert str(caught.value) == (
        "--trades t.parquet: the file is a CSV; name it .csv (or .csv.gz, compressed)"
    )
    refuse_non_csv({"--predictions": "P.CSV", "--trades": "t.csv.gz", "--x": None})
    from jaxtrader.trading.store import Store

    Store(tmp_path / "s.db").close()  # a real, empty state file
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrader", "portfolio", "--state", str(tmp_path / "s.db"),
         "--trades", str(tmp_path / "t.txt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"error: --trades {tmp_path / 't.txt'}: the file is a CSV; name it .csv (or .csv.gz, compressed)\n"
    )
    assert not (tmp_path / "t.txt").exists()


def test_errors_are_json_records_under_log_format_json(tmp_path: Path) -> None:
    """With --log-format json every line on stderr parses, errors included: a log collector must
    not meet a plain `error:` line. The record holds the text mode's message, kind and exit code."""
    import json

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 1\n")
    cases = [
        (["--config", str(bad), "config", "show"], "error", "ConfigError", 2),
        (["config", "show", "--nope"], "usage_error", "NoSuchOption", 2),
        (["models", "list", "--ckpt-dir", str(bad)], "error", "CheckpointError", 2),
    ]
    for args, event, kind, code in cases:
        text = run(*args)
        for flags in (["--log-format", "json"], ["--log-format=json"]):
            result = run(*flags, *args)
            assert result.returncode == text.returncode == code, result.stderr
            lines = result.stderr.splitlines()
            assert len(lines) == 1, result.stderr
            record = json.loads(lines[0])
            assert (record["level"], record["event"], record["kind"]) == ("error", event, kind)
            assert record["exit_code"] == code
            # The same words as the text line ("error: <message>").
            assert text.stderr.rstrip("\n").endswith(record["message"]), (text.stderr, record)


def test_a_file_where_an_output_folder_goes_is_named(tmp_path: Path) -> None:
    """An output folder named after a file (or below one) said "File exists" / "Not a
    directory" in errno's words; the message names the file in the way."""
    from jaxtrader.errors import path_problem

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for target in (blocker, blocker / "SYNTH-USD" / "lstm"):
        with pytest.raises(OSError) as caught:
            target.mkdir(parents=True)
        assert path_problem(caught.value) == (
            f"{blocker} is a file, and a folder is needed there; pass another path or move that file"
        )
    with pytest.raises(OSError) as caught:
        open(tmp_path / "none" / "x.csv")  # noqa: SIM115 - a missing folder keeps errno's words
    assert path_problem(caught.value) == "No such file or directory; check the path"
    result = run("data", "synth", "--rows", "10", "--out", str(blocker / "x.csv"))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot write {blocker / 'x.csv'}: {blocker} is a file, and a folder is needed "
        "there; pass another path or move that file\n"
    )


def _catches_sigint(pid: int) -> bool:
    """Python has installed its SIGINT handler in process `pid` (bit 1 of SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & 0b10)
    return False


# The child only restores SIGINT's default between fork and exec: no JAX code runs in it.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_ctrl_c_in_a_command_without_its_own_handler_exits_130_with_one_line(
    log_format: str, tmp_path: Path
) -> None:
    """Ctrl-C during `evaluate` or `data synth` was click's "aborted", exit 1: the code of a crash.
    Then click wrote a bare newline to stderr before our "interrupted" record, a line no JSON
    reader can parse. Text mode keeps it: the message starts on a line of its own after the
    terminal's "^C"."""
    import signal
    import subprocess
    import time

    code = "from jaxtrader.cli import main; main()"
    args = ["--log-format", log_format, "data", "synth", "--rows", "3000000"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--out", str(tmp_path / "big.csv")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A job started in the background inherits SIGINT ignored: restore a terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while not _catches_sigint(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before it could be interrupted"
    time.sleep(0.5)  # inside the command by now: the synthetic market takes seconds to draw
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout) == (130, "")
    assert_one_interrupted_line(stderr, log_format)


def test_seed_commands_note_a_data_shards_setting_they_do_not_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses

    from jaxtrader.cli.common import note_unused_data_shards
    from jaxtrader.config import AppConfig, TrainConfig

    note_unused_data_shards(AppConfig(), "walkforward")  # unset: the arch default, nothing to say
    note_unused_data_shards(
        dataclasses.replace(AppConfig(), train=TrainConfig(data_shards=1)), "study"
    )
    assert capsys.readouterr().err == ""
    note_unused_data_shards(
        dataclasses.replace(AppConfig(), train=TrainConfig(data_shards=2)), "study"
    )
    err = capsys.readouterr().err
    assert err.startswith("note: train.data_shards=2 applies to `train` only; study splits")


# A KeyboardInterrupt that starts inside a gc callback while SIGINT is ignored (as while Ray shuts
# down): the second delivery of the interrupt, to the main thread, finds no handler and is lost.
_LOST_REDELIVERY = """
import gc, signal, time
import jaxtrader.config as config
armed = []
def callback(phase, info):
    if armed and phase == "start":
        armed.clear()
        raise KeyboardInterrupt  # as the SIGINT handler raises it, here inside the callback
gc.callbacks.append(callback)
to_toml = config.to_toml
def to_toml_while_sigint_is_ignored(cfg):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    armed.append(True)
    gc.collect()
    time.sleep(0.5)
    signal.signal(signal.SIGINT, previous)
    return to_toml(cfg)
config.to_toml = to_toml_while_sigint_is_ignored
from jaxtrader.cli import main
main({args!r})
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_swallowed_ctrl_c_is_never_a_silent_success(log_format: str) -> None:
    """A KeyboardInterrupt inside a gc callback is reported through sys.unraisablehook and
    dropped: the command went on, exit 0, with an "Exception ignored" traceback on stderr. The
    CLI delivers it again (tests/test_evaluate_cli.py); where even that cannot land, the command
    that ran to its end still says "interrupted" and exits 130, and nothing else on stderr."""

    args = ["--log-format", log_format, "config", "show"]
    code = _LOST_REDELIVERY.format(args=args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert "[train]" in proc.stdout  # the command did its work: its output is kept
    assert_one_interrupted_line(proc.stderr, log_format)


def test_debug_shows_the_traceback_and_keeps_the_input_error_exit_code(tmp_path: Path) -> None:
    """`jaxtrader --debug data info missing.csv` printed the traceback but exited 1 (an internal
    error's code) where the same command without --debug exits 2; so did a path error (OSError)."""
    (tmp_path / "a.csv").write_text("x\n")
    for args in (["data", "info", "missing.csv"], ["data", "synth", "--out", "a.csv/x.csv"]):
        plain = subprocess.run(
            [sys.executable, "-m", "jaxtrader", *args],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
        debug = subprocess.run(
            [sys.executable, "-m", "jaxtrader", "--debug", *args],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
        assert plain.returncode == 2 and plain.stderr.startswith("error: "), plain.stderr
        assert "Traceback (most recent call last)" not in plain.stderr
        assert debug.returncode == 2, debug.stderr
        assert "Traceback (most recent call last)" in debug.stderr
