"""The probe run's config: overrides template, resolution against the pre-training run, validation.

A probe config carries `data` and `model` sections whose leaves are None unless the user sets them; the
resolved config is the pre-training run's data/model config with those set leaves laid over it.
"""

import math

import jax
from ml_collections import ConfigDict

from naraim.data.config import DATA_OPTIONS, default_data_config, token_budget, validate_data_config
from naraim.data.transforms import draws_randomness
from naraim.errors import UserError
from naraim.infra.metrics_log import WANDB_MODES, WANDB_OPTIONS
from naraim.infra.optimizer import DECAY_MASKS, OPTIM_OPTIONS, OPTIMIZERS
from naraim.infra.options import Definition, Option, overlay, section
from naraim.model.config import MODEL_OPTIONS, resolve_model_config, validate_model_config
from naraim.model.sizes import get_size
from naraim.probe.features import parse_blocks
from naraim.probe.heads import DESCRIPTORS, PROBE_HEADS
from naraim.probe.results import check_edges

PROTOCOLS = ("attentive", "linear", "knn", "finetune")
ATTENTIONS = ("bidirectional", "causal")
CACHE_MODES = ("auto", "always", "never")
TRAIN_TRANSFORMS = ("pretraining", "eval")


def optional(definition: Definition) -> Definition:
    """`definition` with every key unset (None, of its default's type): the overrides of another run's
    section."""
    return {
        name: Option(None, entry.help, kind=type(entry.default))
        if isinstance(entry, Option)
        else optional(entry)
        for name, entry in definition.items()
    }


PROBE_OPTIONS = {
    "variant": Option("", "the variants this config was built with"),
    "init_from": Option(
        "",
        "the pre-training workdir (its newest checkpoint), WORKDIR:best (its best few-shot evaluation) "
        "or one of its checkpoints/<step>",
    ),
    "protocol": Option("attentive", "'attentive' | 'linear' | 'knn' | 'finetune'"),
    "attention": Option("bidirectional", "the backbone's attention at probe / fine-tuning time: or 'causal'"),
    "seed": Option(0, "heads' initialisation, data order, minival split"),
    "total_steps": Option(50_000, "optimiser steps (not used by knn)"),
    "batch_size": Option(1024, "global"),
    "log_every": Option(100, "steps between train rows of metrics.jsonl"),
    "eval_every": Option(0, "0: evaluate once, at the end"),
    "checkpoint_every": Option(1_000, "probe state + data position, so a stopped run resumes (0: never)"),
    "keep_checkpoints": Option(2, "the newest checkpoints kept"),
    "aspect_ratio_bins": Option(
        (0.0, 0.5, 0.75, 1.33, 2.0, math.inf), "width/height; on a command line inf = 1e9"
    ),
    "train_transforms": Option(
        "pretraining",
        "training transforms: 'pretraining' = the pre-training run's data.transforms (NARAIM: native aspect "
        "ratio + random crop + flip; AIM: RandomResizedCrop + flip), 'eval' = its data.eval_transforms",
    ),
    "progress_bar": Option(True, "progress on stderr"),
    "wandb": {
        "mode": Option("disabled", WANDB_OPTIONS["mode"].help),
        "project": Option("naraim-probe", WANDB_OPTIONS["project"].help),
        "name": Option("", WANDB_OPTIONS["name"].help),
    },
    "data": optional(DATA_OPTIONS),
    "model": {  # compute settings only: the architecture always comes from the checkpoint's run
        "dtype": Option(None, MODEL_OPTIONS["dtype"].help, kind=str),
        "remat": Option(None, MODEL_OPTIONS["remat"].help, kind=str),
        "attention_impl": Option(None, MODEL_OPTIONS["attention_impl"].help, kind=str),
        "drop_path": Option(None, "fine-tuning's stochastic depth (None: 0)", kind=float),
    },
    "eval": {
        "split": Option(None, "None: data.val_split", kind=str),
        "max_examples": Option(None, "None: the whole split", kind=int),
        "batch_size": Option(None, "None: batch_size", kind=int),
    },
    "probe": {
        "blocks": Option(
            "mean",
            "features: 'mean' (of the last `last_k` blocks' outputs), 'all' (every block), block indices "
            "('0,-1'), or a comma-separated mix ('all,mean'); one head per entry and learning rate",
        ),
        "last_k": Option(6, "blocks averaged by 'mean'"),
        "lrs": Option((), "learning rates of the sweep; () = (optim.lr,)"),
        "weight_decays": Option(
            (), "weight decays of the sweep (AdamW), one head per (features, lr, wd); () = optim.weight_decay"
        ),
        "minival_fraction": Option(
            0.0,
            "share of the training split held out (seeded) to select among heads (sweeps of > 1 head)",
        ),
        "head": Option(
            "aim", "attentive head: 'aim' (ml-aim's) | 'naraim_ref' (the NARAIM reference code's)"
        ),
        "num_heads": Option(None, "None: the backbone's number of heads", kind=int),
        "use_map_mlp": Option(False, "the attentive head's MLP after the attention pooling"),
        "label_smoothing": Option(0.0, "of the one-hot targets"),
        "knn_k": Option(
            (10, 20, 100, 200),
            "kNN: neighbours, all in one pass (one result per block and k; minival selects)",
        ),
        "released_head": Option(
            False,
            "evaluate the attentive head released with the imported weights of init_from "
            "(RUN/probe_head.safetensors, scripts/import_weights.py) as it is: no training (total_steps 0)",
        ),
        "eval_token_budgets": Option(
            (),
            "also evaluate the selected head with every image sized to each of these patch budgets "
            "(fit_to_token_budget, one row per image): results.json per_token_budget; attentive / linear",
        ),
        "cache_features": Option(
            "auto",
            "'auto': cache the backbone features when the training transforms have no randomness | "
            "'always' | 'never'",
        ),
    },
    "knn": {"temperature": Option(0.07, "DINO's weighted kNN: votes weigh exp(similarity / temperature)")},
    "finetune": {
        "descriptor": Option("last", "'last' (last real token's output) | 'mean' (mean pooling) | 'probe'"),
        "layer_decay": Option(0.75, "lr of block i = lr * decay**(depth - i); embeddings decay**(depth + 1)"),
        "label_smoothing": Option(0.1, "of the one-hot targets"),
        "mixup_alpha": Option(0.0, "0 = off (DARL: 0.8)"),
        "cutmix_alpha": Option(0.0, "0 = off (DARL: 1.0)"),
        "mix_prob": Option(1.0, "probability that a batch is mixed when mixup/cutmix is on"),
    },
    "optim": {
        "optimizer": OPTIM_OPTIONS["optimizer"],
        "schedule": Option("cosine", "warmup then cosine decay (or 'constant', 'naraim', 'naraim_ref')"),
        "lr": Option(1e-3, "peak learning rate (probe.lrs: one head per rate instead)"),
        "end_lr": Option(0.0, "final learning rate of the cosine"),
        "warmup_steps": Option(500, "linear warmup from 0"),
        "b1": OPTIM_OPTIONS["b1"],
        "b2": Option(0.999, "AdamW beta2"),
        "eps": OPTIM_OPTIONS["eps"],
        "weight_decay": Option(0.01, "decoupled weight decay"),
        "decay": Option("kernels", "weight decay on 'kernels' (Dense kernels, not the query) | 'all'"),
        "clip_norm": Option(1.0, "global gradient-norm clipping per head (0: off)"),
    },
}


def default_probe_config() -> ConfigDict:
    """Every key of a probe run with its default (configs/probe.py's variants set the protocols' values)."""
    return section(PROBE_OPTIONS)


def resolve(cfg: ConfigDict, pretrain_cfg: ConfigDict) -> ConfigDict:
    """The probe config with `model` (the pre-trained architecture + compute overrides) and `data` (the
    pre-training data recipe, with its eval transforms for training if train_transforms='eval', + overrides)
    resolved."""
    model = overlay(resolve_model_config(pretrain_cfg.model), cfg.model)
    data = overlay(default_data_config(), pretrain_cfg.data)
    data.packing = "none"  # probes train on one image per row
    if cfg.train_transforms == "eval":
        data.transforms, data.token_budgets = data.eval_transforms, ()
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
    released = bool(cfg.probe.released_head)
    for key in ("total_steps", "batch_size", "log_every"):
        if int(cfg[key]) < (0 if key == "total_steps" and released else 1):
            raise UserError(f"{key}={cfg[key]} must be at least 1")
    if released and (
        cfg.protocol != "attentive" or cfg.probe.head != "aim" or len(cfg.probe.lrs) > 1 or cfg.total_steps
    ):
        raise UserError(
            "probe.released_head evaluates AIM's released attentive head as it is: use protocol 'attentive', "
            "probe.head 'aim', one learning rate and total_steps=0 (configs/probe.py:released)"
        )
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
    if not cfg.probe.knn_k or min(cfg.probe.knn_k) < 1 or cfg.knn.temperature <= 0:
        raise UserError(
            f"probe.knn_k={tuple(cfg.probe.knn_k)} needs values >= 1 and knn.temperature="
            f"{cfg.knn.temperature} > 0"
        )
    if any(float(wd) < 0 for wd in cfg.probe.weight_decays) or (
        cfg.probe.weight_decays
        and (cfg.optim.optimizer != "adamw" or cfg.protocol not in ("attentive", "linear"))
    ):
        raise UserError(
            f"probe.weight_decays={tuple(cfg.probe.weight_decays)} needs values >= 0, optimizer 'adamw' "
            "and a frozen protocol ('attentive' or 'linear')"
        )
    values = max(1, len(cfg.probe.lrs)) * max(1, len(cfg.probe.weight_decays))
    heads = len(specs) * (len(cfg.probe.knn_k) if cfg.protocol == "knn" else values)
    if cfg.protocol != "finetune" and heads > 1 and cfg.probe.minival_fraction == 0:
        raise UserError(
            f"probe.blocks={cfg.probe.blocks!r} x probe.lrs={tuple(cfg.probe.lrs)} makes {heads} heads, and "
            "the one to report is selected on a minival split: set probe.minival_fraction (e.g. 0.1)"
        )
    if cfg.data.packing != "none":
        raise UserError(f"data.packing={cfg.data.packing!r}: probes train on one image per row; use 'none'")
    budgets = tuple(cfg.probe.eval_token_budgets)
    if budgets and (min(int(b) for b in budgets) < 1 or cfg.protocol not in ("attentive", "linear")):
        raise UserError(
            f"probe.eval_token_budgets={budgets} needs budgets >= 1 and a frozen protocol ('attentive' or "
            f"'linear'), not {cfg.protocol!r}"
        )
    if cfg.probe.cache_features == "always" and has_randomness(cfg.data):
        raise UserError(
            f"probe.cache_features='always' but data.transforms={tuple(cfg.data.transforms)} is random; "
            "use 'auto', deterministic transforms, or train_transforms='eval'"
        )


def token_budget_data(data_cfg: ConfigDict, budget: int) -> ConfigDict:
    """The data config whose evaluation sizes every image to the largest grid of at most `budget` patches
    at its aspect ratio, in rows of `budget` tokens."""
    data = data_cfg.copy_and_resolve_references()
    data.eval_transforms, data.max_tokens, data.token_budgets = ("fit_to_token_budget",), int(budget), ()
    return data


def has_randomness(data_cfg: ConfigDict) -> bool:
    """Whether the training transforms draw from the rng."""
    return draws_randomness(data_cfg.transforms, data_cfg.horizontal_flip_prob)


def edges_from_config(edges) -> tuple[float, ...]:
    """aspect_ratio_bins as floats; edges >= 1e9 (how the command line writes infinity) become math.inf."""
    return tuple(math.inf if float(e) >= 1e9 else float(e) for e in edges)
