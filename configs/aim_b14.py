"""Square-image AIM baseline at ViT-B/14 (NARAIM Table 1's AIM row): RandomResizedCrop to 224x224 for
training, shorter side to 256 then the central 224x224 for evaluation, 256 tokens; otherwise as
configs/naraim_b14.py."""

from naraim.train.config import apply_variant, default_pretrain_config
from naraim.train.recipes import square_aim_data


def _base(cfg):
    cfg.model.variant = "B/14"
    cfg.model.posemb = "absolute_sincos_2d"
    cfg.model.attention = "prefix_causal"
    cfg.model.dtype = "bfloat16"
    cfg.data.source = "tfds:imagenet2012"
    cfg.data.image_size = 224
    square_aim_data(cfg)
    cfg.loss.norm_pix = True


def get_config(arg: str | None = None):
    return apply_variant(default_pretrain_config(), arg or "base", {"base": _base})
