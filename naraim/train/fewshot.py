"""Representation quality during pre-training: a closed-form few-shot linear classifier and kNN on the frozen
features of the current parameters (big_vision's fewshot_lsr convention), run at every evaluation.

Features: the mean over real tokens of the chosen blocks' outputs (`eval.fewshot.blocks`, as probe.blocks),
with the backbone's attention set by `eval.fewshot.attention`. The training set is `shots` images per class
of data.train_split, drawn once from a seeded permutation (the same on every start). The test set is, by
default ('minival'), `num_eval_examples` other images of the training split, drawn once by a seeded
permutation: the run's best evaluation (best.json) is then selected on training data, never on the
validation split a probe reports; `eval.fewshot.split` may name a split instead (its first images). The
classifier is ridge regression of the targets 2 * one-hot - 1 on the features whitened with the shots' mean
and standard deviation, plus a constant feature of 100 (a bias almost free of the penalty); its prediction
is the argmax. kNN is DINO's weighted vote (naraim.probe.knn) with the shots as the bank.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.data.pipeline import make_eval_iterator
from naraim.data.sources import open_source
from naraim.infra.mesh import global_batch, replicated
from naraim.infra.options import Option
from naraim.model.model import MODEL_INPUTS
from naraim.model.sizes import patch_size
from naraim.model.vit import make_backbone
from naraim.probe import features as F
from naraim.probe import knn

FEWSHOT_OPTIONS = {
    "enabled": Option(True, "few-shot linear and kNN top-1 at every evaluation (skipped without labels)"),
    "shots": Option(10, "labelled training images per class (class-balanced, seeded)"),
    "blocks": Option(
        "-1", "features as probe.blocks ('-1', '2,-1', 'all', 'mean'); the first is the headline figure"
    ),
    "split": Option(
        "minival",
        "the images classified: 'minival' (training images other than the shots, seeded: best.json "
        "selects on training data) or a split name (its first images)",
    ),
    "num_eval_examples": Option(1_000, "how many images are classified"),
    "l2_reg": Option(1024.0, "ridge penalty on the whitened features (big_vision's 2^10)"),
    "knn_k": Option(20, "neighbours of the weighted kNN (temperature 0.07), capped at the number of shots"),
    "seed": Option(0, "draws the shots"),
    "attention": Option("bidirectional", "the backbone's attention for the features (or 'causal')"),
}
BIAS_FEATURE = 100.0  # the constant feature that plays the bias (large: almost unregularised)
LAST_K = 6  # blocks averaged by the 'mean' spec (AIM's default)


@dataclasses.dataclass(frozen=True)
class Ridge:
    """A fitted few-shot classifier: features are whitened with (mean, std), extended by BIAS_FEATURE, and
    scored by weights [D + 1, C]."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def design(self, x: np.ndarray) -> np.ndarray:
        """[N, D + 1]: whitened features and the constant bias feature."""
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        return np.concatenate([z, np.full((len(z), 1), BIAS_FEATURE)], axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class ids int [N] of features [N, D]."""
        return np.argmax(self.design(x) @ self.weights, axis=1)


def fit_ridge(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float) -> Ridge:
    """Ridge regression of 2 * one-hot(y) - 1 on the whitened features x [N, D] (+ bias feature), in float64:
    W = (A^T A + l2 I)^-1 A^T T, computed as A^T (A A^T + l2 I)^-1 T when N < D + 1 (the same W)."""
    x = np.asarray(x, np.float64)
    unfitted = Ridge(x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5, np.zeros(0))
    a = unfitted.design(x)
    targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
    n, d = a.shape
    if n >= d:
        w = np.linalg.solve(a.T @ a + l2_reg * np.eye(d), a.T @ targets)
    else:
        w = a.T @ np.linalg.solve(a @ a.T + l2_reg * np.eye(n), targets)
    return dataclasses.replace(unfitted, weights=w)


def draw_shots(
    label_of: Callable[[int], int], size: int, num_classes: int, shots: int, seed: int, max_reads: int
) -> np.ndarray:
    """Sorted indices of `shots` examples per class: candidates visited in a permutation of range(size)
    seeded by `seed`, their labels read with label_of(i) (-1: unlabelled, never drawn), until all
    `num_classes` classes have their shots or max_reads labels were read (a rare class then has fewer)."""
    taken = np.zeros(num_classes, np.int64)
    chosen = []
    for reads, i in enumerate(np.random.default_rng(seed).permutation(size)):
        if reads >= max_reads or taken.min() >= shots:
            break
        label = int(label_of(int(i)))
        if 0 <= label < num_classes and taken[label] < shots:
            taken[label] += 1
            chosen.append(i)
    return np.sort(np.asarray(chosen, np.int64))


def _label_reader(source) -> Callable[[int], int]:
    """label_of(i): a folder's labels come from its listing; other sources are read."""
    return source.label if hasattr(source, "label") else (lambda i: source[i][1])


class FewShot:
    """run(params) -> {'fewshot_top1', 'knn_top1'} (plus '/block_<i>' keys when eval.fewshot.blocks names
    several) of the current parameters; `skip` says why it does not run ('' when it does)."""

    def __init__(self, cfg: ConfigDict, mesh):
        self.cfg, self.mesh, fs = cfg, mesh, cfg.eval.fewshot
        self.patch = patch_size(cfg.model.variant)
        self.backbone = make_backbone(cfg.model)
        depth = self.backbone.depth
        self.specs = F.parse_blocks(fs.blocks, depth)
        self.blocks = F.needed_blocks(self.specs, depth, LAST_K)
        train = open_source(cfg.data, cfg.data.train_split)
        self.num_classes = int(train.num_classes)
        self.skip = ""
        if self.num_classes < 2:
            self.skip = f"{train} has no class labels: few-shot evaluation skipped"
            return
        label_of = functools.cache(_label_reader(train))  # a shot's label is read once (a source may decode)
        max_reads = max(20 * int(fs.shots) * self.num_classes, 1_000)
        self.shot_indices = draw_shots(
            label_of, len(train), self.num_classes, int(fs.shots), int(fs.seed), max_reads
        )
        order = np.random.default_rng(int(fs.seed) + 1).permutation(len(train))
        others = order[~np.isin(order, self.shot_indices)][: int(fs.num_eval_examples)]
        self.test_indices = np.sort(others) if fs.split == "minival" else None
        if self.test_indices is not None and not len(self.test_indices):
            self.skip = (
                f"{train} has {len(train)} images, all taken as the {fs.shots} shots per class: few-shot "
                "evaluation skipped (lower eval.fewshot.shots, or set eval.fewshot.split to a split name)"
            )
            return
        if len({label_of(int(i)) for i in self.shot_indices}) < 2:
            self.skip = f"{train} has fewer than 2 labelled classes: few-shot evaluation skipped"
            return
        specs, blocks, attention = self.specs, self.blocks, fs.attention

        def features(params, batch):
            _, inter = self.backbone.apply(
                {"params": params["backbone"]}, *(batch[k] for k in MODEL_INPUTS), attention=attention
            )
            pooled = F.mean_pool(F.block_stack(inter, blocks), batch["length"])  # [B, nb, D]
            feats = F.spec_features(pooled, specs, blocks, depth, LAST_K).swapaxes(0, 1)  # [B, F, D]
            return feats, batch["label"], batch["valid"]

        self._features = jax.jit(features, out_shardings=replicated(mesh))

    def _collect(self, params, split: str, **kw) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 [M, F, D], labels int [M]) of the valid examples (every process gets all)."""
        batches = make_eval_iterator(
            self.cfg.data,
            split=split,
            patch_size=self.patch,
            global_batch_size=self.cfg.eval.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            **kw,
        )
        feats, labels, valid = [], [], []
        for local in batches:
            x, y, v = jax.device_get(self._features(params, global_batch(local, self.mesh)))
            feats.append(x), labels.append(y), valid.append(v)
        x, y, v = (np.concatenate(c) for c in (feats, labels, valid))
        return x[v], y[v]

    def run(self, params) -> dict[str, float]:
        if self.skip:
            return {}
        fs = self.cfg.eval.fewshot
        train_x, train_y = self._collect(params, self.cfg.data.train_split, indices=self.shot_indices)
        if fs.split == "minival":
            test_x, test_y = self._collect(params, self.cfg.data.train_split, indices=self.test_indices)
        else:
            test_x, test_y = self._collect(params, fs.split, max_examples=fs.num_eval_examples)
        out = {}
        for f, spec in enumerate(self.specs):
            ridge = fit_ridge(train_x[:, f], train_y, self.num_classes, float(fs.l2_reg))
            fewshot = float(np.mean(ridge.predict(test_x[:, f]) == test_y)) if len(test_y) else float("nan")
            bank, queries = knn.normalise(train_x[:, f]), knn.normalise(test_x[:, f])
            top1, _ = knn.knn_correct(
                np.asarray(bank), train_y, np.asarray(queries), test_y, self.num_classes, int(fs.knn_k)
            )
            knn_top1 = float(np.mean(top1)) if len(top1) else float("nan")
            if f == 0:
                out["fewshot_top1"], out["knn_top1"] = fewshot, knn_top1
            if len(self.specs) > 1:
                name = F.spec_name(spec, LAST_K)
                out[f"fewshot_top1/block_{name}"], out[f"knn_top1/block_{name}"] = fewshot, knn_top1
        return out
