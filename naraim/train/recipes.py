"""Recipe pieces shared by several config files (configs/*.py load by path, so they cannot import each
other)."""

import ml_collections

from naraim.model.sizes import patch_size
from naraim.train.config import default_pretrain_config


def square_aim_data(cfg: ml_collections.ConfigDict) -> None:
    """AIM's square geometry (set model.variant and data.image_size first): RandomResizedCrop to SxS + flip
    for training; shorter side to S*8/7 then the central SxS for evaluation; a budget of exactly (S/P)^2
    tokens."""
    cfg.data.transforms = ("random_resized_crop", "horizontal_flip")
    cfg.data.eval_transforms = ("resize_shorter_center_crop",)
    cfg.data.max_tokens = (cfg.data.image_size // patch_size(cfg.model.variant)) ** 2


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
    """AIM-0.6B .. AIM-7B on square ImageNet images: MLP head (12 blocks), bfloat16 compute, FSDP, cosine lr,
    global batch 4096 (AIM's), remat of the blocks to fit activations."""
    cfg = default_pretrain_config()
    cfg.model.variant = model_variant
    cfg.model.posemb = "absolute_sincos_2d"
    cfg.model.attention = "prefix_causal"
    cfg.model.head = "mlp"
    cfg.model.head_depth = 12
    cfg.model.dtype = "bfloat16"
    cfg.model.remat = "dots_with_no_batch_dims_saveable"
    cfg.model.scan = True
    cfg.mesh.fsdp = True
    cfg.data.source = "tfds:imagenet2012"
    cfg.data.image_size = 224
    square_aim_data(cfg)
    cfg.batch_size = 4096
    cfg.optim.schedule = "cosine"
    cfg.variant = "base"
    return cfg
