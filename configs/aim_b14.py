"""The square-image AIM baseline at ViT-B/14, as NARAIM's Table 1 trains it (its AIM row).

The NARAIM paper trained its AIM baseline with its own code and optimiser, so this config takes every
NARAIM reference setting of configs/naraim_b14.py (its training loss, float32 residual stream, pixels / 255,
bicubic resampling, its crops, the naraim_ref schedule, decay on every parameter, its validation MSEs) and
AIM's square geometry: RandomResizedCrop to 224x224 (area [0.4, 1]) + flip for training, shorter side to
256 then the central 224x224 for evaluation, 256 tokens. It does not take AIMv1's own recipe (patch
LayerNorm, bias-free trunk, exact GELU, MLP head, AdamW (0.9, 0.95), colour jitter): see configs/aim_600m.py.
"""

from configs import common
from naraim.train.config import default_pretrain_config


def _base(cfg):
    common.vit_b14_imagenet(cfg)
    common.naraim_reference(cfg)
    common.square_aim_data(cfg)


def get_config(arg: str | None = None):
    return common.apply_variants(default_pretrain_config(), arg or "base", {"base": _base})
