import asyncio
import gc
import logging
import os
import shutil
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from naraim.errors import UserError
from naraim.infra.checkpoint import Checkpointer, _reads_drained, restore_params, write_config


def make_state(value: float):
    return {
        "params": {"backbone": {"w": jnp.full((3, 4), value)}, "head": {"b": jnp.full((2,), value)}},
        "opt_state": (jnp.full((5,), value),),
        "step": jnp.int32(value),
        "rng": jax.random.PRNGKey(int(value)),
    }


def abstract(state):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def test_roundtrip_keep_policy_and_restore_params(tmp_path):
    write_config(str(tmp_path), ConfigDict({"total_steps": 9, "model": {"variant": "Pico/8"}}))
    ckpt = Checkpointer(str(tmp_path), keep=2, keep_every=4)
    for step in range(1, 8):
        ckpt.save(step, make_state(step), b"\x00iterator%d" % step if step % 2 else {"pos": step})
    ckpt.wait()
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")) == [4, 6, 7]
    state, it = ckpt.restore(7, abstract(make_state(0)))
    assert it == b"\x00iterator7"
    np.testing.assert_array_equal(state["params"]["backbone"]["w"], 7.0)
    np.testing.assert_array_equal(state["rng"], jax.random.PRNGKey(7))
    assert ckpt.restore(6, abstract(make_state(0)))[1] == {"pos": 6}
    ckpt.close()

    params, cfg, step = restore_params(str(tmp_path))
    assert step == 7 and cfg.model.variant == "Pico/8" and set(params) == {"backbone", "head"}
    np.testing.assert_array_equal(params["head"]["b"], 7.0)
    params, _, step = restore_params(str(tmp_path / "checkpoints" / "4"))
    assert step == 4 and isinstance(params["backbone"]["w"], np.ndarray)


def test_save_cut_off_midway_is_never_restored(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3)
    ckpt.save(1, make_state(1), {"pos": 1})
    ckpt.save(2, make_state(2), {"pos": 2})
    ckpt.wait()
    ckpt.close()
    # A process killed while writing step 3 leaves orbax's temporary folder behind (renamed when complete).
    partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-123"
    shutil.copytree(tmp_path / "checkpoints" / "2", partial)
    (partial / "state" / "manifest.ocdbt").unlink(missing_ok=True)
    ckpt = Checkpointer(str(tmp_path), keep=3)
    assert ckpt.latest_step() == 2
    state, it = ckpt.restore(2, abstract(make_state(0)))
    assert it == {"pos": 2} and int(state["step"]) == 2
    ckpt.close()


def test_restore_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, make_state(step), {"pos": step})
    ckpt.wait()
    ckpt.close()
    # step 3: an array file truncated; step 2: its manifest replaced by garbage
    files = sorted((tmp_path / "checkpoints" / "3" / "state").rglob("*"), key=lambda p: -p.stat().st_size)
    biggest = next(p for p in files if p.is_file())
    biggest.write_bytes(biggest.read_bytes()[:10])
    for meta in (tmp_path / "checkpoints" / "2").rglob("_METADATA"):
        meta.write_text("not json {")
    lines = []
    ckpt = Checkpointer(str(tmp_path), keep=3)
    step, state, it = ckpt.restore_newest_intact(abstract(make_state(0)), log=lines.append)
    assert step == 1 and it == {"pos": 1} and int(state["step"]) == 1
    assert len(lines) == 2 and "step 3 is damaged" in lines[0] and "step 2 is damaged" in lines[1]
    assert sorted(os.listdir(tmp_path / "checkpoints_damaged")) == ["2", "3"]
    assert ckpt.all_steps() == [1]
    ckpt.save(2, make_state(2), {"pos": 2})  # the run continues where the damaged ones were
    ckpt.wait()
    assert ckpt.latest_step() == 2
    ckpt.close()


def _many_arrays(value: float) -> dict:
    state = make_state(value)
    noise = jax.random.normal(jax.random.PRNGKey(0), (24, 256, 256))  # random: incompressible array files
    state["params"]["backbone"] = {f"w{i}": noise[i] + value for i in range(24)}
    return state


def test_a_read_that_failed_before_the_loop_closed_logs_nothing_when_collected(caplog):
    """Whether an abandoned read ends before or after orbax closes its loop is a race; one that ended before
    and that nothing awaited must not log 'Task exception was never retrieved' either. Other errors still
    reach the loop's handler."""

    async def read():
        raise OSError("truncated")

    with caplog.at_level(logging.ERROR, logger="asyncio"), _reads_drained():
        loop = asyncio.new_event_loop()
        task = loop.create_task(read())
        loop.run_until_complete(asyncio.sleep(0.01))  # the read ends with its error; nothing awaits it
        loop.call_exception_handler({"message": "another error"})
        loop.close()
    del task
    gc.collect()
    assert [r.getMessage() for r in caplog.records] == ["another error"]


def test_a_damaged_checkpoint_is_set_aside_with_one_line_and_nothing_else(
    tmp_path, capfd, caplog, monkeypatch
):
    """orbax abandons the other in-flight reads when one fails; they must not reach the console as
    'Event loop is closed' tracebacks, unretrieved task errors or unawaited-coroutine warnings."""
    ckpt = Checkpointer(str(tmp_path), keep=3)
    for step in (1, 2):
        ckpt.save(step, _many_arrays(step), {"pos": step})
    ckpt.wait()
    ckpt.close()
    for data in (tmp_path / "checkpoints" / "2" / "state").glob("ocdbt.process_*/d/*"):
        data.write_bytes(data.read_bytes()[:20])  # every array file truncated
    unraisable, lines = [], []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        ckpt = Checkpointer(str(tmp_path), keep=3)
        step, state, _ = ckpt.restore_newest_intact(abstract(_many_arrays(0)), log=lines.append)
        ckpt.close()
        time.sleep(1.0)  # the abandoned reads complete in tensorstore's threads
        gc.collect()
    assert step == 1
    np.testing.assert_array_equal(
        state["params"]["backbone"]["w3"], _many_arrays(1)["params"]["backbone"]["w3"]
    )
    assert len(lines) == 1 and lines[0].startswith("checkpoint at step 2 is damaged (")
    assert "\n" not in lines[0] and len(lines[0]) < 320
    assert unraisable == [] and [str(w.message) for w in warned] == []
    assert [r.getMessage() for r in caplog.records] == []
    out, err = capfd.readouterr()
    assert out == err == ""


def test_incompatible_or_missing_checkpoints_are_user_errors(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, make_state(1), {"pos": 1})
    ckpt.wait()
    wrong = make_state(0)
    wrong["params"]["backbone"]["w"] = jnp.zeros((5, 4))
    with pytest.raises(UserError, match="could be restored"):
        ckpt.restore_newest_intact(abstract(wrong), log=lambda line: None)
    ckpt.close()
    with pytest.raises(UserError, match="config.json not found"):
        restore_params(str(tmp_path))
    write_config(str(tmp_path), ConfigDict({"model": {"variant": "Pico/8"}}))
    with pytest.raises(UserError, match="no checkpoint at step 999 .*its steps: none yet"):
        restore_params(str(tmp_path / "checkpoints" / "999"))
    (tmp_path / "config.json").write_text('{"model": {"vari')
    with pytest.raises(UserError, match="damaged or unreadable"):
        restore_params(str(tmp_path))
