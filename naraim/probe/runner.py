"""The probe / fine-tuning / kNN run: load the backbone, train heads (or the whole network), select on
minival, evaluate, report.

Writes WORKDIR/config.json (the resolved config: the pre-trained model and data recipe included),
metrics.jsonl (train loss/accuracy/lr/images_per_sec, eval top1/top5 of the selected head), checkpoints/
(resumable state; re-running the command continues the run), results.json, accuracy_by_aspect_ratio.png
and, for a sweep over several blocks, accuracy_by_block.png.

Loading a pre-trained backbone for downstream use: only its parameters, checked against its model.
"""

import os

import jax
from ml_collections import ConfigDict

from naraim.console import say
from naraim.data.pipeline import num_classes
from naraim.errors import UserError
from naraim.infra.checkpoint import CHECKPOINT_DIR, restore_params
from naraim.infra.workdir import MUTABLE_KEYS, WorkdirLock, check_resume_config
from naraim.model.model import dummy_batch
from naraim.model.vit import ViT, make_backbone
from naraim.probe import config as probe_config
from naraim.probe.protocols import RunContext, run_protocol
from naraim.probe.results import RESULTS_FILE, read_results


def _shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def check_backbone_params(params: dict, backbone: ViT, inputs: dict, source: str) -> None:
    """Raises UserError naming the first difference unless `params` has the backbone's exact tree and shapes.

    inputs: example model inputs ('patches', 'coords', 'grid', 'length'), e.g. naraim.model.model.dummy_batch.
    """
    expected = _shapes(jax.eval_shape(backbone.init, jax.random.PRNGKey(0), **inputs)["params"])
    found = _shapes(params)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or extra or wrong:
        if wrong:
            detail = f"{wrong[0]} has shape {found[wrong[0]]}, the model needs {expected[wrong[0]]}"
        elif missing:
            detail = f"{len(missing)} parameter(s) missing, e.g. {missing[0]}"
        else:
            detail = f"{len(extra)} unexpected parameter(s), e.g. {extra[0]}"
        raise UserError(
            f"the checkpoint at {source} does not fit the backbone described by its config.json ({detail}); "
            "point init_from at a checkpoint written with that config"
        )


def load_pretrained(init_from: str) -> tuple[dict, ConfigDict, int]:
    """(backbone params (numpy), the pre-training run's config, its step) from a pre-training workdir (newest
    checkpoint) or one WORKDIR/checkpoints/<step> folder. The pre-training head and optimizer are not kept."""
    if not init_from:
        raise UserError("init_from is not set: pass --config.init_from=PRETRAIN_WORKDIR (or a step dir)")
    params, cfg, step = restore_params(init_from)
    if "backbone" not in params:
        raise UserError(f"the checkpoint at {init_from} has no 'backbone' params; pass a pre-training run")
    return params["backbone"], cfg, step


def prepare(cfg: ConfigDict) -> tuple[ConfigDict, ViT, dict, int]:
    """(resolved + validated config, backbone, backbone params (numpy), number of classes) of a probe config.
    Raises UserError for a bad config or a checkpoint that does not fit its run's model."""
    backbone_params, pretrain_cfg, pretrain_step = load_pretrained(cfg.init_from)
    cfg = probe_config.resolve(cfg, pretrain_cfg)
    if cfg.optim.warmup_steps > cfg.total_steps >= 1:
        warmup, total = cfg.optim.warmup_steps, cfg.total_steps
        say(f"note: optim.warmup_steps={warmup} exceeds total_steps={total}; scaled to {total // 2}")
        cfg.optim.warmup_steps = cfg.total_steps // 2
    probe_config.validate(cfg)
    cfg.pretrain_step = pretrain_step
    classes = num_classes(cfg.data)
    if classes < 2:
        raise UserError(
            f"data.source={cfg.data.source!r} has {classes} class(es): the probe needs labelled data with at "
            "least 2 classes (e.g. folder:PATH with one sub-folder per class)"
        )
    backbone = make_backbone(cfg.model)
    check_backbone_params(backbone_params, backbone, dummy_batch(cfg, 1), cfg.init_from)
    return cfg, backbone, backbone_params, classes


def _pretraining_workdir(init_from: str) -> str:
    """The pre-training workdir behind init_from (a workdir, WORKDIR:best or a checkpoints/<step> folder)."""
    path = os.path.realpath(init_from.removesuffix(":best"))
    parent = os.path.dirname(path)
    return os.path.dirname(parent) if os.path.basename(parent) == CHECKPOINT_DIR else path


def run_probe(cfg: ConfigDict, workdir: str, force_config_change: bool = False) -> dict:
    """Runs the probe described by `cfg` (configs/probe.py) into `workdir`; returns the results dict.

    Holds a lock on the workdir. Re-running the command resumes from the newest checkpoint (the config must
    be the same but for naraim.infra.workdir.MUTABLE_KEYS and eval.*, unless force_config_change), or returns
    the results of a finished run.
    """
    if cfg.init_from and os.path.realpath(workdir) == _pretraining_workdir(cfg.init_from):
        raise UserError(
            f"--workdir {workdir!r} is the pre-training run (init_from): a probe writes its own config.json "
            "and metrics.jsonl, so give it a folder of its own, e.g. --workdir=runs/probe_<name>"
        )
    cfg, backbone, backbone_np, classes = prepare(cfg)
    with WorkdirLock(workdir):
        steps = _checkpoint_steps(workdir)
        if steps or os.path.exists(os.path.join(workdir, RESULTS_FILE)):
            check_resume_config(
                workdir, cfg, steps[-1] if steps else 0, MUTABLE_KEYS + ("eval.",), force_config_change
            )
            if os.path.exists(os.path.join(workdir, RESULTS_FILE)) and (
                not steps or steps[-1] >= cfg.total_steps
            ):
                say(f"probe already complete in {workdir} (results.json)")
                return read_results(workdir)
        if steps:
            say(f"resuming the probe from step {steps[-1]} ({workdir})")
        run = RunContext(cfg, workdir, steps[-1] if steps else 0)
        try:
            return run_protocol(run, backbone, backbone_np, classes)
        finally:
            run.logger.close()


def _checkpoint_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())
