"""naraim backbones in timm's VisionTransformer (or, with rope_2d, Eva) layout (timm 1.0.31), and back.

A backbone with an additive position embedding (absolute_sincos_2d, fractional, learned, learned_2d) or
none maps exactly onto timm's VisionTransformer with class_token=False, global_pool='avg', fc_norm=False,
num_classes=0: naraim's table is evaluated on the export grid and stored as a learned pos_embed (so the
exported model has a fixed input size), the patch kernel [P*P*3, D] (pixels in (row, col, channel) order)
becomes the conv weight [D, 3, P, P], a patch LayerNorm timm's embed_norm_layer='layernorm', the fused
q/k/v kernel [D, 3, H, Dh] the Linear weight [3D, D], the output projection [H, Dh, D] a [D, D] weight, and
dense kernels are transposed. The input is the image normalised as the run's model.pixel_scale says
(pretrained_cfg mean/std). The features are those of naraim with bidirectional attention.

A rope_2d backbone maps onto timm's Eva (rope_type 'cat' on the 'ij' patch grid, no absolute table,
dynamic_img_size: exact at any grid): both rotate each head's channels by the same angles (the first Dh/4
with the row, the next Dh/4 with the column, frequencies base^(-i/(Dh/4))), but naraim pairs channel i with
i + Dh/2 (rotate-half) and timm pairs 2i with 2i + 1 (interleaved), so the q and k projections' output
channels are reordered per head (rope_channel_order); q . k is unchanged by a common reordering. Eva's MLP
GELU is exact and it has no key bias, so rope_2d exports need model.gelu='exact' and use_bias=False.

What timm cannot carry ends with one line (ExportError): rope_1d (no timm equivalent), a LayerNorm epsilon
other than timm's 1e-6 (its config names norms by string), and for rope_2d the tanh GELU, biases and a
patch LayerNorm.

from_timm is the inverse of to_timm; naraim.interop.timm_import decides which timm checkpoints it reads.
"""

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from naraim.errors import UserError
from naraim.model import posemb
from naraim.model.config import resolve_model_config
from naraim.model.pixels import PIXEL_NORMS
from naraim.model.sizes import get_size

TIMM_VERSION = "1.0.31"  # the version whose layout this module writes (tests/fixtures/timm_manifest.json)
EXPORTABLE_POSEMBS = ("absolute_sincos_2d", "fractional", "learned", "learned_2d", "none", "rope_2d")
EVA_ARCHITECTURE = "vit_medium_patch16_rope_reg1_gap_256"  # an Eva entry point: model_args override it


class ExportError(UserError):
    """An option timm's VisionTransformer cannot carry exactly (one line, naming it and what to do)."""


class ImportError_(UserError):
    """A timm checkpoint naraim's ViT cannot reproduce exactly (one line, naming what and why)."""


def check_exportable(model_cfg) -> ConfigDict:
    """The resolved model config, or ExportError for the first option that does not export exactly."""
    cfg = resolve_model_config(model_cfg)
    if cfg.posemb not in EXPORTABLE_POSEMBS:
        raise ExportError(
            f"model.posemb={cfg.posemb!r} has no timm equivalent (rope_2d exports to timm's Eva): use "
            "load_backbone for this run"
        )
    if cfg.posemb == "rope_2d" and (cfg.gelu != "exact" or cfg.use_bias or cfg.patch_norm):
        raise ExportError(
            f"model.posemb='rope_2d' exports to timm's Eva, whose MLP GELU is exact and which has no key "
            f"bias or patch LayerNorm: model.gelu={cfg.gelu!r}, model.use_bias={bool(cfg.use_bias)} and "
            f"model.patch_norm={bool(cfg.patch_norm)} cannot be carried; use load_backbone for this run"
        )
    if abs(float(cfg.norm_eps) - 1e-6) > 1e-12:
        raise ExportError(
            f"model.norm_eps={cfg.norm_eps} cannot be carried by timm's config.json (its LayerNorm has eps "
            "1e-6): use load_backbone for this run"
        )
    if cfg.sos_token:
        raise ExportError("model.sos_token=True (DARL's SOS token) does not export: use load_backbone")
    return cfg


def grid_coords(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(coords int32 [1, rows*cols, 2] in raster order, grid int32 [1, 2])."""
    r, c = np.divmod(np.arange(rows * cols, dtype=np.int32), cols)
    return np.stack([r, c], -1)[None], np.array([[rows, cols]], np.int32)


def position_table(params: dict, cfg: ConfigDict, rows: int, cols: int) -> np.ndarray | None:
    """float32 [1, rows*cols, D]: the additive position embedding of a rows x cols grid (None: 'none')."""
    width = get_size(cfg.variant)["width"]
    coords, grid = grid_coords(rows, cols)
    coords, grid = jnp.asarray(coords), jnp.asarray(grid)
    if cfg.posemb == "none":
        return None
    if cfg.posemb == "absolute_sincos_2d":
        table = posemb.absolute_sincos_2d(coords, width)
    elif cfg.posemb == "fractional":
        module = posemb.Fractional(width, cfg.fractional_scale)
        table = module.apply({"params": params["posemb"]}, coords, grid)
    elif cfg.posemb == "learned_2d":
        module = posemb.Learned2D(width, posemb.parse_grid(cfg.posemb_grid))
        table = module.apply({"params": params["posemb"]}, coords, grid)
    else:
        module = posemb.Learned(width, cfg.learned_posemb_max_side)
        table = module.apply({"params": params["posemb"]}, coords)
    return np.asarray(table, np.float32)


def _stem_to_timm(params: dict, p: int, d: int) -> dict[str, np.ndarray]:
    """The patch embedding (kernel [P*P*3, D] -> conv weight [D, 3, P, P]), its LayerNorm where the run has
    one, and the final LayerNorm, the same in timm's VisionTransformer and Eva."""
    out = {
        "patch_embed.proj.weight": params["embed"]["kernel"].reshape(p, p, 3, d).transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": params["embed"]["bias"],
        "norm.weight": params["encoder_norm"]["scale"],
        "norm.bias": params["encoder_norm"]["bias"],
    }
    if "embed_norm" in params:
        out["patch_embed.norm.weight"] = params["embed_norm"]["scale"]
        out["patch_embed.norm.bias"] = params["embed_norm"]["bias"]
    return out


def _stem_from_timm(state: dict[str, np.ndarray], p: int, d: int) -> dict:
    """naraim's 'embed', 'embed_norm' (where the state has a patch LayerNorm) and 'encoder_norm' params of a
    timm state dict (the inverse of _stem_to_timm)."""
    out = {
        "embed": {
            "kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0).reshape(p * p * 3, d),
            "bias": state["patch_embed.proj.bias"],
        },
        "encoder_norm": {"scale": state["norm.weight"], "bias": state["norm.bias"]},
    }
    if "patch_embed.norm.weight" in state:
        out["embed_norm"] = {
            "scale": state["patch_embed.norm.weight"],
            "bias": state["patch_embed.norm.bias"],
        }
    return out


def rope_channel_order(head_dim: int) -> np.ndarray:
    """int [Dh]: timm's interleaved channel c of a head is naraim's rotate-half channel order[c] (2i <- i,
    2i + 1 <- i + Dh/2)."""
    half = head_dim // 2
    return np.stack([np.arange(half), np.arange(half) + half], -1).reshape(-1)


def _to_eva(params: dict, cfg: ConfigDict) -> dict[str, np.ndarray]:
    """timm Eva state dict of rope_2d backbone params (no biases: Eva's proj and MLP biases are zero)."""
    size = get_size(cfg.variant)
    p, d, h = size["patch"], size["width"], size["heads"]
    order = rope_channel_order(d // h)
    out = _stem_to_timm(params, p, d)
    for i in range(size["depth"]):
        block, prefix = params[f"block_{i}"], f"blocks.{i}."
        qkv = block["attn"]["qkv"]["kernel"]  # [D, 3, H, Dh]
        for j, name in enumerate(("q", "k", "v")):
            kernel = qkv[:, j][..., order] if name != "v" else qkv[:, j]
            out[prefix + f"attn.{name}_proj.weight"] = kernel.reshape(d, d).T
        out[prefix + "attn.proj.weight"] = block["attn"]["out"]["kernel"].reshape(d, d).T
        out[prefix + "attn.proj.bias"] = np.zeros(d, np.float32)
        for norm in ("norm1", "norm2"):
            out[prefix + f"{norm}.weight"], out[prefix + f"{norm}.bias"] = (
                block[norm]["scale"],
                block[norm]["bias"],
            )
        for fc in ("fc1", "fc2"):
            kernel = block["mlp"][fc]["kernel"]
            out[prefix + f"mlp.{fc}.weight"] = kernel.T
            out[prefix + f"mlp.{fc}.bias"] = np.zeros(kernel.shape[1], np.float32)
    return out


def to_timm(params: dict, model_cfg, rows: int, cols: int) -> dict[str, np.ndarray]:
    """timm state dict (float32 numpy) of naraim backbone params for a rows x cols grid: VisionTransformer,
    or Eva for rope_2d (any grid)."""
    cfg = check_exportable(model_cfg)
    if cfg.posemb == "rope_2d":
        eva = _to_eva(jax.tree.map(lambda x: np.asarray(x, np.float32), params), cfg)
        return {k: np.ascontiguousarray(v, np.float32) for k, v in eva.items()}
    size = get_size(cfg.variant)
    p, d = size["patch"], size["width"]
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    out = _stem_to_timm(params, p, d)
    table = position_table(params, cfg, rows, cols)
    if table is not None:
        out["pos_embed"] = table
    for i in range(size["depth"]):
        block, prefix = params[f"block_{i}"], f"blocks.{i}."
        attn, mlp = block["attn"], block["mlp"]
        out[prefix + "norm1.weight"], out[prefix + "norm1.bias"] = (
            block["norm1"]["scale"],
            block["norm1"]["bias"],
        )
        out[prefix + "norm2.weight"], out[prefix + "norm2.bias"] = (
            block["norm2"]["scale"],
            block["norm2"]["bias"],
        )
        out[prefix + "attn.qkv.weight"] = attn["qkv"]["kernel"].reshape(d, 3 * d).T
        out[prefix + "attn.proj.weight"] = attn["out"]["kernel"].reshape(d, d).T
        out[prefix + "mlp.fc1.weight"] = mlp["fc1"]["kernel"].T
        out[prefix + "mlp.fc2.weight"] = mlp["fc2"]["kernel"].T
        if cfg.use_bias:  # timm's proj_bias also switches the MLP's biases
            out[prefix + "attn.qkv.bias"] = attn["qkv"]["bias"].reshape(3 * d)
            out[prefix + "attn.proj.bias"] = attn["out"]["bias"]
            out[prefix + "mlp.fc1.bias"] = mlp["fc1"]["bias"]
            out[prefix + "mlp.fc2.bias"] = mlp["fc2"]["bias"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def from_timm(state: dict[str, np.ndarray], model_cfg) -> dict:
    """naraim backbone params of a timm state dict (written by to_timm, or a checkpoint import_config
    accepts): 'learned_2d' takes pos_embed [1, rows*cols, D] as its table on model.posemb_grid; the tables
    of 'learned' and 'fractional' are not recovered from a baked pos_embed (those params come back only
    for the other embeddings)."""
    cfg = resolve_model_config(model_cfg)
    size = get_size(cfg.variant)
    p, d, h = size["patch"], size["width"], size["heads"]
    if cfg.posemb == "rope_2d":
        return _from_eva(state, cfg)
    params = _stem_from_timm(state, p, d)
    if cfg.posemb == "learned_2d":
        rows, cols = posemb.parse_grid(cfg.posemb_grid)
        if state["pos_embed"].shape != (1, rows * cols, d):
            raise ImportError_(
                f"timm checkpoint: pos_embed {list(state['pos_embed'].shape)}: a {rows}x{cols} grid needs "
                f"{[1, rows * cols, d]}"
            )
        params["posemb"] = {"table": state["pos_embed"].reshape(rows, cols, d)}
    for i in range(size["depth"]):
        prefix = f"blocks.{i}."
        block = {
            "norm1": {"scale": state[prefix + "norm1.weight"], "bias": state[prefix + "norm1.bias"]},
            "norm2": {"scale": state[prefix + "norm2.weight"], "bias": state[prefix + "norm2.bias"]},
            "attn": {
                "qkv": {"kernel": state[prefix + "attn.qkv.weight"].T.reshape(d, 3, h, d // h)},
                "out": {"kernel": state[prefix + "attn.proj.weight"].T.reshape(h, d // h, d)},
            },
            "mlp": {
                "fc1": {"kernel": state[prefix + "mlp.fc1.weight"].T},
                "fc2": {"kernel": state[prefix + "mlp.fc2.weight"].T},
            },
        }
        if cfg.use_bias:
            block["attn"]["qkv"]["bias"] = state[prefix + "attn.qkv.bias"].reshape(3, h, d // h)
            block["attn"]["out"]["bias"] = state[prefix + "attn.proj.bias"]
            block["mlp"]["fc1"]["bias"] = state[prefix + "mlp.fc1.bias"]
            block["mlp"]["fc2"]["bias"] = state[prefix + "mlp.fc2.bias"]
        params[f"block_{i}"] = block
    return params


def _from_eva(state: dict[str, np.ndarray], cfg: ConfigDict) -> dict:
    """naraim rope_2d backbone params of an Eva state dict (written by _to_eva, or one _eva_overrides
    accepts); with model.use_bias, Eva's q and v biases (zero where it has none), a zero key bias (Eva has
    none) and its projection and MLP biases."""
    size = get_size(cfg.variant)
    p, d, h = size["patch"], size["width"], size["heads"]
    inverse = np.argsort(rope_channel_order(d // h))
    params = _stem_from_timm(state, p, d)
    for i in range(size["depth"]):
        prefix = f"blocks.{i}."
        qkv = []
        for name in ("q", "k", "v"):
            kernel = state[prefix + f"attn.{name}_proj.weight"].T.reshape(d, h, d // h)
            qkv.append(kernel[..., inverse] if name != "v" else kernel)
        params[f"block_{i}"] = {
            "norm1": {"scale": state[prefix + "norm1.weight"], "bias": state[prefix + "norm1.bias"]},
            "norm2": {"scale": state[prefix + "norm2.weight"], "bias": state[prefix + "norm2.bias"]},
            "attn": {
                "qkv": {"kernel": np.stack(qkv, axis=1)},
                "out": {"kernel": state[prefix + "attn.proj.weight"].T.reshape(h, d // h, d)},
            },
            "mlp": {fc: {"kernel": state[prefix + f"mlp.{fc}.weight"].T} for fc in ("fc1", "fc2")},
        }
        if cfg.use_bias:
            block = params[f"block_{i}"]
            zero = np.zeros(d, np.float32)
            q, v = (state.get(prefix + f"attn.{name}_proj.bias", zero) for name in ("q", "v"))
            heads = [q.reshape(h, d // h)[:, inverse], zero.reshape(h, d // h), v.reshape(h, d // h)]
            block["attn"]["qkv"]["bias"] = np.stack(heads)
            block["attn"]["out"]["bias"] = state[prefix + "attn.proj.bias"]
            for fc in ("fc1", "fc2"):
                block["mlp"][fc]["bias"] = state[prefix + f"mlp.{fc}.bias"]
    return params


def _size_args(cfg: ConfigDict, rows: int, cols: int) -> dict:
    """The model_args that say the ViT's size and input grid, the same for VisionTransformer and Eva."""
    size = get_size(cfg.variant)
    p = size["patch"]
    return {
        "img_size": [rows * p, cols * p],
        "patch_size": p,
        "embed_dim": size["width"],
        "depth": size["depth"],
        "num_heads": size["heads"],
        "mlp_ratio": size["mlp_dim"] / size["width"],
    }


def eva_config(cfg: ConfigDict, rows: int, cols: int) -> dict:
    """Eva's model_args for a rope_2d export: no class token, registers, absolute table or layer scale,
    separate q/k/v without biases, rotary 'cat' on the 'ij' grid at the run's base, any image size."""
    return {
        **_size_args(cfg, rows, cols),
        "qkv_bias": False,
        "qkv_fused": False,
        "init_values": None,
        "class_token": False,
        "num_reg_tokens": 0,
        "use_abs_pos_emb": False,
        "use_rot_pos_emb": True,
        "rope_type": "cat",
        "rope_temperature": float(cfg.rope_base),
        "rope_grid_indexing": "ij",
        "ref_feat_shape": None,
        "global_pool": "avg",
        "use_fc_norm": False,
        "use_post_transformer_norm": True,
        "dynamic_img_size": True,
        "num_classes": 0,
    }


def timm_config(model_cfg, rows: int, cols: int) -> dict:
    """timm's config.json for the exported model (VisionTransformer args and the pretrained_cfg that says
    how to feed it)."""
    cfg = check_exportable(model_cfg)
    size = get_size(cfg.variant)
    p = size["patch"]
    mean, std = PIXEL_NORMS.get(cfg.pixel_scale, ((0.0,) * 3, (1.0,) * 3))
    rope = cfg.posemb == "rope_2d"
    return {
        "architecture": EVA_ARCHITECTURE if rope else "vit_base_patch16_224",
        "num_classes": 0,
        "num_features": size["width"],
        "global_pool": "avg",
        "model_args": eva_config(cfg, rows, cols)
        if rope
        else {
            **_size_args(cfg, rows, cols),
            "qkv_bias": bool(cfg.use_bias),
            "proj_bias": bool(cfg.use_bias),
            "class_token": False,
            "global_pool": "avg",
            "fc_norm": False,
            "pos_embed": "none" if cfg.posemb == "none" else "learn",
            "act_layer": "gelu" if cfg.gelu == "exact" else "gelu_tanh",
            **({"embed_norm_layer": "layernorm"} if cfg.patch_norm else {}),
            "num_classes": 0,
        },
        "pretrained_cfg": {
            "input_size": [3, rows * p, cols * p],
            "fixed_input_size": not rope,
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "num_classes": 0,
        },
    }


def model_card(
    name: str, run_cfg: ConfigDict, step: int, rows: int, cols: int, probes: dict[str, dict]
) -> str:
    """README.md of an exported model: Hugging Face front matter (library_name timm) and what the run was."""
    m, d = run_cfg.model, run_cfg.data
    p = get_size(m.variant)["patch"]
    lines = [
        "---",
        "library_name: timm",
        "license: apache-2.0",
        "tags: [image-feature-extraction, timm, naraim]",
        "---",
        "",
        f"# {name}",
        "",
        f"A ViT-{m.variant} pre-trained with [naraim](https://github.com/daniel-gallo/naraim) by next-patch "
        f"prediction ({m.attention} attention, {m.posemb} position embedding, {run_cfg.loss.objective} "
        f"objective) for {step} steps of batch {run_cfg.batch_size} on `{d.source}`, exported for a "
        f"{rows}x{cols} grid ({rows * p}x{cols * p} pixels; "
        + (
            "rotary positions: any grid)."
            if m.posemb == "rope_2d"
            else "the position table is baked for that grid)."
        )
        + "",
        "",
        "```python",
        "import timm",
        f"model = timm.create_model('local-dir:{name}', pretrained=True)  # or hf-hub:<repo>",
        "features = model.forward_features(images)  # [B, T, D], final-LayerNorm tokens",
        "```",
        "",
        "Inputs: RGB in [0, 1], normalised with the config's mean and std. The features equal naraim's",
        "`load_backbone(...)(images)[0]` with bidirectional attention.",
    ]
    if probes:
        lines += ["", "| probe | top-1 | top-5 |", "|---|---|---|"]
        for probe, r in sorted(probes.items()):
            lines.append(f"| {probe} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f} |")
    return "\n".join(lines) + "\n"
