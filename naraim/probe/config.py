"""The probe run's config: overrides template, resolution against the pre-training run, validation.

A probe config carries `data` and `model` sections whose leaves are None unless the user sets them; the
resolved config is the pre-training run's data/model config with those set leaves laid over it.
"""

import math

import jax
from ml_collections import ConfigDict, config_dict

from naraim.data.config import default_data_config, token_budget, validate_data_config
from naraim.data.transforms import draws_randomness
from naraim.errors import UserError
from naraim.model.config import resolve_model_config, validate_model_config
from naraim.model.sizes import get_size
from naraim.probe.bins import check_edges
from naraim.probe.features import parse_blocks
from naraim.probe.heads import DESCRIPTORS, PROBE_HEADS
from naraim.train.config import DECAY_MASKS, OPTIMIZERS, WANDB_MODES

PROTOCOLS = ("attentive", "linear", "knn", "finetune")
ATTENTIONS = ("bidirectional", "causal")
CACHE_MODES = ("auto", "always", "never")
TRAIN_TRANSFORMS = ("pretraining", "eval")


def override_template(defaults: ConfigDict) -> ConfigDict:
    """A copy of `defaults` with every leaf replaced by a None placeholder of the same type."""
    out = ConfigDict()
    for key, value in defaults.items():
        if isinstance(value, ConfigDict):
            out[key] = override_template(value)
        else:
            out[key] = config_dict.placeholder(type(value))
    return out


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value


def overlay(base: ConfigDict, overrides) -> ConfigDict:
    """A copy of `base` with the non-None leaves of `overrides` (a ConfigDict or mapping) laid over it; JSON
    lists become tuples. Keys that `base` lacks are added."""
    out = ConfigDict(base.to_dict())
    for key, value in dict(overrides).items():
        if isinstance(value, ConfigDict | dict):
            out[key] = overlay(out[key] if key in out else ConfigDict(), value)
        elif value is not None:
            out[key] = _plain(value)
    return out


def default_data_overrides() -> ConfigDict:
    """The probe config's `data` section: every data.* key, unset."""
    return override_template(default_data_config())


def resolve(cfg: ConfigDict, pretrain_cfg: ConfigDict) -> ConfigDict:
    """The probe config with `model` (the pre-trained architecture + compute overrides) and `data` (the
    pre-training data recipe, with its eval transforms for training if train_transforms='eval', + overrides)
    resolved."""
    model = overlay(resolve_model_config(pretrain_cfg.model), cfg.model)
    data = overlay(default_data_config(), pretrain_cfg.data)
    if cfg.train_transforms == "eval":
        data.transforms = data.eval_transforms
    data = overlay(data, cfg.data)
    out = ConfigDict(cfg.to_dict())
    out.model, out.data = model, data
    return out


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not supported: use one of {', '.join(map(repr, allowed))}")


def validate(cfg: ConfigDict, num_devices: int | None = None) -> None:
    """Raises UserError for the first bad value of a resolved probe config. num_devices defaults to
    jax.device_count()."""
    _choice("protocol", cfg.protocol, PROTOCOLS)
    check_edges(edges_from_config(cfg.aspect_ratio_bins))
    _choice("attention", cfg.attention, ATTENTIONS)
    _choice("train_transforms", cfg.train_transforms, TRAIN_TRANSFORMS)
    _choice("probe.cache_features", cfg.probe.cache_features, CACHE_MODES)
    _choice("finetune.descriptor", cfg.finetune.descriptor, DESCRIPTORS)
    _choice("wandb.mode", cfg.wandb.mode, WANDB_MODES)
    for key in ("total_steps", "batch_size", "log_every"):
        if int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} must be at least 1")
    num_devices = jax.device_count() if num_devices is None else num_devices
    for key in ("batch_size", "eval.batch_size"):
        value = cfg.batch_size if key == "batch_size" else (cfg.eval.batch_size or cfg.batch_size)
        if value % num_devices:
            raise UserError(f"{key}={value} is not divisible by the {num_devices} devices; use a multiple")
    if cfg.eval_every < 0 or (cfg.eval.batch_size is not None and cfg.eval.batch_size < 1):
        raise UserError("eval_every must be >= 0 (0: only at the end) and eval.batch_size >= 1")
    if cfg.optim.lr <= 0 or not 0 <= cfg.optim.warmup_steps <= cfg.total_steps:
        raise UserError(
            f"optim.lr must be > 0 (got {cfg.optim.lr}) and 0 <= optim.warmup_steps <= total_steps "
            f"(got {cfg.optim.warmup_steps} and {cfg.total_steps})"
        )
    _choice("optim.optimizer", cfg.optim.optimizer, OPTIMIZERS)
    _choice("optim.decay", cfg.optim.decay, DECAY_MASKS)
    if cfg.checkpoint_every < 0 or cfg.keep_checkpoints < 1:
        raise UserError(
            f"checkpoint_every must be >= 0 (0: never; got {cfg.checkpoint_every}) and keep_checkpoints >= 1 "
            f"(got {cfg.keep_checkpoints})"
        )
    if cfg.model.get("drop_path") and cfg.protocol != "finetune":
        raise UserError(
            f"model.drop_path={cfg.model.drop_path} trains the backbone with stochastic depth: it applies to "
            "protocol='finetune' only"
        )
    if not 0 < cfg.finetune.layer_decay <= 1 or not 0 <= cfg.finetune.label_smoothing < 1:
        raise UserError("finetune.layer_decay must be in (0, 1] and finetune.label_smoothing in [0, 1)")
    if min(cfg.finetune.mixup_alpha, cfg.finetune.cutmix_alpha) < 0 or not 0 <= cfg.finetune.mix_prob <= 1:
        raise UserError("finetune.mixup_alpha and cutmix_alpha must be >= 0 and finetune.mix_prob in [0, 1]")
    patch = get_size(cfg.model.variant)["patch"]
    validate_model_config(cfg.model, patch, token_budget(cfg.data, patch))
    validate_data_config(cfg.data, get_size(cfg.model.variant)["patch"])
    specs = parse_blocks(cfg.probe.blocks, get_size(cfg.model.variant)["depth"])
    if cfg.probe.last_k < 1:
        raise UserError(f"probe.last_k={cfg.probe.last_k} must be at least 1")
    _choice("probe.head", cfg.probe.head, PROBE_HEADS)
    if any(float(lr) <= 0 for lr in cfg.probe.lrs):
        raise UserError(f"probe.lrs={tuple(cfg.probe.lrs)} must all be > 0 (or empty: optim.lr)")
    if not 0 <= cfg.probe.minival_fraction < 1 or not 0 <= cfg.probe.label_smoothing < 1:
        raise UserError(
            f"probe.minival_fraction={cfg.probe.minival_fraction} and probe.label_smoothing="
            f"{cfg.probe.label_smoothing} must be in [0, 1)"
        )
    if cfg.knn.k < 1 or cfg.knn.temperature <= 0:
        raise UserError(f"knn.k={cfg.knn.k} must be >= 1 and knn.temperature={cfg.knn.temperature} > 0")
    heads = len(specs) * (1 if cfg.protocol == "knn" else max(1, len(cfg.probe.lrs)))
    if cfg.protocol != "finetune" and heads > 1 and cfg.probe.minival_fraction == 0:
        raise UserError(
            f"probe.blocks={cfg.probe.blocks!r} x probe.lrs={tuple(cfg.probe.lrs)} makes {heads} heads, and "
            "the one to report is selected on a minival split: set probe.minival_fraction (e.g. 0.1)"
        )
    if cfg.probe.cache_features == "always" and has_randomness(cfg.data):
        raise UserError(
            f"probe.cache_features='always' but data.transforms={tuple(cfg.data.transforms)} is random; "
            "use 'auto', deterministic transforms, or train_transforms='eval'"
        )


def has_randomness(data_cfg: ConfigDict) -> bool:
    """Whether the training transforms draw from the rng."""
    return draws_randomness(data_cfg.transforms, data_cfg.horizontal_flip_prob)


def edges_from_config(edges) -> tuple[float, ...]:
    """aspect_ratio_bins as floats; edges >= 1e9 (how the command line writes infinity) become math.inf."""
    return tuple(math.inf if float(e) >= 1e9 else float(e) for e in edges)
