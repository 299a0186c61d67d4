"""NARAIM ViT-B/14 pre-training on ImageNet: the paper's Table 1 rows, as the reference code runs them.

base          native aspect ratio, absolute 2D sin-cos embedding, normalized pixels, no random crop
fractional    base + fractional position embedding (positions over the largest index, as the reference)
random_crop   fractional + NARAIM random crop (area [0.4, 1], aspect [0.75, 1.33], native aspect ratio)
no_norm       random_crop with raw-pixel targets in [0, 1] (Table 1 reads its rows cumulatively)
base_no_norm  base with raw-pixel targets in [0, 1]
native        random_crop at native resolution (GPU; not a paper row): budgets of 64-1,024 patches per image,
              packed into 128 rows of 1,024 tokens a step (the paper's 131k tokens a step; about 3.2
              images a row on clothing-small's photos), the loss a mean over images; validation as the
              other rows (S = 224, padded to 1,024 tokens)

Every row uses the reference code's settings (docs/reproducing.md): the loss that trained its models (masked
errors over batch x 255 slots, loss.average 'fixed_count'), a float32 residual stream under bfloat16 matmuls,
pixels / 255 as input, bicubic resampling of full-resolution decodes, the reference's native-resize rounding,
its schedule formula (naraim_ref) and weight decay on every parameter, and the validation MSEs of its protocol
(mse_ref, mse_ref_fixed_count) on its 49,664 validation images.
"""

from configs import common
from naraim.train.config import default_pretrain_config


def _base(cfg):
    common.vit_b14_imagenet(cfg)
    common.naraim_reference(cfg)
    cfg.data.max_tokens = 256
    cfg.data.transforms = ("native_aspect_ratio_resize", "horizontal_flip")
    cfg.data.eval_transforms = ("native_aspect_ratio_resize",)


def _fractional(cfg):
    _base(cfg)
    cfg.model.posemb = "fractional"
    cfg.model.fractional_scale = "max_index"


def _random_crop(cfg):
    _fractional(cfg)
    cfg.data.transforms = ("random_crop_native", "native_aspect_ratio_resize", "horizontal_flip")


def _no_norm(cfg):
    _random_crop(cfg)
    cfg.loss.norm_pix = False


def _base_no_norm(cfg):
    _base(cfg)
    cfg.loss.norm_pix = False


def _native(cfg):
    _random_crop(cfg)
    common.native_resolution(cfg, budgets=(64, 128, 256, 512, 1024), max_tokens=1024, max_images_per_row=16)
    cfg.batch_size = 128  # rows


VARIANTS = {
    "base": _base,
    "fractional": _fractional,
    "random_crop": _random_crop,
    "no_norm": _no_norm,
    "base_no_norm": _base_no_norm,
    "native": _native,
}


def get_config(arg: str | None = None):
    return common.apply_variants(default_pretrain_config(), arg or "base", VARIANTS)
