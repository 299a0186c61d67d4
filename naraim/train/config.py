"""The full pre-training config (model + data + trainer keys) and its validation (run before anything
heavy starts)."""

import jax
import ml_collections

from naraim.data.config import default_data_config, token_budget, validate_data_config
from naraim.errors import UserError
from naraim.model.config import default_model_config, validate_model_config
from naraim.model.sizes import patch_size
from naraim.objectives.config import default_loss_config, validate_loss_config

WANDB_MODES = ("disabled", "offline", "online")
SCHEDULES = ("naraim", "naraim_ref", "cosine", "constant")
DECAY_MASKS = ("kernels", "all")
OPTIMIZERS = ("adamw", "lars")


def default_pretrain_config() -> ml_collections.ConfigDict:
    """Every key of a pre-training run with the library's defaults; the paper configs (configs/*.py) set the
    papers' values (docs/reproducing.md)."""
    cfg = ml_collections.ConfigDict()
    cfg.variant = ""  # name of the config file's variant (set by apply_variant)
    cfg.seed = 0  # initialisation, data order, prefixes and noise
    cfg.total_steps = 500_000  # optimiser steps (0: save the initialisation as checkpoint 0)
    cfg.batch_size = 512  # global, over all devices and processes
    cfg.micro_batches = 1  # gradient accumulation: the batch is split into this many micro-batches per step
    cfg.log_every = 100  # steps between train rows of metrics.jsonl and progress lines
    cfg.eval_every = 10_000  # steps between validation evaluations (and at the end)
    cfg.checkpoint_every = 5_000  # steps between checkpoints (and at the end)
    cfg.keep_checkpoints = 3  # the newest ones ...
    cfg.keep_every = 100_000  # ... plus every step divisible by this (0: none)
    cfg.progress_bar = True  # progress on stderr (a bar on a terminal, lines otherwise)

    cfg.model = default_model_config()
    cfg.data = default_data_config()

    cfg.optim = ml_collections.ConfigDict()
    cfg.optim.optimizer = "adamw"  # 'adamw' | 'lars' (b1 is its momentum)
    # 'naraim': warmup, exponential decay to lr * decay_rate at the end, times a linear ramp over the
    # cooldown; 'naraim_ref': the reference code's formula (naraim/infra/schedules.py); 'cosine'; 'constant'
    cfg.optim.schedule = "naraim"
    cfg.optim.lr = 1e-3  # peak learning rate
    cfg.optim.warmup_steps = 5_000  # linear warmup from 0
    cfg.optim.decay_rate = 0.1  # naraim, naraim_ref: the exponential decays to lr * decay_rate
    cfg.optim.cooldown_steps = 10_000  # naraim, naraim_ref: linear ramp down over the last steps
    cfg.optim.end_lr = 0.0  # cosine: final lr; naraim_ref: floor of the cooldown
    cfg.optim.b1 = 0.9  # AdamW beta1 (LARS: momentum)
    cfg.optim.b2 = 0.98  # AdamW beta2
    cfg.optim.eps = 1e-8  # AdamW epsilon
    cfg.optim.weight_decay = 0.01  # decoupled weight decay (times the learning rate)
    cfg.optim.decay = (
        "kernels"  # weight decay on 'kernels' (Dense kernels outside position embeddings) | 'all'
    )
    cfg.optim.clip_norm = 1.0  # 0: no clipping

    cfg.loss = default_loss_config()

    cfg.mesh = ml_collections.ConfigDict()
    cfg.mesh.fsdp = False  # shard params and optimizer state over the data axis

    cfg.eval = ml_collections.ConfigDict()
    # held-out images for the validation MSE: the first N of data.val_split; -1: all of them; 0: no evaluation
    cfg.eval.num_examples = 1_000
    cfg.eval.batch_size = 64  # global evaluation batch
    cfg.eval.num_images = 8  # images in the reconstructions plot
    cfg.eval.error_map_bins = 16  # bins of relative sequence position in the error-by-position plot
    cfg.eval.ref_seed = 0  # seeds the random prefixes of the reference validation MSE (mse_ref)

    cfg.wandb = ml_collections.ConfigDict()
    cfg.wandb.mode = "offline"  # 'disabled' | 'offline' (into WORKDIR/wandb) | 'online'
    cfg.wandb.project = "naraim"  # wandb project
    cfg.wandb.name = ""  # '' -> workdir basename
    return cfg


def _positive(cfg: ml_collections.ConfigDict, *keys: str) -> None:
    for key in keys:
        if int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} must be at least 1")


def fit_schedule(cfg: ml_collections.ConfigDict) -> str:
    """When optim.warmup_steps (+ optim.cooldown_steps for the naraim schedules) exceed total_steps, scales
    them down in proportion (to half the run together) in place, so that `--config.total_steps=N` just
    works; returns the one line that says so ('' when nothing changed)."""
    cooldown = cfg.optim.cooldown_steps if cfg.optim.schedule in ("naraim", "naraim_ref") else 0
    budget = cfg.total_steps // 2
    if (
        cfg.total_steps < 1
        or cfg.optim.schedule == "constant"
        or cfg.optim.warmup_steps + cooldown <= cfg.total_steps
    ):
        return ""
    old = (cfg.optim.warmup_steps, cfg.optim.cooldown_steps)
    scale = budget / (cfg.optim.warmup_steps + cooldown)
    cfg.optim.warmup_steps = int(cfg.optim.warmup_steps * scale)
    if cooldown:
        cfg.optim.cooldown_steps = int(cfg.optim.cooldown_steps * scale)
    return (
        f"note: optim.warmup_steps and optim.cooldown_steps ({old[0]}, {old[1]}) exceed total_steps="
        f"{cfg.total_steps}; scaled to ({cfg.optim.warmup_steps}, {cfg.optim.cooldown_steps})"
    )


def validate_pretrain_config(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises UserError naming the first bad value. num_devices defaults to jax.device_count()."""
    if int(cfg.total_steps) < 0:
        raise UserError(f"total_steps={cfg.total_steps} must be >= 0 (0: save the initialisation only)")
    _positive(cfg, "batch_size", "micro_batches", "log_every", "eval_every", "checkpoint_every")
    p = patch_size(cfg.model.variant)
    validate_data_config(cfg.data, p)
    validate_model_config(cfg.model, p, token_budget(cfg.data, p))
    if cfg.model.drop_path:
        raise UserError(
            f"model.drop_path={cfg.model.drop_path} is a fine-tuning setting (configs/probe.py); "
            "pre-training keeps it 0"
        )
    num_devices = jax.device_count() if num_devices is None else num_devices
    divisor = num_devices * cfg.micro_batches
    if cfg.batch_size % divisor:
        raise UserError(
            f"batch_size={cfg.batch_size} is not divisible by {num_devices} devices x micro_batches="
            f"{cfg.micro_batches}; use a multiple of {divisor}"
        )
    if cfg.batch_size % jax.process_count():
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by {jax.process_count()} processes")
    if cfg.optim.schedule not in SCHEDULES:
        raise UserError(f"optim.schedule={cfg.optim.schedule!r}; use one of {', '.join(SCHEDULES)}")
    if cfg.optim.lr <= 0 or cfg.optim.warmup_steps < 0 or cfg.optim.cooldown_steps < 0:
        raise UserError(
            f"optim.lr must be > 0 (got {cfg.optim.lr}) and optim.warmup_steps, optim.cooldown_steps >= 0 "
            f"(got {cfg.optim.warmup_steps}, {cfg.optim.cooldown_steps})"
        )
    cooldown = cfg.optim.cooldown_steps if cfg.optim.schedule in ("naraim", "naraim_ref") else 0
    if (
        cfg.total_steps
        and cfg.optim.schedule != "constant"
        and cfg.optim.warmup_steps + cooldown > cfg.total_steps
    ):
        raise UserError(
            f"optim.warmup_steps + optim.cooldown_steps = {cfg.optim.warmup_steps + cooldown} "
            f"exceed total_steps={cfg.total_steps}; shorten them or train longer"
        )
    if cfg.optim.optimizer not in OPTIMIZERS:
        raise UserError(f"optim.optimizer={cfg.optim.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if cfg.optim.decay not in DECAY_MASKS:
        raise UserError(f"optim.decay={cfg.optim.decay!r}; use one of {', '.join(DECAY_MASKS)}")
    validate_loss_config(cfg.loss, cfg.model.head)
    if cfg.wandb.mode not in WANDB_MODES:
        raise UserError(f"wandb.mode={cfg.wandb.mode!r}; use one of {', '.join(WANDB_MODES)}")
    if cfg.eval.batch_size % num_devices:
        raise UserError(f"eval.batch_size={cfg.eval.batch_size} is not divisible by {num_devices} devices")
    if cfg.eval.num_examples < -1 or cfg.eval.batch_size < 1 or cfg.eval.num_images < 0:
        raise UserError(
            f"eval.num_examples >= -1 (-1: the whole split), eval.batch_size >= 1 and eval.num_images >= 0 "
            f"are required; got {cfg.eval.num_examples}, {cfg.eval.batch_size}, {cfg.eval.num_images}"
        )


def apply_variant(cfg: ml_collections.ConfigDict, variant: str, variants: dict) -> ml_collections.ConfigDict:
    """Applies variants[variant](cfg) in place and records the name in cfg.variant; unknown names ->
    UserError."""
    if variant not in variants:
        raise UserError(f"unknown config variant {variant!r}: use one of {', '.join(variants)}")
    variants[variant](cfg)
    cfg.variant = variant
    return cfg
