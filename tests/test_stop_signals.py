"""Ctrl-C and SIGTERM are never lost, even when they land where Python drops exceptions."""

import gc
import os
import signal
import sys

import pytest
from probe_helpers import load_config

from naraim.stop_signals import deferred, raise_if_stopped, stop_signals
from naraim.train import trainer


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_keyboard_interrupt_and_is_remembered(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_signals():
        raise_if_stopped()  # nothing came yet
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0.1)  # a bytecode boundary for the handler to run at
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()
    raise_if_stopped()  # forgotten outside the block
    assert {s: signal.getsignal(s) for s in before} == before


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
    before = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers ignore SIGINT
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
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends():
    done = []
    with stop_signals():
        with pytest.raises(KeyboardInterrupt):
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0.1)
                done.append("the rest of the block ran")
        assert done
    with stop_signals(), deferred():  # nothing came: the block ends quietly
        pass


class _SignalAfterThirdStep:
    """Stands in for the jitted training step: runs the real one, then (third call) a Ctrl-C lands before it
    returns, when its input state is already donated."""

    def __init__(self, jitted):
        self.jitted, self.calls = jitted, 0

    def lower(self, *args):
        self.compiled = self.jitted.lower(*args).compile()
        return self

    def compile(self):
        return self

    def __call__(self, state, batch):
        out = self.compiled(state, batch)
        self.calls += 1
        if self.calls == 3:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)
        return out


@pytest.mark.slow
def test_a_ctrl_c_during_a_training_step_saves_the_state_the_step_returns(tmp_path, monkeypatch):
    real = trainer.make_train_step
    monkeypatch.setattr(trainer, "make_train_step", lambda *a: _SignalAfterThirdStep(real(*a)))
    cfg = load_config("demo", "naraim")
    cfg.update(total_steps=100, batch_size=8, log_every=1, checkpoint_every=1000, progress_bar=False)
    cfg.eval.num_examples, cfg.data.image_size, cfg.data.max_tokens = 0, 32, 16
    with pytest.raises(trainer.Interrupted, match="interrupted at step 3; the checkpoint at step 3 is kept"):
        trainer.train(cfg, str(tmp_path))
    assert (tmp_path / "checkpoints" / "3").is_dir()
