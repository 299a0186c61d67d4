"""Apple's AIMv1 weights (ml-aim's torch checkpoints) as a naraim backbone.

ml-aim's AIMv1 is naraim's ViT with a patch LayerNorm, no biases in the trunk (q/k/v, projection, MLP), exact
GELU, LayerNorm epsilon 1e-6 and ImageNet mean/std input, run with bidirectional attention for features.
Its sin-cos table puts the column half first ([sincos(col), sincos(row)], each [sin, cos], the frequencies
of naraim's sincos_1d); naraim's absolute_sincos_2d puts the row half first, so the import uses naraim's
factorised 'learned' table with row_table[r] = [0, sincos(r)] and col_table[c] = [sincos(c), 0]: exactly
ml-aim's table, on any grid up to LEARNED_SIDE patches a side. The attentive probe head
(AttentionPoolingClassifier: cls_token, k, v, linear without bias, BatchNorm running statistics) maps onto
naraim's ProbeHead; the import keeps it as RUN/probe_head.safetensors, which configs/probe.py:released
evaluates as released.
"""

import os

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from naraim.errors import UserError
from naraim.model import posemb
from naraim.model.sizes import get_size

VARIANTS = {"600m": "AIM-0.6B", "1b": "AIM-1B", "3b": "AIM-3B", "7b": "AIM-7B"}
LEARNED_SIDE = 256  # rows / columns of the factorised table (a 256 x 256-patch grid at most)


def model_overrides(variant: str) -> dict:
    """naraim's model.* keys of an AIMv1 trunk (`variant` one of VARIANTS' values, or a naraim size for
    tests)."""
    return {
        "variant": variant,
        "posemb": "learned",
        "learned_posemb_max_side": LEARNED_SIDE,
        "attention": "prefix_causal",  # AIMv1's pre-training; features are read bidirectionally
        "patch_norm": True,
        "use_bias": False,
        "gelu": "exact",
        "norm_eps": 1e-6,
        "pixel_scale": "imagenet",
    }


def _half_table(width: int, first: bool) -> np.ndarray:
    """[LEARNED_SIDE, width]: sincos of the index in the first or the second half of the channels."""
    half = np.asarray(posemb.sincos_1d(np.arange(LEARNED_SIDE), width // 2), np.float32)
    zeros = np.zeros_like(half)
    return np.concatenate([half, zeros] if first else [zeros, half], axis=1)


def _get(state: dict, key: str) -> np.ndarray:
    if key not in state:
        raise UserError(f"the checkpoint has no {key!r}: is it an AIMv1 (ml-aim) checkpoint of this size?")
    return np.asarray(state[key], np.float32)


def backbone_params(state: dict[str, np.ndarray], variant: str) -> dict:
    """naraim backbone params from ml-aim's state dict (keys 'preprocessor.*', 'trunk.*'; a leading
    'module.' or 'model.' is dropped)."""
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    size = get_size(variant)
    p, d, h, depth = size["patch"], size["width"], size["heads"], size["depth"]
    conv = _get(state, "preprocessor.patchifier.proj.weight")
    if conv.shape != (d, 3, p, p):
        raise UserError(
            f"the checkpoint's patch embedding is {list(conv.shape)}, {variant} needs {[d, 3, p, p]}"
        )
    params = {
        "embed": {
            "kernel": conv.transpose(2, 3, 1, 0).reshape(p * p * 3, d),
            "bias": _get(state, "preprocessor.patchifier.proj.bias"),
        },
        "embed_norm": {
            "scale": _get(state, "preprocessor.patchifier.norm.weight"),
            "bias": _get(state, "preprocessor.patchifier.norm.bias"),
        },
        "posemb": {"row": _half_table(d, first=False), "col": _half_table(d, first=True)},
        "encoder_norm": {
            "scale": _get(state, "trunk.post_trunk_norm.weight"),
            "bias": _get(state, "trunk.post_trunk_norm.bias"),
        },
    }
    for i in range(depth):
        b = f"trunk.blocks.{i}."
        params[f"block_{i}"] = {
            "norm1": {"scale": _get(state, b + "norm_1.weight"), "bias": _get(state, b + "norm_1.bias")},
            "norm2": {"scale": _get(state, b + "norm_2.weight"), "bias": _get(state, b + "norm_2.bias")},
            "attn": {
                "qkv": {"kernel": _get(state, b + "attn.qkv.weight").T.reshape(d, 3, h, d // h)},
                "out": {"kernel": _get(state, b + "attn.proj.weight").T.reshape(h, d // h, d)},
            },
            "mlp": {
                "fc1": {"kernel": _get(state, b + "mlp.fc1.weight").T},
                "fc2": {"kernel": _get(state, b + "mlp.fc2.weight").T},
            },
        }
    return params


def probe_head(state: dict[str, np.ndarray], variant: str) -> dict | None:
    """{'params', 'batch_stats'} of naraim's ProbeHead from ml-aim's AttentionPoolingClassifier ('head.*'),
    or None when the checkpoint has no head."""
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    if "head.cls_token" not in state:
        return None
    size = get_size(variant)
    d, h = size["width"], size["heads"]
    return {
        "params": {
            "query": _get(state, "head.cls_token").reshape(d),
            "key": {"kernel": _get(state, "head.k.weight").T.reshape(d, h, d // h)},
            "value": {"kernel": _get(state, "head.v.weight").T.reshape(d, h, d // h)},
            "classifier": {"kernel": _get(state, "head.linear.weight").T},
        },
        "batch_stats": {
            "bn": {"mean": _get(state, "head.bn.running_mean"), "var": _get(state, "head.bn.running_var")}
        },
    }


HEAD_FILE = "probe_head.safetensors"  # in an imported run: the released probe head's variables


def save_head(run: str, variables: dict) -> None:
    """Writes a probe head's {'params', 'batch_stats'} as RUN/HEAD_FILE (keys joined with '/')."""
    flat = traverse_util.flatten_dict(variables, sep="/")
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}, os.path.join(run, HEAD_FILE))


def load_head(run: str) -> dict:
    """The {'params', 'batch_stats'} that save_head wrote in RUN; UserError when RUN has none."""
    path = os.path.join(run, HEAD_FILE)
    if not os.path.isfile(path):
        raise UserError(
            f"{run} has no released probe head ({HEAD_FILE}): import weights that hold one with "
            "scripts/import_weights.py, or probe without probe.released_head"
        )
    return traverse_util.unflatten_dict(load_file(path), sep="/")
