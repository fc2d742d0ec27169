"""Shared fixtures: paths to the real shared data (skipping with a reason when absent)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests compile many tiny programs and run each briefly: XLA's cheapest optimisation level cuts
# compile time about 2x (measured on the train step), which dominates test time on a CPU.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BTC_1H = SHARED_DATA / "binance_btcusdt_1h.csv.gz"
ETH_1H = SHARED_DATA / "binance_ethusdt_1h.csv.gz"
BTC_5M = SHARED_DATA / "binance_btcusdt_5m.csv.gz"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data {path.name} not found: ../shared/data is absent in this checkout")
    return path


@pytest.fixture
def btc_1h() -> Path:
    return _require(BTC_1H)


@pytest.fixture
def eth_1h() -> Path:
    return _require(ETH_1H)


@pytest.fixture
def btc_5m() -> Path:
    return _require(BTC_5M)


def extra_or_skip(module: str, extra: str) -> object:
    """`module`, or a skip when the optional `extra` is absent. Where tox installs the extra it
    also lists it in JAXTRADER_REQUIRE_EXTRAS, and its absence fails the test instead, so a broken
    install cannot pass CI as a quiet skip."""
    if extra in os.environ.get("JAXTRADER_REQUIRE_EXTRAS", "").split(","):
        return importlib.import_module(module)
    return pytest.importorskip(
        module,
        reason=f"the optional `{extra}` extra is not installed (pip install 'jaxtrader[{extra}]')",
    )


def lightgbm_or_skip() -> object:
    return extra_or_skip("lightgbm", "gbm")


def event_scalars(event_file: Path) -> dict[str, dict[int, float]]:
    """Reads a TensorBoard event file back: TFRecord framing (u64 length, u32 crc, payload, u32
    crc) around `Event` protobufs, parsed with tensorboardX's own proto classes."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data = event_file.read_bytes()
    scalars: dict[str, dict[int, float]] = {}
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def cli_counting_reads(file_name: str, args: list[str]) -> str:
    """Python source that runs `jaxtrader ARGS` in-process and, at exit, prints "<file_name>
    reads: N" on stderr: how often the command read that file (`Path.read_text`)."""
    return (
        "import atexit, pathlib, sys\n"
        "reads = []\n"
        "read_text = pathlib.Path.read_text\n"
        "def counted(self, *args, **kwargs):\n"
        f"    if self.name == {file_name!r}:\n"
        "        reads.append(str(self))\n"
        "    return read_text(self, *args, **kwargs)\n"
        "pathlib.Path.read_text = counted\n"
        f"atexit.register(lambda: print(f'{file_name} reads: {{len(reads)}}', file=sys.stderr))\n"
        "from jaxtrader.cli import main\n"
        f"main({args!r})\n"
    )


def assert_one_interrupted_line(stderr: str, log_format: str) -> None:
    """A command stopped by Ctrl-C said so in exactly one line on stderr (a JSON record under
    --log-format json), with nothing else, empty lines included."""
    if log_format == "text":
        assert stderr == "\ninterrupted\n", stderr[-3000:]
        return
    records = [json.loads(line) for line in stderr.split("\n")[:-1]]  # every line, empty too
    assert [(r["level"], r["event"], r["message"], r["exit_code"]) for r in records] == [
        ("error", "interrupted", "interrupted", 130)
    ], stderr[-3000:]
    assert stderr.endswith("}\n")


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Every file under `out` with its bytes, to show a refused command left them as they were."""
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def evaluate_report_dir_refused(report_dir: Path, checkpoint: Path) -> str:
    """stderr of `jaxtrader evaluate --report-dir report_dir` in a real process, asserted refused
    (exit 2, nothing on stdout)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrader", "evaluate", "--checkpoint", str(checkpoint),
         "--split", "test", "--policy", "plain", "--no-record-policy",
         "--report-dir", str(report_dir)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr[-3000:]
    return proc.stderr
