import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from naraim.errors import UserError
from naraim.train.checkpoint import Checkpointer, restore_params, write_config


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


def test_incompatible_checkpoint_is_a_user_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, make_state(1), {"pos": 1})
    ckpt.wait()
    wrong = make_state(0)
    wrong["params"]["backbone"]["w"] = jnp.zeros((5, 4))
    with pytest.raises(UserError, match="does not match"):
        ckpt.restore(1, abstract(wrong))
    ckpt.close()
    with pytest.raises(UserError, match="config.json not found"):
        restore_params(str(tmp_path))
