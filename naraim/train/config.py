"""The full pre-training config (model + data + trainer keys) and its validation (run before anything
heavy starts)."""

import jax
import ml_collections

from naraim.data.config import DATA_OPTIONS, token_budget, validate_data_config
from naraim.errors import UserError
from naraim.infra.mesh import MESH_OPTIONS
from naraim.infra.metrics_log import WANDB_MODES, WANDB_OPTIONS
from naraim.infra.optimizer import OPTIM_OPTIONS, validate_optim_config
from naraim.infra.options import Option, section
from naraim.model.config import MODEL_OPTIONS, validate_model_config
from naraim.model.sizes import get_size, patch_size
from naraim.objectives.config import LOSS_OPTIONS, validate_loss_config
from naraim.train.evaluation import EVAL_OPTIONS, validate_eval_config

TRAINER_OPTIONS = {
    "variant": Option("", "name of the config file's variant(s) (set by configs/common.py apply_variants)"),
    "seed": Option(0, "initialisation, data order, prefixes and noise"),
    "total_steps": Option(500_000, "optimiser steps (0: save the initialisation as checkpoint 0)"),
    "batch_size": Option(512, "global, over all devices and processes"),
    "micro_batches": Option(
        1, "gradient accumulation: the batch is split into this many micro-batches per step"
    ),
    "log_every": Option(100, "steps between train rows of metrics.jsonl and progress lines"),
    "eval_every": Option(10_000, "steps between validation evaluations (and at the end)"),
    "checkpoint_every": Option(5_000, "steps between checkpoints (and at the end)"),
    "keep_checkpoints": Option(3, "the newest ones ..."),
    "keep_every": Option(100_000, "... plus every step divisible by this (0: none)"),
    "progress_bar": Option(True, "progress on stderr (a bar on a terminal, lines otherwise)"),
}
SECTIONS = {
    "model": MODEL_OPTIONS,
    "data": DATA_OPTIONS,
    "optim": OPTIM_OPTIONS,
    "loss": LOSS_OPTIONS,
    "mesh": MESH_OPTIONS,
    "eval": EVAL_OPTIONS,
    "wandb": WANDB_OPTIONS,
}
PRETRAIN_OPTIONS = {**TRAINER_OPTIONS, **SECTIONS}


def default_pretrain_config() -> ml_collections.ConfigDict:
    """Every key of a pre-training run with the library's defaults; the paper configs (configs/*.py) set the
    papers' values (docs/reproducing.md)."""
    return section(PRETRAIN_OPTIONS)


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
    validate_optim_config(cfg.optim, cfg.total_steps)
    validate_loss_config(cfg.loss, cfg.model.head)
    if cfg.wandb.mode not in WANDB_MODES:
        raise UserError(f"wandb.mode={cfg.wandb.mode!r}; use one of {', '.join(WANDB_MODES)}")
    validate_eval_config(cfg.eval, num_devices, get_size(cfg.model.variant)["depth"])
