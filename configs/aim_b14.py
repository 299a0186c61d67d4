"""Square-image AIM baseline at ViT-B/14 (NARAIM Table 1's AIM row): RandomResizedCrop to 224x224 for
training, shorter side to 256 then the central 224x224 for evaluation, 256 tokens; otherwise as
configs/naraim_b14.py."""

from naraim.train.config import apply_variant, default_pretrain_config
from naraim.train.recipes import square_aim_data, vit_b14_imagenet


def _base(cfg):
    vit_b14_imagenet(cfg)
    square_aim_data(cfg)


def get_config(arg: str | None = None):
    return apply_variant(default_pretrain_config(), arg or "base", {"base": _base})
