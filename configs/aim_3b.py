"""AIM-3B pre-training on square 224x224 images (AIM recipe; FSDP, bfloat16, MLP head). See
naraim.train.recipes."""

from naraim.train.recipes import aim_scale_config


def get_config(arg: str | None = None):
    return aim_scale_config("AIM-3B")
