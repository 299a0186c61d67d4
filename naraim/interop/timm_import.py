"""timm checkpoints as naraim backbones: which ones naraim's ViT computes exactly, as what.

import_config reads timm VisionTransformer checkpoints that have no class token, register tokens, layer
scale, q/k norm, pre-norm or fc_norm (as the export writes them, and timm's SigLIP *_gap_* models): their
full pos_embed becomes naraim's learned_2d table on the checkpoint's grid; and Eva checkpoints in the
export's form. import_params maps the weights (naraim.interop.timm.from_timm) and refuses any tensor that
has no place in naraim's ViT and is not zero. What does not map ends with one line (ImportError_).
"""

import numpy as np

from naraim.interop.timm import EVA_ARCHITECTURE, ImportError_, eva_config, from_timm
from naraim.model.config import resolve_model_config
from naraim.model.pixels import PIXEL_NORMS
from naraim.model.sizes import SIZES

# timm 1.0.31 VisionTransformer's defaults of the arguments the import reads
VIT_DEFAULTS = {
    "img_size": 224,
    "in_chans": 3,
    "patch_size": 16,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "proj_bias": True,
    "class_token": True,
    "reg_tokens": 0,
    "global_pool": "token",
    "fc_norm": None,
    "final_norm": True,
    "pre_norm": False,
    "qk_norm": False,
    "init_values": None,
    "no_embed_class": False,
    "pos_embed": "learn",
    "act_layer": None,
    "embed_norm_layer": None,
}
# arguments that leave forward_features unchanged (the head, dropout, init, how other sizes are fed)
FEATURE_NEUTRAL_ARGS = (
    "num_classes",
    "drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "weight_init",
    "dynamic_img_size",
    "dynamic_img_pad",
)
_SIGLIP_GAP = {"class_token": False, "global_pool": "avg", "fc_norm": False}
# named architectures whose timm 1.0.31 definitions import (a config.json's own model_args override them)
ARCHITECTURE_ARGS = {
    "vit_base_patch16_224": {},
    "vit_base_patch16_siglip_gap_224": _SIGLIP_GAP,
    "vit_base_patch16_siglip_gap_256": _SIGLIP_GAP,
    "vit_base_patch16_siglip_gap_384": _SIGLIP_GAP,
    "vit_base_patch16_siglip_gap_512": _SIGLIP_GAP,
    "vit_large_patch16_siglip_gap_256": dict(_SIGLIP_GAP, embed_dim=1024, depth=24, num_heads=16),
    "vit_large_patch16_siglip_gap_384": dict(_SIGLIP_GAP, embed_dim=1024, depth=24, num_heads=16),
}


def _refuse(what: str, why: str) -> None:
    raise ImportError_(f"timm checkpoint: {what}: {why}")


def _naraim_variant(width: int, depth: int, heads: int, mlp_dim: int, patch: int) -> str:
    """The naraim.model.sizes name with this shape, '<size>/<patch>'; ImportError_ when none has it."""
    for name, size in SIZES.items():
        if (size["width"], size["depth"], size["heads"], size["mlp_dim"]) == (width, depth, heads, mlp_dim):
            return f"{name}/{patch}"
    return _refuse(
        f"width {width}, depth {depth}, {heads} heads, MLP {mlp_dim}",
        "no naraim size has this shape (add it to naraim.model.sizes.SIZES)",
    )


def _pixel_scale(pretrained_cfg: dict) -> str:
    """model.pixel_scale of pretrained_cfg's mean and std."""
    if "mean" not in pretrained_cfg or "std" not in pretrained_cfg:
        _refuse("pretrained_cfg", "it has no mean and std, so the input normalisation is unknown")
    stats = (tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"]))
    for name, (mean, std) in {**PIXEL_NORMS, "unit": ((0.0,) * 3, (1.0,) * 3)}.items():
        if np.allclose(stats, (mean, std), rtol=0, atol=1e-6):
            return name
    return _refuse(
        f"mean {list(stats[0])}, std {list(stats[1])}",
        f"naraim's model.pixel_scale offers {sorted(PIXEL_NORMS)} and 'unit' (0, 1) only",
    )


def _input_grid(config: dict, args: dict, patch: int) -> tuple[int, int]:
    """(rows, cols) of patches of the input size timm builds the model for: model_args' img_size, else
    pretrained_cfg's input_size, else timm's default."""
    size = config.get("pretrained_cfg", {}).get("input_size")
    if size and "img_size" not in (config.get("model_args") or {}):
        height, width = size[1:]
    else:
        height, width = np.broadcast_to(args["img_size"], 2).tolist()
    if height % patch or width % patch:
        _refuse(f"input size {height}x{width}", f"not a multiple of the patch size {patch}")
    return height // patch, width // patch


def _eva_overrides(config: dict, state: dict[str, np.ndarray]) -> tuple[dict, tuple[int, int]]:
    """model.* overrides of an Eva checkpoint in the export's form (eva_config, with or without q/v
    biases), else ImportError_; use_bias where any bias of its blocks is not zero."""
    args = config.get("model_args")
    if not args:
        _refuse(
            f"architecture {config.get('architecture')!r}", "Eva imports only with the export's model_args"
        )
    patch, width, heads = args["patch_size"], args["embed_dim"], args["num_heads"]
    variant = _naraim_variant(width, args["depth"], heads, round(args["mlp_ratio"] * width), patch)
    biases = [  # q, v, projection and MLP biases (not the LayerNorms')
        v for k, v in state.items() if k.startswith("blocks.") and k.endswith(".bias") and "norm" not in k
    ]
    overrides = {
        "variant": variant,
        "posemb": "rope_2d",
        "rope_base": float(args["rope_temperature"]),
        "use_bias": any(np.any(b != 0) for b in biases),
        "gelu": "exact",
        "patch_norm": False,
        "norm_eps": 1e-6,
        "pixel_scale": _pixel_scale(config.get("pretrained_cfg", {})),
    }
    rows, cols = _input_grid(config, args, patch)
    expected = eva_config(resolve_model_config(overrides), rows, cols)
    expected.update(in_chans=3)
    for key, value in args.items():
        if key in FEATURE_NEUTRAL_ARGS or key == "qkv_bias":  # q/v biases: use_bias, from the weights
            continue
        if key not in expected:
            _refuse(f"Eva model_args {key}={value!r}", "naraim's import does not read this argument")
        if expected[key] != value:
            _refuse(f"Eva model_args {key}={value!r}", f"naraim's rope_2d ViT needs {expected[key]!r}")
    return overrides, (rows, cols)


def import_config(config: dict, state: dict[str, np.ndarray]) -> tuple[dict, tuple[int, int]]:
    """(naraim model.* overrides, (rows, cols) the checkpoint's input grid) of a timm config.json and its
    state dict, or ImportError_ naming the first argument naraim's ViT cannot reproduce."""
    architecture = config.get("architecture", "")
    if architecture == EVA_ARCHITECTURE:
        return _eva_overrides(config, state)
    if architecture not in ARCHITECTURE_ARGS and not config.get("model_args"):
        _refuse(
            f"architecture {architecture!r}",
            f"not one naraim knows ({', '.join(ARCHITECTURE_ARGS)}), and config.json has no model_args",
        )
    given = config.get("model_args", {})
    for key in given:
        if key not in VIT_DEFAULTS and key not in FEATURE_NEUTRAL_ARGS:
            _refuse(f"model_args {key}={given[key]!r}", "naraim's import does not read this argument")
    args = {**VIT_DEFAULTS, **ARCHITECTURE_ARGS.get(architecture, {}), **given}
    fc_norm = args["global_pool"] in ("avg", "avgmax", "max") if args["fc_norm"] is None else args["fc_norm"]
    unsupported = {
        "class_token": (
            args["class_token"],
            "naraim's ViT has no class token (timm's *_gap_* models have none)",
        ),
        "reg_tokens": (args["reg_tokens"], "naraim's ViT has no register tokens"),
        "init_values": (args["init_values"] is not None, "naraim's blocks have no layer scale"),
        "qk_norm": (args["qk_norm"], "naraim's attention has no q/k LayerNorm"),
        "pre_norm": (args["pre_norm"], "naraim's ViT has no LayerNorm before the blocks"),
        "fc_norm": (fc_norm, "its features skip the final LayerNorm, which naraim's features end with"),
        "final_norm": (not args["final_norm"], "naraim's features end with a LayerNorm"),
    }
    for key, (present, why) in unsupported.items():
        if present:
            _refuse(f"{key}={args[key]!r}", why)
    if args["in_chans"] != 3:
        _refuse(f"in_chans={args['in_chans']}", "naraim's ViT reads RGB images")
    if args["qkv_bias"] != args["proj_bias"]:
        _refuse(f"qkv_bias={args['qkv_bias']}, proj_bias={args['proj_bias']}", "naraim has one bias switch")
    gelus = {None: "exact", "gelu": "exact", "gelu_tanh": "tanh"}
    if args["act_layer"] not in gelus:
        _refuse(f"act_layer={args['act_layer']!r}", "naraim's MLP has the exact and the tanh GELU only")
    if args["embed_norm_layer"] not in (None, "layernorm"):
        _refuse(f"embed_norm_layer={args['embed_norm_layer']!r}", "naraim's patch norm is a LayerNorm")
    if args["pos_embed"] not in ("learn", "none"):
        _refuse(f"pos_embed={args['pos_embed']!r}", "naraim imports a learned table or none")
    patch, width = args["patch_size"], args["embed_dim"]
    if not isinstance(patch, int):
        _refuse(f"patch_size={patch!r}", "naraim's patches are square")
    rows, cols = _input_grid(config, args, patch)
    overrides = {
        "variant": _naraim_variant(
            width, args["depth"], args["num_heads"], round(args["mlp_ratio"] * width), patch
        ),
        "posemb": "learned_2d" if args["pos_embed"] == "learn" else "none",
        "posemb_grid": f"{rows}x{cols}",
        "use_bias": bool(args["qkv_bias"]),
        "gelu": gelus[args["act_layer"]],
        "patch_norm": args["embed_norm_layer"] == "layernorm",
        "norm_eps": 1e-6,
        "pixel_scale": _pixel_scale(config.get("pretrained_cfg", {})),
    }
    return overrides, (rows, cols)


class _ReadKeys(dict):
    """A state dict that remembers which keys were read (by [] or get)."""

    def __init__(self, state: dict):
        super().__init__(state)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def import_params(state: dict[str, np.ndarray], model: dict) -> dict:
    """naraim backbone params of a timm state dict that import_config accepted (from_timm), or
    ImportError_ for a tensor with no place in naraim's ViT that is not zero (layer scale, a class token,
    ...); the classifier head ('head.*') is left out."""
    tracked = _ReadKeys({k: np.asarray(v, np.float32) for k, v in state.items()})
    try:
        params = from_timm(tracked, model)
    except KeyError as e:
        _refuse(f"no {e.args[0]!r} in the weights", "its config.json implies one")
    for key in sorted(set(tracked) - tracked.read):
        if not key.startswith("head.") and np.any(tracked[key] != 0):
            _refuse(key, "naraim's ViT has no place for this tensor")
    return params
