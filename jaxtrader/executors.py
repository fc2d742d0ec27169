"""Fold executors: how `run_walkforward` maps `run_fold` over the folds.

An executor (`walkforward.Executor`) is called with the fold tasks and an optional `poll()` and
yields `FoldResult`s as folds finish, in any order; `poll()` returns True once a stop was requested.
The driver (`run_walkforward`) saves every result as it arrives, so the executor never touches
the run directory.

- `local_executor` (in `walkforward`): this process, one fold after another. No Ray import.
- `RayExecutor`: one Ray task per fold (its K seeds still share one compiled step inside the
  task). The driver puts the market arrays in Ray's object store once, so workers need no shared
  disk and never read `--data`; checkpoints and outputs are written by the driver, so `--out` only
  has to be visible to the driver. Each worker runs JAX on CPU with one XLA thread per task (one
  Ray CPU per fold; the worker env is explicit in `worker_env`). A failed fold task is retried
  once (`max_retries`, `retry_exceptions`); a fold that still fails is reported with its error
  (`FoldsFailed`) after every other fold has finished and been saved, so `--resume` finishes the
  rest. A stop request (Ctrl-C) cancels the outstanding tasks; completed folds stay on disk.
  Under `--log-format json` the driver's Ray log records (the "ray" logger: warnings from
  `ray.init` and the like) are JSON records too (`logs.route_library_logger`, event `ray_log`).

Ray is an optional extra (`pip install 'jaxtrader[ray]'`); it is imported only by `RayExecutor`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jaxtrader.errors import ConfigError, DeepLearningError
from jaxtrader.logs import get_logger, log_event, progress_bar, route_library_logger
from jaxtrader.runtime import HUGE_PAGE_TUNABLE, ONE_XLA_THREAD, malloc_env, without_tcmalloc
from jaxtrader.walkforward import Executor, local_executor

if TYPE_CHECKING:
    from jaxtrader.walkforward import FoldResult, FoldTask

__all__ = [
    "EXECUTORS",
    "Executor",
    "FoldsFailed",
    "RayExecutor",
    "check_reachable",
    "close_executor",
    "describe",
    "describe_summary",
    "local_executor",
    "start_executor",
    "worker_env",
]

logger = get_logger("executors")

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'jaxtrader[ray]'"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # a local Ray's object store (market arrays + results)
CONNECT_TIMEOUT_S = 5.0  # a HOST:PORT --ray-address that accepts no TCP connection by then fails
# Flags that keep one XLA:CPU thread per task (PERF_NOTES: `--intra_op_parallelism_threads`
# aborts; this flag is the one that works), so a node runs as many folds as it has Ray CPUs.
_PASS_THROUGH = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")

FoldFn = Callable[["FoldTask"], "FoldResult"]


class FoldsFailed(DeepLearningError):
    """Fold tasks that still failed after their retries; the other folds completed."""

    def __init__(self, failures: dict[int, str], attempts: int, out: Any = None) -> None:
        self.failures = dict(sorted(failures.items()))
        self.attempts = attempts
        self.out = out
        what = "; ".join(f"fold {i}: {err}" for i, err in self.failures.items())
        msg = f"{len(self.failures)} fold(s) failed after {attempts} attempt(s) ({what})"
        if out is not None:
            msg += (
                f"; the completed folds are saved in {out}: fix the cause and rerun the same "
                f"command with --resume {out}"
            )
        super().__init__(msg)


def quiet_run_fold(task: FoldTask) -> FoldResult:
    """`run_fold` without a progress bar (a worker's bar would garble the driver's terminal)."""
    from jaxtrader.walkforward import run_fold

    return run_fold(task, show_progress=False)


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Ray fold worker: JAX on CPU, one XLA/BLAS thread, the driver's other
    XLA flags and compilation-cache settings (so workers compile as the driver would)."""
    env = dict(os.environ if environ is None else environ)
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} {ONE_XLA_THREAD}".strip()
    out = {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": flags,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **malloc_env(reuse_freed=False),  # K seeds stacked on one device: runtime.tune_malloc
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    out.update({k: env[k] for k in _PASS_THROUGH if k in env})
    if "GLIBC_TUNABLES" in env:
        # The driver may have restarted with huge pages for its own train loops (cli.main); Ray's
        # daemons inherit that, but fold workers keep their heap (runtime.huge_page_environment).
        out["GLIBC_TUNABLES"] = ":".join(
            t for t in env["GLIBC_TUNABLES"].split(":") if t and t != HUGE_PAGE_TUNABLE
        )
    if "LD_PRELOAD" in env:  # likewise tcmalloc (runtime.restart_environment): not measured there
        out["LD_PRELOAD"] = without_tcmalloc(env["LD_PRELOAD"])
    return out


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}"
        ) from None
    return ray


def _remote_fold(fold_fn: FoldFn, market: Any, task_fields: dict[str, Any]) -> tuple[Any, dict]:
    """The body of one Ray task: rebuilds the FoldTask around the shared market arrays."""
    from jaxtrader.runtime import enable_compilation_cache
    from jaxtrader.walkforward import FoldTask

    started = time.time()
    enable_compilation_cache()
    result = fold_fn(FoldTask(market=market, **task_fields))
    ended = time.time()
    info = {
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "started": started,
        "ended": ended,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return result, info


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a plain HOST:PORT (IPv6 as [::1]:6379); None for "auto", "local", a
    scheme (ray://...) or anything else Ray resolves by itself."""
    if "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host, int(port)) if host and port.isdigit() else None


# The HTTP/2 client preface and an empty SETTINGS frame: a Ray GCS is a gRPC server, and an
# HTTP/2 server's first frame is always SETTINGS (RFC 9113, 3.4), so one round trip tells a Ray
# cluster from anything else that accepts TCP on the port.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def _first_frame_type(sock: Any) -> int | None:
    """The frame type of the peer's first HTTP/2 frame header (9 bytes), None if it closes first."""
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))
        if not chunk:
            return None
        head += chunk
    return head[3]


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError unless a Ray cluster's GCS answers at a HOST:PORT `--ray-address`.

    `ray.init` (2.x) has no connect timeout: against a closed port it retries the GCS for minutes
    and ignores Ctrl-C and SIGTERM meanwhile, and against a port where something else listens
    (a web server, Redis) it waits about 20 s, so one bounded connect and one HTTP/2 round trip
    decide first. "auto" (which fails at once without a cluster) and ray:// addresses are left to
    Ray as before."""
    import socket

    target = _host_port(address)
    if target is None:
        return
    fix = (
        f"check the address, or start the cluster with `ray start --head --port {target[1]}` on "
        f"{target[0]}, or leave --ray-address out to run Ray on this machine"
    )
    try:
        sock = socket.create_connection(target, timeout=timeout)
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else None
        why = why or e.strerror or type(e).__name__
        raise ConfigError(
            f"--ray-address {address}: cannot connect to a Ray cluster ({why}); {fix}"
        ) from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        sock.close()  # a TLS cluster's GCS expects a handshake first, not cleartext HTTP/2
        return
    with sock:
        try:
            sock.sendall(_H2_PREFACE)
            frame = _first_frame_type(sock)
        except OSError as e:
            frame, closed = None, not isinstance(e, TimeoutError)
        else:
            closed = frame is None
    if frame != _H2_SETTINGS:
        if frame is not None:
            how = "answers, but not as gRPC"
        elif closed:
            how = "accepts a connection, then closes it"
        else:
            how = f"accepts a connection, then says nothing within {timeout:g} s"
        raise ConfigError(
            f"--ray-address {address}: the program listening there is not a Ray cluster (it "
            f"{how}; a Ray head's GCS port speaks gRPC); {fix}"
        )


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, read from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name (state, ppid, ...), or None once it has ended.
    The name may hold spaces and parentheses, so the fields start after the last ")"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def _descendants(pid: int) -> set[int]:
    """The processes below `pid`: its children, theirs, and so on."""
    children = _children_by_parent()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    """`pid` exists and is not a zombie (one of ours is reaped on the way)."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if fields[0] not in (b"Z", b"X"):
        return True
    with contextlib.suppress(ChildProcessError):  # not ours (reparented): init reaps it
        os.waitpid(pid, os.WNOHANG)
    return False


def _send(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _end_processes(pids: set[int], timeout: float = 10.0) -> None:
    """Kills `pids` and every process below them. Each is stopped (SIGSTOP) before its children
    are listed, so none starts another meanwhile, and none is reparented away from the list."""
    stopped: set[int] = set()
    todo = {p for p in pids if _running(p)}
    while todo:
        for pid in todo:
            _send(pid, signal.SIGSTOP)
        stopped |= todo
        children = _children_by_parent()
        todo = {c for p in todo for c in children.get(p, ())} - stopped
    for pid in stopped:
        _send(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored (main thread only): a second Ctrl-C must not cut a clean-up
    short and leave half of it undone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _init_or_clean_up(ray: Any, **kwargs: Any) -> None:
    """`ray.init(**kwargs)`; interrupted (Ctrl-C, or SIGTERM, which `ray.init` turns into
    `sys.exit(15)` before it connects), it leaves nothing running and raises KeyboardInterrupt.

    `ray.shutdown` alone is not enough: interrupted inside the node's start-up, Ray has not yet
    recorded the daemons it started (GCS, raylet, dashboard and runtime-env agents), and the
    raylet's agents outlived the driver by about a minute. So the processes that appeared below
    this one during `ray.init` are ended as well."""
    before = _descendants(os.getpid())
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code != signal.SIGTERM:
            raise
        with _signals_ignored():
            started = _descendants(os.getpid()) - before
            with contextlib.suppress(Exception):
                ray.shutdown()
            _end_processes(started)
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)  # not Ray's sys.exit handler
        log_event(logger, "ray_init_stopped", logging.DEBUG, ended_processes=len(started))
        raise KeyboardInterrupt from None


@dataclass
class RayExecutor:
    """Runs each fold as one Ray task; results come back as they finish (`ray.wait`).

    `address`: None starts a private Ray on this machine (`num_cpus`, a 512 MB object store, no
    dashboard) unless Ray is already initialised in this process; "auto" or "HOST:PORT" connects
    to a running cluster (`ray start --head`). `close()` shuts down (or disconnects from) the Ray
    that `start()` initialised.
    `fold_fn` runs one fold inside the task (default `quiet_run_fold`); tests pass one that fails
    on purpose. `stats` holds one record per completed fold (worker, timings, peak RSS).
    """

    address: str | None = None
    num_cpus: int | None = None
    max_retries: int = 1
    fold_fn: FoldFn = quiet_run_fold
    object_store_memory: int | None = LOCAL_OBJECT_STORE_BYTES
    wait_seconds: float = 0.5  # how often the driver polls for a stop request while waiting
    stats: list[dict[str, Any]] = field(default_factory=list)
    _started_here: bool = False

    def start(self) -> RayExecutor:
        """Connects to (or starts) Ray. Call before installing signal handlers: `ray.init`
        replaces the driver's SIGTERM handler."""
        ray = _import_ray()
        # Ray's driver-side warnings (the "ray" logger's, e.g. on token authentication while
        # ray.init starts a local cluster) as JSON records under --log-format json, not Ray's
        # text lines; `ray.init` keeps the handler (it only sets the level and the formatter).
        route_library_logger("ray", "ray_log", logging.WARNING)
        if ray.is_initialized():
            return self
        kwargs: dict[str, Any] = {
            "log_to_driver": False,  # worker logs: /tmp/ray/session_latest/logs
            "include_dashboard": False,
            "logging_level": logging.WARNING,
        }
        if self.address is None:
            kwargs.update(num_cpus=self.num_cpus, object_store_memory=self.object_store_memory)
        else:
            check_reachable(self.address)
        # Ray's daemons start from this environment: without the driver's tcmalloc, as before it.
        preload = os.environ.get("LD_PRELOAD")
        if preload is not None:
            os.environ["LD_PRELOAD"] = without_tcmalloc(preload)
        try:
            # "local": a private Ray even when RAY_ADDRESS or a `ray start` on this machine exists
            # (address=None would join that cluster instead).
            _init_or_clean_up(ray, address=self.address or "local", **kwargs)
        except ConnectionError as e:
            raise ConfigError(
                f"--ray-address {self.address}: cannot connect to a Ray cluster ({e}); start one "
                "with `ray start --head` or leave --ray-address out to run Ray on this machine"
            ) from None
        finally:
            if preload is not None:
                os.environ["LD_PRELOAD"] = preload
        self._started_here = True
        try:
            resources = ray.cluster_resources()
            nodes = len([n for n in ray.nodes() if n.get("Alive")])
        except BaseException:  # Ctrl-C here: the Ray just started is not left running
            self.close()
            raise
        log_event(
            logger,
            "ray_started" if self.address is None else "ray_connected",
            address=self.address or "local",
            cpus=resources.get("CPU"),
            nodes=nodes,
        )
        return self

    def close(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(
        self, tasks: Sequence[FoldTask], poll: Callable[[], object] | None = None
    ) -> Iterator[FoldResult]:
        if not tasks:
            return
        self.start()
        ray = _import_ray()
        remote = ray.remote(_remote_fold).options(
            num_cpus=1,  # one XLA thread per task (worker_env)
            max_retries=self.max_retries,
            retry_exceptions=True,
            runtime_env={"env_vars": worker_env()},
        )
        # One copy of the arrays in the object store; every task reads it zero-copy on its node.
        markets: dict[int, Any] = {}
        fn_ref = ray.put(self.fold_fn)
        pending: dict[Any, tuple[int, float]] = {}
        for task in tasks:
            if id(task.market) not in markets:
                markets[id(task.market)] = ray.put(task.market)
            fields = {
                "fold": task.fold,
                "splits": task.splits,
                "cfg": task.cfg,
                "seeds": task.seeds,
                "folds_total": task.folds_total,
            }
            ref = remote.remote(fn_ref, markets[id(task.market)], fields)
            pending[ref] = (task.fold, time.time())
        log_event(logger, "ray_submitted", folds=[t.fold for t in tasks])
        failures: dict[int, str] = {}
        bar = progress_bar(len(tasks), "folds on ray")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.wait_seconds)
                for ref in ready:
                    fold, submitted = pending.pop(ref)
                    try:
                        result, info = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        failures[fold] = _error_line(e)
                        log_event(
                            logger,
                            "fold_failed",
                            fold=fold,
                            attempts=self.max_retries + 1,
                            error=failures[fold],
                        )
                        bar.update(1)
                        continue
                    self.stats.append(self._record(result, info, submitted))
                    bar.update(1)
                    yield result
                # After the finished folds were handed over (and saved): a stop cancels the rest.
                if pending and poll is not None and poll():
                    raise KeyboardInterrupt("stop requested")
        finally:
            bar.close()
            for ref in pending:
                ray.cancel(ref, force=True)  # a running jitted step would not see a soft cancel
            if pending:
                log_event(logger, "ray_cancelled", folds=sorted(f for f, _ in pending.values()))
        if failures:
            raise FoldsFailed(failures, self.max_retries + 1)

    def _record(self, result: FoldResult, info: dict[str, Any], submitted: float) -> dict[str, Any]:
        received = time.time()
        task_s = info["ended"] - info["started"]
        rec = {
            "fold": result.fold,
            "host": info["host"],
            "pid": info["pid"],
            "fold_seconds": round(result.seconds, 3),
            "train_seconds": round(result.train_seconds, 3),
            "queued_seconds": round(info["started"] - submitted, 3),
            # Ray's own cost around the fold: argument fetch + task setup inside the worker
            # (task time minus the fold's), and getting the result back to the driver.
            "overhead_seconds": round(max(task_s - result.seconds, 0.0), 3)
            + round(max(received - info["ended"], 0.0), 3),
            "worker_peak_rss_mb": round(info["peak_rss_mb"], 1),
        }
        log_event(logger, "ray_fold_done", **rec)
        return rec

    def summary(self) -> dict[str, Any]:
        """Per-fold Ray overhead against the fold's time, and the workers' peak RSS."""
        if not self.stats:
            return {}
        overhead = [s["overhead_seconds"] for s in self.stats]
        fold_s = [s["fold_seconds"] for s in self.stats]
        return {
            "folds": len(self.stats),
            "workers": len({(s["host"], s["pid"]) for s in self.stats}),
            "overhead_seconds_median": statistics.median(overhead),
            "overhead_seconds_max": max(overhead),
            "fold_seconds_median": statistics.median(fold_s),
            "overhead_share": sum(overhead) / max(sum(fold_s), 1e-9),
            "worker_peak_rss_mb_max": max(s["worker_peak_rss_mb"] for s in self.stats),
        }


def start_executor(kind: str, ray_address: str | None = None) -> Executor:
    """`local` (in-process, never imports Ray) or a started `RayExecutor`.

    Start it before installing signal handlers (`ray.init` replaces the SIGTERM handler) and
    `close_executor` it at the end.
    """
    if kind == "local":
        if ray_address is not None:
            raise ConfigError("--ray-address needs --executor ray")
        return local_executor
    if kind == "ray":
        return RayExecutor(address=ray_address).start()
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")


def close_executor(executor: Executor) -> None:
    """Shuts down the Ray a `RayExecutor` started. SIGINT and SIGTERM are ignored meanwhile: a
    second Ctrl-C (the stop notice asks for one to abort a fold) during `ray.shutdown` left the
    raylet's agents running and printed a second "interrupted" line."""
    if isinstance(executor, RayExecutor):
        with _signals_ignored():
            executor.close()


def describe(executor: Executor) -> str | None:
    """One line on Ray's cost for the CLI (None for the local executor or before any fold)."""
    s = executor.summary() if isinstance(executor, RayExecutor) else {}
    return describe_summary(s) if s else None


def describe_summary(s: Mapping[str, Any]) -> str:
    """`RayExecutor.summary()` as one line. The median says what a typical fold paid; the share is
    of the totals, where one slow task (a worker's first) can weigh more than all the others."""
    worst = f", max {s['overhead_seconds_max']:.2f} s" if "overhead_seconds_max" in s else ""
    return (
        f"Ray: {s['folds']} fold tasks on {s['workers']} worker process(es); Ray's overhead per "
        f"fold median {s['overhead_seconds_median']:.2f} s{worst} (fold median "
        f"{s['fold_seconds_median']:.1f} s), in all {100 * s['overhead_share']:.1f}% of the "
        f"folds' time; worker peak RSS {s['worker_peak_rss_mb_max']:.0f} MB"
    )
