"""The protocols of a probe run: frozen heads (attentive or linear sweeps), fine-tuning and kNN, each given a
RunContext (the resolved config, the workdir's files, the mesh, the minival split)."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from naraim.console import progress
from naraim.data.pipeline import make_eval_iterator, make_train_iterator, split_size
from naraim.errors import UserError
from naraim.infra.checkpoint import write_config
from naraim.infra.mesh import global_batch, make_mesh, replicated
from naraim.infra.metrics_log import MetricsLogger
from naraim.infra.optimizer import make_optimizer
from naraim.model.model import MODEL_INPUTS, dummy_batch
from naraim.model.sizes import get_size
from naraim.model.vit import ViT
from naraim.probe import config as probe_config
from naraim.probe import features as F
from naraim.probe import knn
from naraim.probe.classifiers import Classifier, Sweep, make_classifier, released_head
from naraim.probe.features import CacheBatches, compute_cache
from naraim.probe.finetune import layer_scales, mix_batch, scale_by_layer
from naraim.probe.heads import make_head
from naraim.probe.plots import plot_accuracy_by_bin, plot_accuracy_by_block
from naraim.probe.results import Accumulator, local_rows, sweep_results, write_results
from naraim.probe.step import init_state, make_eval_step, make_train_step, train_loop

PLOT_FILE = "accuracy_by_aspect_ratio.png"
BLOCK_PLOT_FILE = "accuracy_by_block.png"


# The minival split: a seeded part of the training split that selects among a sweep's heads, so that the
# validation split is only ever reported, never selected on.
def split_minival(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, minival indices), each sorted int64: round(fraction * n) of range(n), drawn by a
    permutation seeded by `seed`, are minival (at least one when fraction > 0 and n > 1); the rest train."""
    if fraction <= 0 or num_examples < 2:
        return np.arange(num_examples), np.zeros(0, np.int64)
    count = min(num_examples - 1, max(1, round(fraction * num_examples)))
    order = np.random.default_rng([seed, 0x6D696E69]).permutation(num_examples)
    return np.sort(order[count:]), np.sort(order[:count])


def make_sweep(cfg: ConfigDict, backbone: ViT, classes: int) -> Sweep:
    """The frozen protocol's heads: one per (probe.blocks spec, learning rate[, weight decay]): with
    probe.weight_decays the second axis runs over every (lr, weight decay) pair, lr-major."""
    heads = cfg.probe.num_heads or get_size(cfg.model.variant)["heads"]
    head = make_head(cfg.protocol, "", classes, heads, cfg.probe.use_map_mlp, cfg.probe.head)
    lrs = tuple(float(lr) for lr in cfg.probe.lrs) or (float(cfg.optim.lr),)
    wds = tuple(float(wd) for wd in cfg.probe.weight_decays)
    return Sweep(
        backbone=backbone,
        head=head,
        attention=cfg.attention,
        specs=F.parse_blocks(cfg.probe.blocks, backbone.depth),
        lrs=tuple(lr for lr in lrs for _ in wds) if wds else lrs,
        last_k=int(cfg.probe.last_k),
        pooled=cfg.protocol == "linear",
        weight_decays=tuple(wd for _ in lrs for wd in wds) if wds else None,
    )


def sweep_optimizer(cfg: ConfigDict, sw: Sweep):
    """(optimizer, schedule) of a sweep: optim.* at a unit peak learning rate (each head's learning rate
    multiplies its updates), without weight decay when the heads carry their own (probe.weight_decays)."""
    unit = cfg.optim.copy_and_resolve_references()
    unit.lr = 1.0
    if sw.weight_decays is not None:
        unit.weight_decay = 0.0  # the step adds each head's
    return make_optimizer(unit, cfg.total_steps)


def use_cache(cfg: ConfigDict) -> bool:
    """Frozen protocols cache features if asked ('always') or if the transforms are deterministic ('auto')."""
    if cfg.protocol == "finetune" or cfg.probe.cache_features == "never":
        return False
    return cfg.probe.cache_features == "always" or not probe_config.has_randomness(cfg.data)


def _eval_iterator(cfg: ConfigDict, split: str, indices=None, max_examples=None, data_cfg=None):
    return make_eval_iterator(
        data_cfg or cfg.data,
        split=split,
        patch_size=get_size(cfg.model.variant)["patch"],
        global_batch_size=cfg.eval.batch_size or cfg.batch_size,
        max_examples=max_examples,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        indices=indices,
    )


def _train_transforms_data(cfg: ConfigDict) -> ConfigDict:
    """The data config whose eval transforms are the training transforms (to visit training images once)."""
    data = cfg.data.copy_and_resolve_references()
    data.eval_transforms = data.transforms
    return data


def _accumulate(eval_fn, batches, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top1, top5 [M, ...], aspect_ratio [M]) of eval_fn(global batch) over `batches` (valid rows only)."""
    acc = Accumulator()
    for local in batches:
        top1, top5 = eval_fn(global_batch(local, mesh))
        acc.add(local_rows(top1), local_rows(top5), local["aspect_ratio"], local["valid"])
    return acc.arrays()


def _features(fn, backbone_params: dict, batches, mesh, what: str, enabled: bool) -> dict:
    """compute_cache with a progress line ('caching features of the training split: 12/47 batches ...')."""
    bar = progress(len(batches), what, "batch", enabled=enabled, min_interval=10.0)
    try:
        return compute_cache(fn, backbone_params, batches, mesh, progress=bar.update)
    finally:
        bar.close()


def _cache_eval_batches(cache: dict, batch: int):
    """The cache's rows in batches of `batch`, the last padded with rows whose 'valid' is False."""
    n = len(cache["label"])
    for start in range(0, n, batch):
        index = np.minimum(np.arange(start, start + batch), n - 1)
        out = {k: v[index] for k, v in cache.items()}
        out["valid"] = np.arange(start, start + batch) < n
        yield out


class RunContext:
    """What every protocol shares: the resolved config, the workdir's files, the mesh and the split names."""

    def __init__(self, cfg: ConfigDict, workdir: str, resume_step: int):
        self.cfg, self.workdir = cfg, workdir
        self.edges = probe_config.edges_from_config(cfg.aspect_ratio_bins)
        self.eval_split = cfg.eval.split or cfg.data.val_split
        self.eval_name = "test" if self.eval_split == "test" else "val"
        self.mesh = make_mesh()
        if not resume_step:
            write_config(workdir, cfg)
        self.logger = MetricsLogger(workdir, cfg, resume_step=resume_step)
        n = split_size(cfg.data, cfg.data.train_split)
        self.train_idx, self.minival_idx = split_minival(n, float(cfg.probe.minival_fraction), int(cfg.seed))
        self.local_batch = cfg.batch_size // jax.process_count()

    def eval_batches(self, split: str, indices=None, max_examples=None, data_cfg=None):
        return _eval_iterator(self.cfg, split, indices, max_examples, data_cfg)

    def train_batches(self):
        """Endless augmented batches of the training indices (this process's share)."""
        cfg = self.cfg
        return make_train_iterator(
            cfg.data,
            patch_size=get_size(cfg.model.variant)["patch"],
            global_batch_size=cfg.batch_size,
            seed=cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            indices=self.train_idx,
        )

    def finish(self, results: dict, value_name: str = "lr") -> dict:
        """Logs, writes results.json and the plots; returns the results."""
        self.logger.write(
            self.cfg.total_steps, self.eval_name, {"top1": results["top1"], "top5": results["top5"]}
        )
        if jax.process_index() == 0:
            write_results(self.workdir, results)
            name = os.path.basename(os.path.abspath(self.workdir))
            plot_accuracy_by_bin({name: results}, os.path.join(self.workdir, PLOT_FILE))
            self.logger.write_image(
                self.cfg.total_steps, "accuracy_by_aspect_ratio", os.path.join(self.workdir, PLOT_FILE)
            )
            if len({h["features"] for h in results["per_head"]}) > 1:
                path = os.path.join(self.workdir, BLOCK_PLOT_FILE)
                plot_accuracy_by_block(results["per_head"], path, value_name, f"{name}: top-1 by block")
        return results


def frozen(run: RunContext, backbone: ViT, backbone_np: dict, classes: int) -> dict:
    cfg, mesh = run.cfg, run.mesh
    sw = make_sweep(cfg, backbone, classes)
    backbone_params = jax.device_put(backbone_np, replicated(mesh))
    released = bool(cfg.probe.released_head)
    cached = use_cache(cfg) and not released  # nothing trains on a released head
    if cached:
        start = time.time()
        blocks_fn = jax.jit(sw.block_stack)
        train_data = _train_transforms_data(cfg)
        batches = run.eval_batches(cfg.data.train_split, run.train_idx, data_cfg=train_data)
        cache = _features(blocks_fn, backbone_params, batches, mesh, "caching features", cfg.progress_bar)
        if not len(cache["label"]):
            raise UserError(
                f"data.train_split={cfg.data.train_split!r} has no usable images: check data.source"
            )
        minival_cache = None
        if len(run.minival_idx):
            batches = run.eval_batches(cfg.data.train_split, run.minival_idx, data_cfg=train_data)
            minival_cache = _features(
                blocks_fn, backbone_params, batches, mesh, "caching minival", cfg.progress_bar
            )
        run.logger.write(
            0, "train", {"cache_examples": len(cache["label"]), "cache_seconds": time.time() - start}
        )
        batches = CacheBatches(cache, run.local_batch, cfg.seed)
    else:
        batches = run.train_batches()
    params, stats = sw.init(backbone_params, dummy_batch(cfg, 1), cfg.seed)
    if released:
        params, stats = released_head(cfg, sw, params, stats)
    optimizer, schedule = sweep_optimizer(cfg, sw)
    state = jax.device_put(init_state(params, stats, optimizer, cfg.seed, sw.heads), replicated(mesh))
    smoothing = float(cfg.probe.label_smoothing)
    train_step = make_train_step(
        sw,
        optimizer,
        schedule,
        classes,
        label_smoothing=smoothing,
        lrs=sw.lrs,
        weight_decays=sw.weight_decays,
        decay_all=cfg.optim.decay == "all",
        cached=cached,
    )
    eval_step = make_eval_step(sw)
    cached_eval = make_eval_step(sw, cached=True)

    def minival_top1(state) -> np.ndarray | None:
        if not len(run.minival_idx):
            return None
        if cached:
            batches_ = _cache_eval_batches(
                minival_cache, (cfg.eval.batch_size or cfg.batch_size) // jax.process_count()
            )
            top1, _, _ = _accumulate(lambda b: cached_eval(state, backbone_params, b), batches_, mesh)
        else:
            batches_ = run.eval_batches(cfg.data.train_split, run.minival_idx)
            top1, _, _ = _accumulate(lambda b: eval_step(state, backbone_params, b), batches_, mesh)
        return top1.mean(axis=0)

    def evaluate(state, step: int) -> dict:
        names = [F.spec_name(s, sw.last_k) for s in sw.specs]
        extra = None if sw.weight_decays is None else {"weight_decay": list(sw.weight_decays)}
        minival = minival_top1(state)

        def heads_on(data_cfg=None) -> dict:  # every head on the evaluation split, the selection by minival
            top1, top5, ar = _accumulate(
                lambda b: eval_step(state, backbone_params, b),
                run.eval_batches(run.eval_split, max_examples=cfg.eval.max_examples, data_cfg=data_cfg),
                mesh,
            )
            return sweep_results(top1, top5, ar, run.edges, names, list(sw.lrs), minival, extra=extra)

        results = heads_on()
        if step == cfg.total_steps:
            results.update(by_token_budget(cfg, heads_on))
        if step < cfg.total_steps:
            run.logger.write(step, run.eval_name, {"top1": results["top1"], "top5": results["top5"]})
        return results

    def step_fn(state, local):
        return train_step(state, backbone_params, global_batch(local, mesh))

    state = train_loop(cfg, run.workdir, step_fn, state, batches, run.logger, evaluate)
    return run.finish(evaluate(state, cfg.total_steps))


def by_token_budget(cfg: ConfigDict, results_at) -> dict:
    """{'per_token_budget': {budget: the selected head's top1, top5, num_examples, per_aspect_ratio_bin}}
    with every image sized to each of probe.eval_token_budgets; {} without budgets. results_at(data_cfg)
    evaluates the sweep with that data config."""
    out = {}
    for budget in cfg.probe.eval_token_budgets:
        r = results_at(probe_config.token_budget_data(cfg.data, int(budget)))
        out[str(int(budget))] = {k: r[k] for k in ("top1", "top5", "num_examples", "per_aspect_ratio_bin")}
    return {"per_token_budget": out} if out else {}


def make_finetune_optimizer(cfg: ConfigDict, clf: Classifier, params: dict):
    """(optimizer, schedule): the trainer's AdamW + warmup/cosine, with layer-wise lr decay."""
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    if cfg.finetune.layer_decay == 1:
        return optimizer, schedule
    scales = layer_scales(params, clf.backbone.depth, cfg.finetune.layer_decay)
    return optax.chain(optimizer, scale_by_layer(scales)), schedule


def finetune(run: RunContext, backbone: ViT, backbone_np: dict, classes: int) -> dict:
    cfg, mesh = run.cfg, run.mesh
    clf = make_classifier(cfg, backbone, classes)
    batches = run.train_batches()
    params, stats = clf.init(jax.tree.map(np.asarray, backbone_np), dummy_batch(cfg, 1), cfg.seed)
    optimizer, schedule = make_finetune_optimizer(cfg, clf, params)
    state = jax.device_put(init_state(params, stats, optimizer, cfg.seed), replicated(mesh))
    ft = cfg.finetune

    def mix(rng, batch, targets):
        return mix_batch(rng, batch, targets, ft.mixup_alpha, ft.cutmix_alpha, ft.mix_prob)

    train_step = make_train_step(
        clf, optimizer, schedule, classes, label_smoothing=float(ft.label_smoothing), mix=mix
    )
    eval_step = make_eval_step(clf)

    def evaluate(state, step: int) -> dict:
        top1, top5, ar = _accumulate(
            lambda b: eval_step(state, None, b),
            run.eval_batches(run.eval_split, max_examples=cfg.eval.max_examples),
            mesh,
        )
        results = sweep_results(
            top1[:, None, None], top5[:, None, None], ar, run.edges, ["encoded"], [float(cfg.optim.lr)], None
        )
        if step < cfg.total_steps:
            run.logger.write(step, run.eval_name, {"top1": results["top1"], "top5": results["top5"]})
        return results

    state = train_loop(
        cfg,
        run.workdir,
        lambda s, b: train_step(s, None, global_batch(b, mesh)),
        state,
        batches,
        run.logger,
        evaluate,
    )
    return run.finish(evaluate(state, cfg.total_steps))


def knn_protocol(run: RunContext, backbone: ViT, backbone_np: dict, classes: int) -> dict:
    cfg, mesh = run.cfg, run.mesh
    specs = F.parse_blocks(cfg.probe.blocks, backbone.depth)
    blocks = F.needed_blocks(specs, backbone.depth, cfg.probe.last_k)
    backbone_params = jax.device_put(backbone_np, replicated(mesh))

    def embed(bp, batch):
        _, inter = backbone.apply({"params": bp}, *(batch[k] for k in MODEL_INPUTS), attention=cfg.attention)
        pooled = F.mean_pool(F.block_stack(inter, blocks), batch["length"])  # [B, nb, D]
        feats = F.spec_features(pooled, specs, blocks, backbone.depth, cfg.probe.last_k)  # [F, B, D]
        return jnp.moveaxis(knn.normalise(feats), 0, 1)  # [B, F, D]

    start = time.time()
    embed_fn = jax.jit(embed)
    train_data = _train_transforms_data(cfg)
    batches = run.eval_batches(cfg.data.train_split, run.train_idx, data_cfg=train_data)
    bank = _features(embed_fn, backbone_params, batches, mesh, "kNN bank", cfg.progress_bar)
    if not len(bank["label"]):
        raise UserError(f"data.train_split={cfg.data.train_split!r} has no usable images: check data.source")

    # k beyond the bank is the whole bank: each k reported is one that ran
    ks = tuple(dict.fromkeys(min(int(k), len(bank["label"])) for k in cfg.probe.knn_k))

    def correct(queries: dict) -> tuple[np.ndarray, np.ndarray]:
        """(top1, top5) bool [Q, F, K]: every feature spec at every k."""
        top1, top5 = [], []
        for f in range(len(specs)):
            t1, t5 = knn.knn_correct_at(
                bank["features"][:, f],
                bank["label"],
                queries["features"][:, f],
                queries["label"],
                classes,
                ks,
                cfg.knn.temperature,
            )
            top1.append(t1)
            top5.append(t5)
        return np.stack(top1, 1), np.stack(top5, 1)

    minival = None
    if len(run.minival_idx):
        batches = run.eval_batches(cfg.data.train_split, run.minival_idx, data_cfg=train_data)
        queries = _features(embed_fn, backbone_params, batches, mesh, "kNN minival", cfg.progress_bar)
        minival = correct(queries)[0].mean(axis=0)
    batches = run.eval_batches(run.eval_split, max_examples=cfg.eval.max_examples)
    queries = _features(embed_fn, backbone_params, batches, mesh, f"kNN {run.eval_name}", cfg.progress_bar)
    top1, top5 = correct(queries)
    names = [F.spec_name(s, cfg.probe.last_k) for s in specs]
    results = sweep_results(top1, top5, queries["aspect_ratio"], run.edges, names, list(ks), minival, "k")
    run.logger.write(0, "train", {"bank_examples": len(bank["label"]), "knn_seconds": time.time() - start})
    return run.finish(results, "k")


def run_protocol(run: RunContext, backbone: ViT, backbone_np: dict, classes: int) -> dict:
    """Runs cfg.protocol ('attentive' and 'linear' are frozen sweeps) and returns its results."""
    if run.cfg.protocol == "finetune":
        return finetune(run, backbone, backbone_np, classes)
    if run.cfg.protocol == "knn":
        return knn_protocol(run, backbone, backbone_np, classes)
    return frozen(run, backbone, backbone_np, classes)
