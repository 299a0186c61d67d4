"""The run config of imported weights: a naraim run with no steps that load_backbone and the probes read."""

from ml_collections import ConfigDict

from naraim.train.config import default_pretrain_config


def run_config(model: dict, image_size: int = 224) -> ConfigDict:
    """A pre-training config that describes an imported backbone: model.* as `model` says, the square data
    geometry of AIM and timm (random resized crops for training, the shorter side resized and a central
    image_size crop for evaluation, bicubic) at image_size (the probes inherit it), no steps."""
    cfg = default_pretrain_config()
    cfg.model.update(model)
    cfg.data.update(
        image_size=image_size,
        max_tokens=0,
        transforms=("random_resized_crop", "horizontal_flip"),
        eval_transforms=("resize_shorter_center_crop",),
        resample="bicubic",
    )
    cfg.total_steps = 0
    return cfg
