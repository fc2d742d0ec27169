"""Executors: `--executor ray` gives the same walk-forward as local; a failing fold task is retried,
reported, and the other folds are saved; resume finishes it; a stop request cancels running tasks.

The Ray tests start a small local Ray themselves (2 CPUs, 200 MB object store, no dashboard) and
shut it down at the end; they are marked `ray` and skipped with a reason when the `ray` extra is
not installed (one tox env installs it). The other tests here run everywhere.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import extra_or_skip
from test_walkforward import CFG, TOML, WF

from jaxtrader.walkforward import WalkForwardInterrupted, run_walkforward

# ray.init starts its daemons with subprocess (fork + exec at once): not a fork that runs JAX code.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
BOUND_SECONDS = 240  # the whole module: a hung Ray must not hang the suite


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """A local Ray started by the test; RayExecutor() uses it (it is already initialised)."""
    ray: Any = extra_or_skip("ray", "ray")
    faulthandler.dump_traceback_later(BOUND_SECONDS, exit=True)
    ray.init(
        address="local",  # never a developer's running cluster (RAY_ADDRESS, `ray start`)
        num_cpus=2,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    run_walkforward(CFG, WF, out=out)
    return out


def _same_predictions(a: Path, b: Path) -> None:
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb, check_exact=False, rtol=0, atol=1e-6)


@pytest.mark.ray
def test_ray_gives_the_same_walkforward_as_local(
    local_ray: str, local_run: Path, tmp_path: Path
) -> None:
    """The library path the CLI's `--executor ray` takes (in-process, so the test's Ray workers
    are reused by the next tests instead of starting again for a subprocess driver)."""
    from jaxtrader.executors import RayExecutor, describe

    out = tmp_path / "ray_run"
    executor = RayExecutor()
    run = run_walkforward(CFG, WF, out=out, executor=executor)
    _same_predictions(local_run, out)
    local = json.loads((local_run / "report.json").read_text())
    for key in ("pooled", "backtest", "buy_and_hold"):
        for k, v in local[key].items():
            assert run.report[key][k] == pytest.approx(v, abs=1e-6), (key, k)
    for fold in (0, 1):  # the driver wrote every fold's checkpoint
        assert (out / f"fold_{fold:02d}" / "manifest.json").is_file()
    assert sorted(s["fold"] for s in executor.stats) == [0, 1]
    assert (describe(executor) or "").startswith("Ray: 2 fold tasks on ")


@pytest.mark.ray
def test_failing_fold_is_retried_then_reported_and_resume_finishes(
    local_ray: str, local_run: Path, tmp_path: Path
) -> None:
    from jaxtrader.executors import FoldsFailed, RayExecutor, quiet_run_fold

    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky(task):  # runs in a Ray worker (pickled by value): fold 1 always fails
        if task.fold == 1:
            (attempts / f"{os.getpid()}_{time.time_ns()}").touch()
            raise RuntimeError("injected failure in fold 1")
        return quiet_run_fold(task)

    out = tmp_path / "run"
    with pytest.raises(FoldsFailed) as failed:
        run_walkforward(CFG, WF, out=out, executor=RayExecutor(fold_fn=flaky))
    err = failed.value
    assert err.failures == {1: "RuntimeError: injected failure in fold 1"}
    assert err.attempts == 2 and len(list(attempts.iterdir())) == 2  # tried, retried once
    assert str(out) in str(err) and "--resume" in str(err)
    assert (out / "fold_00" / "manifest.json").is_file()  # the other fold completed and is saved
    assert not (out / "fold_01" / "manifest.json").exists()
    fold0 = (out / "fold_00" / "fold.json").read_text()
    executor = RayExecutor()
    run_walkforward(CFG, WF, out=out, resume=True, executor=executor)
    assert [s["fold"] for s in executor.stats] == [1]  # only the missing fold ran
    assert (out / "fold_00" / "fold.json").read_text() == fold0
    _same_predictions(local_run, out)


@pytest.mark.ray
def test_stop_request_cancels_running_fold_tasks(local_ray: str, tmp_path: Path) -> None:
    from jaxtrader.executors import RayExecutor

    started = tmp_path / "started"
    started.mkdir()

    def slow(task):  # records its worker pid, then outlives the test unless cancelled
        (started / str(os.getpid())).touch()
        time.sleep(60)
        raise AssertionError("not cancelled")

    def stop_once_started() -> bool:
        return len(list(started.iterdir())) == 2

    out = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(WalkForwardInterrupted) as stopped:
        run_walkforward(
            CFG, WF, out=out, executor=RayExecutor(fold_fn=slow), should_stop=stop_once_started
        )
    assert stopped.value.done == [] and stopped.value.out == out
    assert time.perf_counter() - t0 < 45
    pids = [int(p.name) for p in started.iterdir()]
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "cancelled fold workers still running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_default_never_imports_ray_and_missing_ray_is_one_line(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from jaxtrader.executors import start_executor\n"
        "import jaxtrader.cli, jaxtrader.study, jaxtrader.walkforward\n"
        "start_executor('local')\n"
        "assert 'ray' not in sys.modules, 'local imported ray'\n"
        "sys.modules['ray'] = None  # as if the extra were not installed\n"
        "from jaxtrader.cli import main\n"
        "main(['walkforward', '--folds', '2', '--executor', 'ray'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: --executor ray needs Ray, which is not installed: pip install 'jaxtrader[ray]'"
    )
    assert "Traceback" not in proc.stderr


def test_ray_summary_line_gives_the_median_the_worst_and_the_share_of_totals() -> None:
    from jaxtrader.executors import describe_summary

    s = {
        "folds": 6,
        "workers": 2,
        "overhead_seconds_median": 0.008,
        "overhead_seconds_max": 2.04,
        "fold_seconds_median": 9.46,
        "overhead_share": 0.0182,
        "worker_peak_rss_mb_max": 1011.2,
    }
    assert describe_summary(s) == (
        "Ray: 6 fold tasks on 2 worker process(es); Ray's overhead per fold median 0.01 s, max "
        "2.04 s (fold median 9.5 s), in all 1.8% of the folds' time; worker peak RSS 1011 MB"
    )
    # A study board written before the max was recorded still reads.
    older = {k: v for k, v in s.items() if k != "overhead_seconds_max"}
    assert ", max" not in describe_summary(older)


def _closed_port() -> int:
    """A localhost port nothing listens on: bound by the OS, noted, then closed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_address_with_nothing_listening_fails_fast_with_one_line() -> None:
    """`ray.init` retried a closed HOST:PORT for minutes and ignored Ctrl-C."""
    extra_or_skip("ray", "ray")
    port = _closed_port()
    code = (
        "from jaxtrader.cli import main\n"
        "main(['walkforward', '--folds', '2', '--executor', 'ray', "
        f"'--ray-address', '127.0.0.1:{port}'])\n"
    )
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: --ray-address 127.0.0.1:{port}: cannot connect to a Ray cluster (Connection "
        f"refused); check the address, or start the cluster with `ray start --head --port "
        f"{port}` on 127.0.0.1, or leave --ray-address out to run Ray on this machine"
    ]
    assert took < 30  # interpreter + CLI start; the refused connect itself is immediate


def test_only_plain_host_port_addresses_are_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from jaxtrader.errors import ConfigError
    from jaxtrader.executors import _host_port, check_reachable

    assert _host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    for left_to_ray in ("auto", "local", "ray://10.0.0.5:10001", "head-node"):
        assert _host_port(left_to_ray) is None
        check_reachable(left_to_ray)  # no probe, no error: Ray handles these as before
    with pytest.raises(
        ConfigError, match=r"cannot connect to a Ray cluster \(Connection refused\)"
    ):
        check_reachable(f"127.0.0.1:{_closed_port()}", timeout=2)

    def silent(address: tuple[str, int], timeout: float) -> socket.socket:
        raise TimeoutError("timed out")  # a host that drops the SYN (a firewall, a dead node)

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(ConfigError, match=r"\(no answer within 2 s\); check the address"):
        check_reachable("10.0.0.5:6379", timeout=2)


@pytest.mark.parametrize(
    ("reply", "how"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "answers, but not as gRPC"),
        (None, "accepts a connection, then closes it"),
        (b"", "accepts a connection, then says nothing within 1 s"),
    ],
)
def test_an_address_where_something_else_listens_is_not_taken_for_ray(
    reply: bytes | None, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray.init` waited about 20 s against a port held by a program that is not Ray."""
    import socket
    import threading

    from jaxtrader.errors import ConfigError
    from jaxtrader.executors import check_reachable

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            if reply is None:
                return
            conn.recv(64)
            conn.sendall(reply)
            time.sleep(2)  # holds the connection open past the probe's timeout

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    try:
        with pytest.raises(ConfigError) as err:
            check_reachable(f"127.0.0.1:{port}", timeout=1)
        # A TLS cluster's GCS expects a handshake, not cleartext: only the connect is checked.
        monkeypatch.setenv("RAY_USE_TLS", "1")
        thread.join(5)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        check_reachable(f"127.0.0.1:{port}", timeout=1)
    finally:
        thread.join(5)
        server.close()
    assert str(err.value) == (
        f"--ray-address 127.0.0.1:{port}: the program listening there is not a Ray cluster (it "
        f"{how}; a Ray head's GCS port speaks gRPC); check the address, or start the cluster "
        f"with `ray start --head --port {port}` on 127.0.0.1, or leave --ray-address out to run "
        "Ray on this machine"
    )


@pytest.mark.ray
def test_a_running_cluster_address_passes_the_probe(local_ray: str) -> None:
    from jaxtrader.executors import check_reachable

    check_reachable(local_ray)  # the GCS of the test's own Ray answers in HTTP/2 (gRPC)


def _interruptible(code: str) -> subprocess.Popen[str]:
    """`python -c code` with pipes, Ctrl-C-able: a job started in the background inherits SIGINT
    ignored, so the child gets a terminal's default back."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _process_tree(root: int) -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, start time) of every live process below `root`, read from /proc."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()  # state, ppid, ..., starttime (20th)
            if fields[0] not in (b"Z", b"X"):
                procs[int(name)] = (int(fields[1]), fields[19])
    tree: dict[int, tuple[int, bytes]] = {}
    grew = True
    while grew:
        below = {p: v for p, v in procs.items() if v[0] == root or v[0] in tree}
        grew = len(below) > len(tree)
        tree = below
    return tree


def _still_running(seen: dict[int, tuple[int, bytes]]) -> list[int]:
    """The processes of `seen` alive now (the same start time: not a reused pid), wherever they
    were reparented to."""
    alive = []
    for pid, (_, started) in seen.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X") and fields[19] == started:
            alive.append(pid)
    return alive


def _reap(seen: dict[int, tuple[int, bytes]]) -> list[int]:
    """The processes of `seen` still running 10 s on (a SIGKILLed process is gone within
    milliseconds), killed then so they never leak into the rest of the suite."""
    import signal

    deadline = time.monotonic() + 10
    while (left := _still_running(seen)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _tiny_ray_walkforward(tmp_path: Path, *flags: str) -> list[str]:
    """CLI arguments of a 2-fold, 2-seed walk-forward on Ray with the tiny config, out in
    tmp_path/run; `flags` go before --config (global options such as --log-format)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    return [*flags, "--config", str(config), "walkforward", "--folds", "2", "--seeds", "2",
            "--out", str(tmp_path / "run"), "--executor", "ray"]  # fmt: skip


@pytest.mark.ray
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupt_while_ray_starts_ends_like_any_other_and_leaves_nothing_running(
    signum: str, tmp_path: Path
) -> None:
    """Ctrl-C inside `ray.init` (here while the node waits for its raylet to register, which Ray
    waits up to 30 s for) left the raylet's agents running for a minute or more, Ray not yet
    having recorded them for `ray.shutdown`; SIGTERM there ended in Ray's `sys.exit(15)`, no
    line, exit 15. Both end as every interrupt does: one "interrupted" line, exit 130, and none
    of the processes Ray had started still running."""
    import signal

    extra_or_skip("ray", "ray")
    marker = tmp_path / "registering"
    args = _tiny_ray_walkforward(tmp_path)
    code = (
        "import pathlib, time\n"
        "import ray._private.services as services\n"
        "def slow_registration(*args, **kwargs):\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(120)\n"
        "services.get_node = slow_registration\n"
        "from jaxtrader.cli import main\n"
        f"main({args!r})\n"
    )
    proc = _interruptible(code)
    seen: dict[int, tuple[int, bytes]] = {}
    try:
        deadline = time.monotonic() + 60
        # Inside ray.init, the raylet's agents started (the processes that were left running).
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            seen = _process_tree(proc.pid)
            if marker.exists() and any(ppid != proc.pid for ppid, _ in seen.values()):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"ray.init never started the raylet's agents: {seen}")
        proc.send_signal(getattr(signal, signum))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    left = _reap(seen)
    assert proc.returncode == 130, stderr[-3000:]
    assert stdout == "" and stderr.endswith("\ninterrupted\n"), stderr[-3000:]
    assert [line for line in stderr.splitlines() if "interrupted" in line] == ["interrupted"]
    assert left == [], f"{len(left)} of Ray's {len(seen)} processes left running"


@pytest.mark.ray
def test_a_second_ctrl_c_while_ray_shuts_down_says_interrupted_once(tmp_path: Path) -> None:
    """After the first Ctrl-C's "interrupted: ..." line, a second one (the stop notice asks for it
    to abort a fold) during `ray.shutdown` escaped as a KeyboardInterrupt: a second "interrupted"
    line, and the raylet's agents left running. Shutting down ignores it now."""
    import signal

    extra_or_skip("ray", "ray")
    marker = tmp_path / "shutting_down"
    out = tmp_path / "run"
    args = _tiny_ray_walkforward(tmp_path)
    code = (
        "import pathlib, time\n"
        "import ray\n"
        "shutdown = ray.shutdown\n"
        "def slow_shutdown(*args, **kwargs):\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(2)  # a window for the second Ctrl-C\n"
        "    shutdown(*args, **kwargs)\n"
        "ray.shutdown = slow_shutdown\n"
        "from jaxtrader.cli import main\n"
        f"main({args!r})\n"
    )
    proc = _interruptible(code)
    seen: dict[int, tuple[int, bytes]] = {}
    stderr: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if "ray_submitted" in line:  # every fold is a running or queued Ray task
                seen = _process_tree(proc.pid)
                proc.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 60
                while not marker.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(stderr)
    left = _reap(seen)
    assert proc.returncode == 130, text[-3000:]
    assert [line for line in text.splitlines() if "interrupted" in line] == [
        f"interrupted: no fold was complete; rerun the same command with --resume {out} to "
        "start the run again"
    ]
    assert text.endswith(f"--resume {out} to start the run again\n") and seen
    assert left == [], f"{len(left)} of Ray's {len(seen)} processes left running"


@pytest.mark.ray
def test_ray_warnings_are_json_records_under_log_format_json(tmp_path: Path) -> None:
    """Under --log-format json every stderr line is a JSON record. Ray wrote its own text lines
    there: ray.init starting a local cluster warned "<date>\tWARNING
    authentication_token_setup.py:85 -- Token authentication is enabled ..." (Ray 2.60). The
    "ray" logger's records are the project's JSON records now (event ray_log); a warning Ray's
    logger gives while ray.init runs is added here, so the test holds whatever Ray warns about."""
    extra_or_skip("ray", "ray")
    args = [*_tiny_ray_walkforward(tmp_path, "--log-format", "json"), "--json"]
    code = (
        "import logging\n"
        "import ray\n"
        "init = ray.init\n"
        "def warning_init(*args, **kwargs):\n"
        "    logging.getLogger('ray._private.worker').warning('a warning of Ray\\'s own')\n"
        "    return init(*args, **kwargs)\n"
        "ray.init = warning_init\n"
        "from jaxtrader.cli import main\n"
        f"main({args!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # Ray's defaults
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND_SECONDS,
        env={**env, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["pooled"]["n"] > 0
    not_json = []
    records = []
    for line in proc.stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            not_json.append(line)
    assert not_json == [], "\n".join(not_json)
    assert all({"ts", "level", "event"} <= r.keys() for r in records)
    ray_logs = [(r["level"], r["logger"], r["message"]) for r in records if r["event"] == "ray_log"]
    assert ("warning", "ray._private.worker", "a warning of Ray's own") in ray_logs
    assert "ray_summary" in [r["event"] for r in records]
