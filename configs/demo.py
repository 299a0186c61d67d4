"""A few-minute CPU demo: a tiny ViT pre-trained on the embedded synthetic images.

naraim   native aspect ratio (64x64-pixel area, patch 8, up to 64 tokens), prefix-causal, normalized pixels,
         AIM's MLP head (2 blocks; with a linear head the last block becomes the pixel decoder)
aim      the same model on square RandomResizedCrop images
darl     DARL: SOS token, causal, raster order, 2D RoPE, denoising head trained with the diffusion objective
darl_mse the same backbone with a linear head and the MSE objective
"""

from configs import common
from naraim.train.config import default_pretrain_config


def _naraim(cfg):
    cfg.model.variant = "Pico/8"
    cfg.model.posemb = "absolute_sincos_2d"
    cfg.model.attention = "prefix_causal"
    cfg.data.source = "synthetic"
    cfg.data.image_size = 64
    cfg.data.max_tokens = 64
    cfg.data.transforms = ("native_aspect_ratio_resize", "horizontal_flip")
    cfg.data.eval_transforms = ("native_aspect_ratio_resize",)
    cfg.model.head = "mlp"  # AIM's MLP head (2 residual blocks): the last block stays a representation
    cfg.model.head_depth = 2


def _aim(cfg):
    _naraim(cfg)
    common.square_aim_data(cfg)


def _darl_mse(cfg):
    _naraim(cfg)
    _short(cfg)  # the denoising head costs about 5x a linear head's step time on a CPU
    cfg.model.posemb = "rope_2d"
    cfg.model.attention = "causal"
    cfg.model.sos_token = True
    cfg.model.head = "linear"
    cfg.loss.norm_pix = False  # raw pixel targets: completions need no per-patch statistics of the original


def _darl(cfg):
    _darl_mse(cfg)
    cfg.model.head = "denoising"
    cfg.loss.objective = "diffusion"
    cfg.loss.diffusion.append_gamma = True


def _short(cfg):
    cfg.total_steps = 400
    cfg.eval_every = cfg.checkpoint_every = 200
    cfg.optim.warmup_steps = cfg.optim.cooldown_steps = 40


VARIANTS = {"naraim": _naraim, "aim": _aim, "darl": _darl, "darl_mse": _darl_mse}


def get_config(arg: str | None = None):
    cfg = default_pretrain_config()
    cfg.total_steps = 800
    cfg.batch_size = 32
    cfg.log_every = 40
    cfg.eval_every = 400
    cfg.checkpoint_every = 400
    cfg.keep_every = 0
    cfg.optim.lr = 2e-3
    cfg.optim.warmup_steps = 80
    cfg.optim.cooldown_steps = 80
    cfg.eval.num_examples = 128
    cfg.eval.batch_size = 32
    cfg.eval.num_images = 6
    cfg.wandb.mode = "disabled"
    return common.apply_variants(cfg, arg or "naraim", VARIANTS)
