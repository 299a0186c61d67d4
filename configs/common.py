"""What several config files share: the way a config takes its variants, and the papers' recipe pieces.

configs/ is a package (the config loader puts the folder above it on sys.path), so every config file imports
this module as `from configs import common`, as big_vision's configs import theirs.
"""

from collections.abc import Callable

import ml_collections

from naraim.errors import UserError
from naraim.train.config import default_pretrain_config


def apply_variants(
    cfg: ml_collections.ConfigDict, spec: str, variants: dict[str, Callable], default: str = ""
) -> ml_collections.ConfigDict:
    """Applies the comma-separated variants of `spec` (`default` when empty) to `cfg` in place, in the order
    of `variants` (whatever order the command line names them in), and records `spec` in cfg.variant;
    an unknown name -> UserError naming the file's variants."""
    spec = spec or default
    names = [v for v in spec.split(",") if v]
    unknown = [v for v in names if v not in variants]
    if unknown:
        raise UserError(
            f"unknown config variant {', '.join(map(repr, unknown))}: use one or more (comma-separated) of "
            f"{', '.join(variants)}"
        )
    for name, apply in variants.items():
        if name in names:
            apply(cfg)
    cfg.variant = spec
    return cfg


def square_aim_data(cfg: ml_collections.ConfigDict) -> None:
    """AIM's square geometry: RandomResizedCrop to SxS + flip for training; shorter side to S*8/7 then the
    central SxS for evaluation; a budget of exactly (S/P)^2 tokens (data.max_tokens 0, so it follows
    overrides of data.image_size and model.variant)."""
    cfg.data.transforms = ("random_resized_crop", "horizontal_flip")
    cfg.data.eval_transforms = ("resize_shorter_center_crop",)
    cfg.data.max_tokens = 0


def native_resolution(
    cfg: ml_collections.ConfigDict, budgets: tuple[int, ...], max_tokens: int, max_images_per_row: int
) -> None:
    """Native resolution: each training image draws its patch budget from `budgets` (after NARAIM's random
    crop; never enlarged past its own patches), and first-fit packing fills rows of `max_tokens` tokens with
    up to `max_images_per_row` images, each attending only to itself. The loss is the mean over images
    (loss.average 'per_image'): every image counts once whatever its budget."""
    cfg.data.token_budgets = tuple(budgets)
    cfg.data.max_tokens = max_tokens
    cfg.data.transforms = ("random_crop_native", "fit_to_token_budget", "horizontal_flip")
    cfg.data.packing = "first_fit"
    cfg.data.packing_bins = 128
    cfg.data.max_images_per_row = max_images_per_row
    cfg.loss.average = "per_image"


def naraim_reference(cfg: ml_collections.ConfigDict) -> None:
    """The NARAIM reference code's settings (github daniel-gallo/naraim; docs/reproducing.md): the loss that
    trained its Table 1 models (the masked errors over batch x 255 slots, before its commit f8d1e65), raw
    targets in [0, 1], a float32 residual stream, pixels / 255 as input, bicubic resizing of full-resolution
    decodes with its native-resize rounding, its random crops (aspect (0.75, 1.33), the last of 10 draws that
    fits), its schedule formula, weight decay on every parameter, and its validation set (the 49,664 images of
    the whole 512-image batches of the 50,000)."""
    cfg.loss.average = "fixed_count"
    cfg.loss.raw_scale = "unit"
    cfg.model.residual_dtype = "float32"
    cfg.model.pixel_scale = "unit"
    cfg.data.resample = "bicubic"
    cfg.data.native_grid = "reference"
    cfg.data.native_crop = "center"
    cfg.data.jpeg_draft = False
    cfg.data.crop_ratio = (0.75, 1.33)
    cfg.data.crop_choice = "last"
    cfg.optim.schedule = "naraim_ref"
    cfg.optim.decay = "all"
    cfg.optim.end_lr = 0.0
    cfg.eval.num_examples = 49_664


def vit_b14_imagenet(cfg: ml_collections.ConfigDict) -> None:
    """NARAIM Table 1's shared setting: ViT-B/14, absolute 2D sin-cos embedding, prefix-causal attention,
    bfloat16 compute, ImageNet through TFDS at S=224, normalized-pixel targets (set the geometry after)."""
    cfg.model.variant = "B/14"
    cfg.model.posemb = "absolute_sincos_2d"
    cfg.model.attention = "prefix_causal"
    cfg.model.dtype = "bfloat16"
    cfg.data.source = "tfds:imagenet2012"
    cfg.data.image_size = 224
    cfg.loss.norm_pix = True


def aim_scale_config(model_variant: str) -> ml_collections.ConfigDict:
    """AIMv1 (AIM-0.6B .. AIM-7B) as Apple trains it (github apple/ml-l3m configs/aimv1/001_aim_v1_600M.yaml,
    apple/ml-aim): patch embedding + LayerNorm, bias-free trunk, exact GELU, LayerNorm eps 1e-5, xavier
    uniform init with q, k and v as three D x D matrices, an MLP head of its own width (12 blocks of width
    2048, MLP ratio 4); RandomResizedCrop (bicubic, area [0.4, 1]), flip and colour jitter (0.4, 0.4, 0.2,
    0.1) with p 0.8, full-size JPEG decoding; ImageNet mean/std as input, targets normalised from that
    standardised image; AdamW lr 1e-3, betas (0.9, 0.95), weight decay 0.05 on kernels only, clipping 1.0,
    warmup over 2.5% of 125k steps then cosine to 0; bfloat16 compute and residual stream (l3m's FSDP
    mixed precision); batch 4096, FSDP, remat, nn.scan."""
    cfg = default_pretrain_config()
    cfg.model.variant = model_variant
    cfg.model.posemb = "absolute_sincos_2d"
    cfg.model.attention = "prefix_causal"
    cfg.model.patch_norm = True
    cfg.model.use_bias = False
    cfg.model.gelu = "exact"
    cfg.model.norm_eps = 1e-5
    cfg.model.weight_init = "xavier_separate_qkv"
    cfg.model.head = "mlp"
    cfg.model.head_depth = 12
    cfg.model.head_width = 2048
    cfg.model.head_mlp_ratio = 4.0
    cfg.model.dtype = "bfloat16"
    cfg.model.remat = "dots_with_no_batch_dims_saveable"
    cfg.model.scan = True
    cfg.mesh.fsdp = True
    cfg.data.source = "tfds:imagenet2012"
    cfg.data.image_size = 224
    square_aim_data(cfg)
    cfg.data.transforms = ("random_resized_crop", "horizontal_flip", "color_jitter")
    cfg.data.resample = "bicubic"
    cfg.data.color_jitter = (0.4, 0.4, 0.2, 0.1)
    cfg.data.color_jitter_prob = 0.8
    cfg.data.jpeg_draft = False
    cfg.loss.norm_pix = True
    cfg.loss.target_pixel_scale = "imagenet"
    cfg.loss.average = "per_patch"
    cfg.batch_size = 4096
    cfg.total_steps = 125_000
    cfg.optim.schedule = "cosine"
    cfg.optim.lr = 1e-3
    cfg.optim.b1, cfg.optim.b2 = 0.9, 0.95
    cfg.optim.weight_decay = 0.05
    cfg.optim.decay = "kernels"
    cfg.optim.clip_norm = 1.0
    cfg.optim.warmup_steps = 3_125  # 2.5% of 125k
    cfg.optim.end_lr = 0.0
    cfg.variant = "base"
    return cfg
