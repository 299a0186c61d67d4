"""Ctrl-C and SIGTERM are never lost, even when they land where Python drops exceptions."""

import gc
import os
import signal
import sys

import pytest

from naraim.stop_signals import raise_if_stopped, stop_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_keyboard_interrupt_and_is_remembered(signum):
    with stop_signals():
        raise_if_stopped()  # nothing came yet
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0.1)  # a bytecode boundary for the handler to run at
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()
    raise_if_stopped()  # forgotten outside the block
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_inside_a_gc_callback_is_kept_for_the_next_check(monkeypatch):
    """A Ctrl-C that lands in a garbage-collection callback (JAX has one) is not raised there, where Python
    would print a traceback and drop it, but at the loop's next check."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    fired = []

    def callback(phase, info):
        if not fired:
            fired.append(phase)
            os.kill(os.getpid(), signal.SIGINT)

    with stop_signals():
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        assert fired and not unraisable
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()


def test_a_nested_block_keeps_what_the_outer_one_remembered():
    """train() opens a block inside run_main's: a signal dropped before it must still stop the loop."""
    with stop_signals():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)
        with stop_signals():
            with pytest.raises(KeyboardInterrupt):
                raise_if_stopped()
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()
    raise_if_stopped()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
