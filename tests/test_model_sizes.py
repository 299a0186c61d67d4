"""Size table, variant parsing, and parameter counts computed shape-only (nothing allocated)."""

import jax
import numpy as np
import pytest

from naraim.errors import UserError
from naraim.model.model import make_model
from naraim.model.sizes import get_size, patch_size
from naraim.model.vit import make_backbone


def test_parse_variants():
    assert get_size("B/14") == dict(width=768, depth=12, heads=12, mlp_dim=3072, patch=14)
    assert patch_size("L/16") == 16
    assert get_size("AIM-7B") == dict(width=4096, depth=32, heads=32, mlp_dim=16384, patch=14)
    assert patch_size("AIM-0.6B") == 14
    for bad in ("X/14", "B", "B/x", "B/0"):
        with pytest.raises(UserError):
            get_size(bad)


def shape_only_param_count(module, n: int, patch: int) -> int:
    batch = dict(
        patches=jax.ShapeDtypeStruct((1, n, patch * patch * 3), np.uint8),
        coords=jax.ShapeDtypeStruct((1, n, 2), np.int32),
        grid=jax.ShapeDtypeStruct((1, 2), np.int32),
        length=jax.ShapeDtypeStruct((1,), np.int32),
    )
    shapes = jax.eval_shape(
        lambda b: module.init(jax.random.key(0), b["patches"], b["coords"], b["grid"], b["length"]), batch
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_b14_backbone_has_86m_parameters():
    count = shape_only_param_count(make_backbone(dict(variant="B/14", attention="causal")), 256, 14)
    assert abs(count - 86e6) / 86e6 < 0.01, count


def test_aim_7b_builds_shape_only():
    count = shape_only_param_count(make_backbone(dict(variant="AIM-7B", attention="causal")), 256, 14)
    assert 6.3e9 < count < 6.8e9, count  # the trunk alone (AIM-7B's 7B includes its MLP head)


def test_model_params_are_backbone_and_head_in_float32():
    model = make_model(dict(variant="Ti/16", head="mlp", head_depth=2, attention="causal"))
    n = 4
    batch = dict(
        patches=jax.ShapeDtypeStruct((1, n, 768), np.uint8),
        coords=jax.ShapeDtypeStruct((1, n, 2), np.int32),
        grid=jax.ShapeDtypeStruct((1, 2), np.int32),
        length=jax.ShapeDtypeStruct((1,), np.int32),
    )
    shapes = jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)["params"]
    assert set(shapes) == {"backbone", "head"}
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {np.dtype(np.float32)}
    assert shapes["head"]["out"]["kernel"].shape == (192, 768)
