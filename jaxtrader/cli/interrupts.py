"""Ctrl-C that Python would swallow: a KeyboardInterrupt raised while a gc callback runs.

Python runs a signal's handler at the next bytecode of the main thread, wherever that is. When it
is inside a `gc.callbacks` function (JAX and other libraries register some), or a `__del__` or a
weakref callback, the KeyboardInterrupt cannot propagate: Python reports it through
`sys.unraisablehook` ("Exception ignored in ...", a traceback on stderr) and carries on, so the
command ran to its end and exited 0 as if nobody had pressed Ctrl-C.

`watching()` (around the command, in `cli.main`) installs a hook that takes such a report for
what it is: it drops the traceback, counts the interrupt, and delivers it again to the main
thread (`_thread.interrupt_main`, the SIGINT handler in effect, as a real Ctrl-C) from a helper
thread once the main thread has left the hook and every gc callback, so it lands in the
command's own code and ends it as every interrupt does (exit 130, one line). Delivered again
into a callback, it is swallowed again and the same happens. Should a redelivery still be lost
(it could only fall into the hook itself, or under SIG_IGN), `main` ends a command that returns
normally after a swallowed interrupt as interrupted: an interrupt is never a silent success.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

# How long the helper thread waits before it looks where the main thread is, and between looks.
_SETTLE_S = 0.002
# It delivers anyway after this long (a gc callback that runs for seconds is still left).
_WAIT_LIMIT_S = 2.0


class Watch:
    """The state of one command's watch: whether it is on and how many interrupts were
    swallowed (each one delivered again)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = False
        self.swallowed = 0


_watch = Watch()


class _Hook:
    """`sys.unraisablehook` while a command is watched: a KeyboardInterrupt is counted and
    delivered again; every other report goes to the hook it replaced."""

    jaxtrader_interrupts = True

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        exc_type = unraisable.exc_type
        if _watch.active and isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            _watch.swallowed += 1
            # No traceback printed: the interrupt is delivered again, or `main` reports it.
            with contextlib.suppress(RuntimeError):  # no thread to spare: `main` reports it
                threading.Thread(target=_deliver, name="jaxtrader-interrupt", daemon=True).start()
            return
        self.previous(unraisable)


def _code_of(fn: object) -> CodeType | None:
    """The code object a Python callable runs (function, bound method, partial, or an instance
    of a class with a Python `__call__`); None for one written in C."""
    fn = getattr(fn, "func", fn)  # functools.partial
    fn = getattr(fn, "__func__", fn)  # a bound method
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(type(fn).__dict__.get("__call__"), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _in_the_way(frame: FrameType | None) -> bool:
    """Whether the main thread's stack at `frame` runs a gc callback or an unraisable hook, where
    a KeyboardInterrupt would be swallowed (again)."""
    unsafe = {_Hook.__call__.__code__}
    for fn in (*gc.callbacks, sys.unraisablehook):
        if (code := _code_of(fn)) is not None:
            unsafe.add(code)
    while frame is not None:
        if frame.f_code in unsafe:
            return True
        frame = frame.f_back
    return False


def _deliver() -> None:
    """The helper thread: once the main thread is out of the way, one interrupt to it."""
    main = threading.main_thread().ident
    deadline = time.monotonic() + _WAIT_LIMIT_S
    time.sleep(_SETTLE_S)
    while main is not None and time.monotonic() < deadline:
        if not _in_the_way(sys._current_frames().get(main)):
            break
        time.sleep(_SETTLE_S)
    with _watch.lock:  # `watching` turns the watch off under this lock: never after the command
        if _watch.active:
            _thread.interrupt_main()  # does nothing while SIGINT is ignored


@contextlib.contextmanager
def watching() -> Iterator[Watch]:
    """Watches the block for swallowed interrupts (see the module's docstring). The hook stays
    installed where another hook has wrapped it since; off the watch it passes everything on."""
    previous = sys.unraisablehook
    installed = not getattr(previous, "jaxtrader_interrupts", False)
    if installed:
        sys.unraisablehook = _Hook(previous)
    with _watch.lock:
        _watch.active, _watch.swallowed = True, 0
    try:
        yield _watch
    finally:
        with _watch.lock:
            _watch.active = False
        hook = sys.unraisablehook
        if installed and isinstance(hook, _Hook):
            sys.unraisablehook = hook.previous
