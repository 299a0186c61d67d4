"""AIM-7B pre-training on square 224x224 images (AIM recipe; FSDP, bfloat16, MLP head). See
configs/common.py."""

from configs import common


def get_config(arg: str | None = None):
    return common.aim_scale_config("AIM-7B")
