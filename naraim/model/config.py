"""Model config: every model.* key with its default, and validation of user-set values."""

import jax
import ml_collections

from naraim.errors import UserError
from naraim.infra.options import Option, overlay, section
from naraim.model import posemb, sizes
from naraim.model.attention import ATTENTION_MODES
from naraim.model.init import INITS
from naraim.model.mlp import GELUS
from naraim.model.pixels import PIXEL_SCALES

DTYPES = ("float32", "bfloat16")
HEADS = ("linear", "mlp", "denoising")  # pre-training heads (naraim.model.model.make_head)
# Rematerialisation policies by name (attributes of jax.checkpoint_policies that take no arguments).
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "checkpoint_dots",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots_with_no_batch_dims",
)
ATTENTION_IMPLS = ("", "xla", "cudnn")
CUDNN_HEAD_DIMS = (64, 128)  # head dimensions the automatic choice sends to cuDNN (its fused kernels' sizes)


MODEL_OPTIONS = {
    "variant": Option("B/14", "'<size>/<patch>' (naraim.model.sizes.SIZES) or 'AIM-0.6B' .. 'AIM-7B'"),
    "posemb": Option("absolute_sincos_2d", "one of naraim.model.posemb.POSEMBS"),
    "attention": Option("prefix_causal", "'causal' | 'prefix_causal' | 'bidirectional'"),
    "head": Option(
        "linear", "pre-training head: 'linear' | 'mlp' | 'denoising' (DARL: loss.objective='diffusion')"
    ),
    "head_depth": Option(12, "mlp head: residual MLP blocks"),
    "head_width": Option(
        0, "mlp head: its own width behind a Dense input projection; 0 = the backbone's, no projection"
    ),
    "head_mlp_ratio": Option(4.0, "mlp head: hidden width of each block = ratio x head width"),
    "dtype": Option("float32", "compute dtype ('float32' | 'bfloat16'); parameters are always float32"),
    "residual_dtype": Option(
        "", "dtype of the residual stream and `encoded`: '' = dtype; 'float32' (NARAIM reference)"
    ),
    "pixel_scale": Option(
        "imagenet",
        "model input: 'imagenet' (x/255 - mean) / std (AIM) | 'unit' x/255 (NARAIM ref) | 'inception' "
        "(x/255 - 0.5) / 0.5 (SigLIP, timm)",
    ),
    "patch_norm": Option(False, "LayerNorm after the patch embedding (AIM)"),
    "use_bias": Option(True, "biases in the blocks' attention and MLP layers (AIM's trunk has none)"),
    "gelu": Option("tanh", "'tanh' approximation (flax's default) | 'exact' erf GELU (AIM, torch's default)"),
    "norm_eps": Option(1e-6, "LayerNorm epsilon of the backbone and the mlp head (AIMv1 training: 1e-5)"),
    "weight_init": Option(
        "lecun",
        "kernels: 'lecun' normal (flax's default) | 'xavier' uniform (MAE, DARL: the fused q/k/v kernel as "
        "one D x 3D matrix) | 'xavier_separate_qkv' (l3m's AIMv1: q, k and v each as a D x D matrix)",
    ),
    "fractional_scale": Option(
        "count",
        "fractional posemb: row / rows ('count', NaViT) | row / (rows - 1) ('max_index', the NARAIM "
        "reference; 0 on a one-row grid, where the reference gives NaN)",
    ),
    "drop_path": Option(
        0.0,
        "stochastic depth of fine-tuning (configs/probe.py; rising linearly to this rate at the last block); "
        "0: off. Pre-training keeps it 0; it needs model.scan False",
    ),
    "denoiser": {
        "depth": Option(1, "denoising head (DARL): transformer blocks over [feature, noisy patch]"),
        "width": Option(0, "denoising head: width; 0 = the backbone's"),
        "heads": Option(0, "denoising head: attention heads; 0 = the backbone's"),
        "mlp_ratio": Option(4.0, "denoising head: MLP width / width"),
    },
    "remat": Option("", "'' = off, else a policy name in REMAT_POLICIES"),
    "scan": Option(False, "nn.scan over the blocks (faster compile for deep models; changes the param tree)"),
    "sos_token": Option(False, "DARL: learned start-of-sequence token prepended, last input patch dropped"),
    "rope_base": Option(10000.0, "rotary frequency base (rope_1d / rope_2d)"),
    "learned_posemb_max_side": Option(256, "'learned' posemb: table entries per axis (>= data.max_tokens)"),
    "posemb_grid": Option(
        "16x16", "'learned_2d' posemb: its table's grid ROWSxCOLS of patches (other grids resample it)"
    ),
    "attention_impl": Option(
        "",
        "'xla': naraim.model.attention.dot_product_attention; 'cudnn': jax.nn's cuDNN kernel (GPU, "
        "bfloat16); '' = automatic: 'cudnn' on a GPU with bfloat16 compute and head dimension in "
        "CUDNN_HEAD_DIMS, else 'xla'",
    ),
}


def default_model_config() -> ml_collections.ConfigDict:
    """All model.* keys with their defaults (ViT-B/14, NARAIM's prefix-causal attention, linear head)."""
    return section(MODEL_OPTIONS)


def resolve_model_config(cfg) -> ml_collections.ConfigDict:
    """Returns the defaults overlaid with the keys set in cfg (ConfigDict or mapping, nested sections merged
    key by key; None leaves leave the default); keys without a default are kept."""
    return overlay(default_model_config(), cfg)


def model_options(cfg) -> ml_collections.FrozenConfigDict:
    """The resolved model.* section (keys not set in cfg take their MODEL_OPTIONS default) as the frozen
    object the model's modules take, with attention_impl resolved for this machine."""
    out = resolve_model_config(cfg)
    size = sizes.get_size(out.variant)
    with out.unlocked():
        out.attention_impl = resolve_attention_impl(
            out.attention_impl, out.dtype, size["width"] // size["heads"]
        )
        out.rope_base, out.norm_eps, out.drop_path = (
            float(out.rope_base),
            float(out.norm_eps),
            float(out.drop_path),
        )
        out.sos_token, out.patch_norm, out.use_bias = (
            bool(out.sos_token),
            bool(out.patch_norm),
            bool(out.use_bias),
        )
    return ml_collections.FrozenConfigDict(out)


def _fail(key: str, value, allowed) -> None:
    raise UserError(f"model.{key}={value!r} is not supported: use one of {list(allowed)}")


def validate_model_config(cfg, patch_size: int, max_tokens: int) -> None:
    """Raises UserError naming the key and the fix for any bad model.* value."""
    cfg = resolve_model_config(cfg)
    size = sizes.get_size(cfg.variant)
    if size["patch"] != patch_size:
        raise UserError(
            f"model.variant {cfg.variant!r} has patch {size['patch']}, but the data uses {patch_size}"
        )
    if cfg.posemb not in posemb.POSEMBS:
        _fail("posemb", cfg.posemb, posemb.POSEMBS)
    if cfg.attention not in ATTENTION_MODES:
        _fail("attention", cfg.attention, ATTENTION_MODES)
    if cfg.head not in HEADS:
        _fail("head", cfg.head, HEADS)
    if cfg.dtype not in DTYPES:
        _fail("dtype", cfg.dtype, DTYPES)
    if cfg.remat and cfg.remat not in REMAT_POLICIES:
        _fail("remat", cfg.remat, ("",) + REMAT_POLICIES)
    if cfg.attention_impl not in ATTENTION_IMPLS:
        _fail("attention_impl", cfg.attention_impl, ATTENTION_IMPLS)
    if cfg.attention_impl == "cudnn" and cfg.dtype != "bfloat16":
        raise UserError("model.attention_impl='cudnn' needs model.dtype='bfloat16'")
    if cfg.attention_impl == "cudnn" and (backend := jax.default_backend()) != "gpu":
        raise UserError(f"model.attention_impl='cudnn' needs a GPU (this run's backend: {backend})")
    if cfg.head == "mlp" and (cfg.head_depth < 1 or cfg.head_width < 0 or cfg.head_mlp_ratio <= 0):
        raise UserError(
            f"model.head='mlp' needs model.head_depth >= 1 (got {cfg.head_depth}), model.head_width >= 0 "
            f"(got {cfg.head_width}; 0 = the backbone's width) and model.head_mlp_ratio > 0 "
            f"(got {cfg.head_mlp_ratio})"
        )
    if cfg.residual_dtype and cfg.residual_dtype not in DTYPES:
        _fail("residual_dtype", cfg.residual_dtype, ("",) + DTYPES)
    if cfg.pixel_scale not in PIXEL_SCALES:
        _fail("pixel_scale", cfg.pixel_scale, PIXEL_SCALES)
    if cfg.gelu not in GELUS:
        _fail("gelu", cfg.gelu, GELUS)
    if cfg.weight_init not in INITS:
        _fail("weight_init", cfg.weight_init, INITS)
    if not 0 <= float(cfg.drop_path) < 1 or (cfg.drop_path and cfg.scan):
        raise UserError(
            f"model.drop_path={cfg.drop_path} must be in [0, 1), and 0 with model.scan=True (one module per "
            "block)"
        )
    if cfg.fractional_scale not in posemb.FRACTIONAL_SCALES:
        _fail("fractional_scale", cfg.fractional_scale, posemb.FRACTIONAL_SCALES)
    if not float(cfg.norm_eps) > 0:
        raise UserError(f"model.norm_eps={cfg.norm_eps} must be > 0")
    head_dim = size["width"] // size["heads"]
    if cfg.posemb == "absolute_sincos_2d" and size["width"] % 4:
        raise UserError(
            f"model.posemb='absolute_sincos_2d' needs a width divisible by 4 (got {size['width']})"
        )
    if cfg.posemb == "rope_2d" and head_dim % 4:
        raise UserError(f"model.posemb='rope_2d' needs a head dimension divisible by 4 (got {head_dim})")
    if cfg.posemb == "learned" and cfg.learned_posemb_max_side < max_tokens:
        raise UserError(
            f"model.learned_posemb_max_side={cfg.learned_posemb_max_side} < data.max_tokens={max_tokens}: "
            "set it to at least data.max_tokens (a 1 x N image has N rows)"
        )
    if cfg.posemb == "learned_2d":
        try:
            posemb.parse_grid(cfg.posemb_grid)
        except ValueError as e:
            raise UserError(f"model.posemb_grid={e}") from None
    if max_tokens < 2:
        raise UserError(f"data.max_tokens={max_tokens}: next-patch prediction needs a budget of at least 2")


def resolve_attention_impl(attention_impl: str, dtype: str, head_dim: int) -> str:
    """The attention core that runs: attention_impl if set, else the automatic choice (default config)."""
    if attention_impl:
        return attention_impl
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and dtype == "bfloat16" and head_dim in CUDNN_HEAD_DIMS else "xla"


def remat_policy(name: str):
    """Returns jax.checkpoint_policies.<name>."""
    return getattr(jax.checkpoint_policies, name)
