"""DARL ViT-L/16 pre-training (Li et al., "Denoising Autoregressive Representation Learning").

diffusion   the DARL recipe: square 224x224 images (random resized crop + flip), a learned start-of-sequence
            token, causal attention, raster order, decomposed 2D RoPE, one-block denoising patch decoder
            predicting x_0 under a high-noise Beta(1, 3) schedule for the signal level (mean 0.25)
mse         the same backbone with a linear patch decoder and the MSE objective
native      diffusion on NARAIM's native-aspect-ratio images (224*224 pixels in area, 196-token budget)

Initialisation and optimisation follow the paper's Table 7 (the MAE recipe): xavier-uniform init, no gradient
clipping, AdamW (0.9, 0.95), weight decay 0.05, batch 4096, base lr 1.5e-4 scaled by batch/256, cosine decay,
40 warm-up epochs of 800 (ImageNet-1k: 312 steps per epoch). The paper's exact Beta parameters did not
survive in our text copy; Beta(1, 3) is our choice of a schedule concentrated on heavy noise, which the
paper finds best for representations. Patch orderings: --config.data.ordering='nested_raster(4)' or
'round_robin(4)'. Evaluation: configs/probe.py:darl_linear (causal linear probe) and :darl_finetune.
"""

from configs import common
from naraim.train.config import default_pretrain_config

STEPS_PER_EPOCH = 1_281_167 // 4096


def _diffusion(cfg):
    cfg.model.variant = "L/16"
    cfg.model.posemb = "rope_2d"
    cfg.model.attention = "causal"
    cfg.model.sos_token = True
    cfg.model.head = "denoising"
    cfg.model.denoiser.depth = 1
    cfg.model.dtype = "bfloat16"
    cfg.model.weight_init = "xavier"
    cfg.data.source = "tfds:imagenet2012"
    cfg.data.image_size = 224
    cfg.data.ordering = "raster"
    cfg.data.jpeg_draft = False
    common.square_aim_data(cfg)
    cfg.loss.norm_pix = True
    cfg.loss.objective = "diffusion"
    cfg.loss.diffusion.beta_a = 1.0
    cfg.loss.diffusion.beta_b = 3.0
    cfg.loss.diffusion.predict = "x0"
    cfg.loss.diffusion.append_gamma = False


def _mse(cfg):
    _diffusion(cfg)
    cfg.model.head = "linear"
    cfg.loss.objective = "mse"


def _native(cfg):
    _diffusion(cfg)
    cfg.data.transforms = ("native_aspect_ratio_resize", "horizontal_flip")
    cfg.data.eval_transforms = ("native_aspect_ratio_resize",)
    cfg.data.max_tokens = 0  # the (224/16)^2 = 196 patches of a 224x224 image


VARIANTS = {"diffusion": _diffusion, "mse": _mse, "native": _native}


def get_config(arg: str | None = None):
    cfg = default_pretrain_config()
    cfg.batch_size = 4096
    cfg.total_steps = 800 * STEPS_PER_EPOCH
    cfg.optim.schedule = "cosine"
    cfg.optim.lr = 1.5e-4 * cfg.batch_size / 256
    cfg.optim.warmup_steps = 40 * STEPS_PER_EPOCH
    cfg.optim.b1 = 0.9
    cfg.optim.b2 = 0.95
    cfg.optim.weight_decay = 0.05
    cfg.optim.clip_norm = 0.0  # MAE's recipe clips no gradients
    cfg.checkpoint_every = 5 * STEPS_PER_EPOCH
    cfg.eval_every = 20 * STEPS_PER_EPOCH
    cfg.keep_every = 100 * STEPS_PER_EPOCH
    return common.apply_variants(cfg, arg or "diffusion", VARIANTS)
