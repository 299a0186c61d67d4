"""A CPU-sized recipe for real image folders: NARAIM and AIM at 128 px with a 6-block ViT-Ti/16.

naraim   native aspect ratio (about 128x128 px, patch 16, up to 64 tokens), NARAIM's random crop and flip,
         prefix-causal attention, normalized-pixel targets, per-image loss mean, and AIM's MLP head (two
         residual MLP blocks): with a linear head the last blocks become the pixel decoder and probe worse
         than the first ones at this scale
aim      the same model and optimiser on AIM's square images (RandomResizedCrop 128x128 + flip)
naraim_native
         naraim at native resolution: budgets of 16, 32, 64 or 128 patches per image, packed into 16 rows
         of 128 tokens a step (on clothing-small about 2 images a row, so about the naraim arm's 32 images
         and tokens a step, with 4.6 % padding); evaluation as naraim's, padded to 128 tokens

Sized for scripts/study.py on a 2-core CPU: docs/study.md says how the size, the head, the batch (32: at
equal wall time, twice the updates of batch 64 probed better) and the schedule were chosen (by minival
accuracy). Any data.source works (folder:PATH, arrayrecord:GLOB, tfds:NAME).
"""

from configs import common
from naraim.train.config import default_pretrain_config


def _naraim(cfg):
    cfg.model.variant = "Ti6/16"
    cfg.model.posemb = "absolute_sincos_2d"
    cfg.model.attention = "prefix_causal"
    cfg.model.dtype = "float32"
    cfg.data.image_size = 128
    cfg.data.max_tokens = 64
    cfg.data.transforms = ("random_crop_native", "native_aspect_ratio_resize", "horizontal_flip")
    cfg.data.eval_transforms = ("native_aspect_ratio_resize",)
    cfg.model.head = "mlp"
    cfg.model.head_depth = 2
    cfg.loss.norm_pix = True
    cfg.loss.average = "per_image"


def _aim(cfg):
    _naraim(cfg)
    common.square_aim_data(cfg)


def _naraim_native(cfg):
    _naraim(cfg)
    common.native_resolution(cfg, budgets=(16, 32, 64, 128), max_tokens=128, max_images_per_row=8)
    cfg.batch_size = 16  # rows


VARIANTS = {"naraim": _naraim, "aim": _aim, "naraim_native": _naraim_native}


def get_config(arg: str | None = None):
    cfg = default_pretrain_config()
    cfg.total_steps = 2_400
    cfg.batch_size = 32
    cfg.log_every = 50
    cfg.eval_every = 600  # four evaluations: few-shot and kNN top-1 over the run (docs/training.md)
    cfg.checkpoint_every = 1_000
    cfg.keep_checkpoints = 1
    cfg.keep_every = 0
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = 100
    cfg.optim.cooldown_steps = 100
    cfg.eval.num_examples = 256
    cfg.eval.batch_size = 64
    cfg.eval.num_images = 6
    cfg.wandb.mode = "disabled"
    cfg.data.source = "synthetic"
    return common.apply_variants(cfg, arg or "naraim", VARIANTS)
