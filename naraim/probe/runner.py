"""The probe / fine-tuning run: load the backbone, train the head (or the whole network), evaluate, report.

Writes WORKDIR/config.json (the resolved config: the pre-trained model and data recipe included),
metrics.jsonl (train loss/accuracy/lr/images_per_sec, eval top1/top5), results.json and
accuracy_by_aspect_ratio.png. A re-run starts the probe again from the pre-trained backbone (probe runs are
not checkpointed) and appends to metrics.jsonl.
"""

import os
import time

import jax
import numpy as np
import optax
from ml_collections import ConfigDict

from naraim.data.pipeline import make_eval_iterator, make_train_iterator, num_classes
from naraim.errors import UserError
from naraim.model.sizes import get_size
from naraim.probe import config as probe_config
from naraim.probe.accuracy import Accumulator, local_rows
from naraim.probe.cache import cache_batches, compute_cache
from naraim.probe.classifier import Classifier, make_classifier
from naraim.probe.layer_decay import layer_scales, scale_by_layer
from naraim.probe.loading import check_backbone_params, load_pretrained
from naraim.probe.plots import plot_accuracy_by_bin
from naraim.probe.results import summarize, write_results
from naraim.probe.step import init_params, init_state, make_eval_step, make_train_step
from naraim.train.checkpoint import write_config
from naraim.train.mesh import global_batch, make_mesh, replicated
from naraim.train.metrics_log import MetricsLogger
from naraim.train.optimizer import make_optimizer
from naraim.train.progress import ProgressBar
from naraim.train.step import dummy_batch

PLOT_FILE = "accuracy_by_aspect_ratio.png"


def prepare(cfg: ConfigDict) -> tuple[ConfigDict, Classifier, dict, int]:
    """(resolved + validated config, classifier, backbone params (numpy), number of classes) of a probe
    config. Raises UserError for a bad config or a checkpoint that does not fit its run's model."""
    backbone_params, pretrain_cfg, pretrain_step = load_pretrained(cfg.init_from)
    cfg = probe_config.resolve(cfg, pretrain_cfg)
    probe_config.validate(cfg)
    cfg.pretrain_step = pretrain_step
    classes = num_classes(cfg.data)
    if classes < 2:
        raise UserError(
            f"data.source={cfg.data.source!r} has {classes} class(es): the probe needs labelled data with at "
            "least 2 classes (e.g. folder:PATH with one sub-folder per class)"
        )
    clf = make_classifier(cfg, classes)
    check_backbone_params(backbone_params, clf.backbone, dummy_batch(cfg, 1), cfg.init_from)
    return cfg, clf, backbone_params, classes


def make_probe_optimizer(cfg: ConfigDict, clf: Classifier, params: dict):
    """(optimizer, schedule): the trainer's AdamW + warmup/cosine; fine-tuning adds layer-wise lr decay."""
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    if clf.frozen or cfg.finetune.layer_decay == 1:
        return optimizer, schedule
    scales = layer_scales(params, clf.backbone.depth, cfg.finetune.layer_decay)
    return optax.chain(optimizer, scale_by_layer(scales)), schedule


def use_cache(cfg: ConfigDict) -> bool:
    """Frozen protocols cache features if asked ('always') or if the transforms are deterministic ('auto')."""
    if cfg.protocol == "finetune" or cfg.probe.cache_features == "never":
        return False
    return cfg.probe.cache_features == "always" or not probe_config.has_randomness(cfg.data)


def _eval_iterator(cfg: ConfigDict, split: str, max_examples: int | None, data_cfg: ConfigDict | None = None):
    return make_eval_iterator(
        data_cfg or cfg.data,
        split=split,
        patch_size=get_size(cfg.model.variant)["patch"],
        global_batch_size=cfg.eval.batch_size or cfg.batch_size,
        max_examples=max_examples,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def evaluate(cfg: ConfigDict, eval_step, state: dict, frozen, mesh, edges) -> dict:
    """Results (see naraim.probe.results) over cfg.eval.split (default data.val_split)."""
    acc = Accumulator()
    for local in _eval_iterator(cfg, cfg.eval.split or cfg.data.val_split, cfg.eval.max_examples):
        top1, top5 = eval_step(state, frozen, global_batch(local, mesh))
        acc.add(*(local_rows(x) for x in (top1, top5)), local["aspect_ratio"], local["valid"])
    return summarize(*acc.arrays(), edges)


def _train_batches(cfg: ConfigDict, clf: Classifier, backbone_params: dict, mesh, logger, cached: bool):
    """Endless per-process training batches: of the feature cache (computed here, its size and time logged
    at step 0) when `cached`, else of the data pipeline's training iterator."""
    if not cached:
        return make_train_iterator(
            cfg.data,
            patch_size=get_size(cfg.model.variant)["patch"],
            global_batch_size=cfg.batch_size,
            seed=cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    start = time.time()
    train_data = cfg.data.copy_and_resolve_references()
    train_data.eval_transforms = (
        train_data.transforms
    )  # each training image once, with the training transforms
    examples = _eval_iterator(cfg, cfg.data.train_split, None, train_data)
    cache = compute_cache(jax.jit(clf.features), backbone_params, examples, mesh)
    if not len(cache["label"]):
        raise UserError(f"data.train_split={cfg.data.train_split!r} has no usable images: check data.source")
    logger.write(0, "train", {"cache_examples": len(cache["label"]), "cache_seconds": time.time() - start})
    return cache_batches(cache, cfg.batch_size // jax.process_count(), cfg.seed)


def run_probe(cfg: ConfigDict, workdir: str) -> dict:
    """Runs the probe described by `cfg` (configs/probe.py) into `workdir`; returns the results dict."""
    cfg, clf, backbone_np, classes = prepare(cfg)
    edges = probe_config.edges_from_config(cfg.aspect_ratio_bins)
    write_config(workdir, cfg)
    mesh = make_mesh()
    backbone_params = jax.device_put(backbone_np, replicated(mesh))
    frozen = backbone_params if clf.frozen else None
    logger = MetricsLogger(workdir, cfg)
    eval_split = "test" if (cfg.eval.split or cfg.data.val_split) == "test" else "val"

    cached = use_cache(cfg)
    batches = _train_batches(cfg, clf, backbone_params, mesh, logger, cached)
    params, batch_stats = init_params(clf, backbone_params, dummy_batch(cfg, 1), cfg.seed)
    optimizer, schedule = make_probe_optimizer(cfg, clf, params)
    state = jax.device_put(init_state(params, batch_stats, optimizer, cfg.seed), replicated(mesh))
    train_step = make_train_step(clf, optimizer, schedule, cfg, classes, cached)
    eval_step = make_eval_step(clf)
    bar = ProgressBar(cfg.total_steps, cfg.batch_size)
    window, window_start = [], time.time()
    try:
        for step in range(1, cfg.total_steps + 1):
            state, metrics = train_step(state, frozen, global_batch(next(batches), mesh))
            window.append(metrics)
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                window = jax.device_get(window)
                ips = len(window) * cfg.batch_size / max(time.time() - window_start, 1e-9)
                record = {
                    k: float(np.mean([m[k] for m in window])) for k in ("loss", "accuracy", "grad_norm")
                }
                record.update(lr=float(window[-1]["lr"]), images_per_sec=ips)
                logger.write(step, "train", record)
                bar.update(step, record["loss"], record["lr"], ips)
                window, window_start = [], time.time()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.total_steps:
                res = evaluate(cfg, eval_step, state, frozen, mesh, edges)
                logger.write(step, eval_split, {"top1": res["top1"], "top5": res["top5"]})
                window_start = time.time()
        bar.close()
        results = evaluate(cfg, eval_step, state, frozen, mesh, edges)
        logger.write(cfg.total_steps, eval_split, {"top1": results["top1"], "top5": results["top5"]})
        if jax.process_index() == 0:
            write_results(workdir, results)
            plot_accuracy_by_bin(
                {os.path.basename(os.path.abspath(workdir)): results}, os.path.join(workdir, PLOT_FILE)
            )
            logger.write_image(cfg.total_steps, "accuracy_by_aspect_ratio", os.path.join(workdir, PLOT_FILE))
    finally:
        logger.close()
    return results
