"""Ctrl-C and SIGTERM for long runs: raised at once as KeyboardInterrupt, and remembered.

Python drops an exception raised while it runs a garbage-collection callback (JAX registers one) or a
__del__ method, printing a traceback: a KeyboardInterrupt from Ctrl-C would vanish there, and a training
loop would run on. Within `stop_signals()` both signals raise KeyboardInterrupt in the main thread as usual,
except where it would be dropped, and are always remembered; loops call `raise_if_stopped()` once per step,
which raises KeyboardInterrupt if a signal came. Within `deferred()` a signal is only remembered: a
training step that donates its state is never cut in half, so the state it returns can be saved.
"""

import contextlib
import gc
import signal
from collections.abc import Iterator

_received = False
_deferred = False


def _dropped_at(frame) -> bool:
    """Whether Python would drop an exception raised at `frame`: inside a garbage-collection callback or a
    __del__ method."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _handle(signum, frame) -> None:
    global _received
    _received = True
    if not _deferred and not _dropped_at(frame):
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (main thread only).
    A block inside another (train() under run_main) leaves the outer one's handlers and memory as they are."""
    global _received
    if signal.getsignal(signal.SIGINT) is _handle:
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, _handle) for s in signals}
    _received = False
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received = False


def raise_if_stopped() -> None:
    """Raises KeyboardInterrupt if SIGINT or SIGTERM came within the current stop_signals() block."""
    if _received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM are remembered but raise nothing; on leaving it a signal that came
    raises KeyboardInterrupt. Outside a stop_signals() block this changes nothing."""
    global _deferred
    outer, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = outer
    if not outer:
        raise_if_stopped()
