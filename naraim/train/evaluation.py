"""Pre-training evaluation on a fixed held-out set: next-patch MSE, per-position error maps, reconstructions.

`loss` uses causal attention (no random prefix) and one mean over every predicted patch, so numbers are
deterministic and comparable across recipes. With the MSE objective two more follow the NARAIM reference's
protocol: a random prefix k per image (uniform in {1, .., n-1}, seeded by eval.ref_seed and the example's
index) and prefix-causal attention, then
  mse_ref              the mean over each image's n - k targets, then the mean over images (the reference's
                       formula since its commit f8d1e65, whose n - k - 1 is made n - k: it is infinite for an
                       image with k = n - 1);
  mse_ref_fixed_count  the summed errors over images x (N - 1) prediction slots, prefix and padding slots
                       counting as zeros (its formula before f8d1e65, the one its Table 1 models trained on).
docs/reproducing.md says which can be compared with Table 1. Position bins follow NARAIM Appendix E: patch
index j of an image with n real patches maps to j/n in [0, 1), split into `error_map_bins` bins.
"""

import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from naraim.data import orderings
from naraim.data.config import token_budget
from naraim.data.pipeline import make_eval_iterator
from naraim.errors import UserError
from naraim.infra.mesh import global_batch, replicated
from naraim.infra.options import Option
from naraim.model.model import MODEL_INPUTS
from naraim.model.sizes import patch_size
from naraim.objectives.mse import loss_weights, per_patch_error
from naraim.objectives.objective import first_target, make_objective
from naraim.objectives.targets import unnormalize
from naraim.probe.features import parse_blocks
from naraim.train import plots
from naraim.train.fewshot import FEWSHOT_OPTIONS

EVAL_OPTIONS = {
    "num_examples": Option(
        1_000,
        "held-out images for the validation MSE: the first N of data.val_split; -1: all of them; 0: no "
        "evaluation",
    ),
    "batch_size": Option(64, "global evaluation batch"),
    "num_images": Option(8, "images in the reconstructions plot"),
    "error_map_bins": Option(16, "bins of relative sequence position in the error-by-position plot"),
    "ref_seed": Option(0, "seeds the random prefixes of the reference validation MSE (mse_ref)"),
    "fewshot": FEWSHOT_OPTIONS,
}


def validate_eval_config(eval_cfg: ConfigDict, num_devices: int, depth: int) -> None:
    """Raises UserError naming the first bad `eval.*` value (depth: the backbone's blocks)."""
    fs = eval_cfg.fewshot
    if fs.enabled:
        parse_blocks(fs.blocks, depth, "eval.fewshot.blocks")
        if fs.shots < 1 or fs.num_eval_examples < 1 or fs.knn_k < 1 or not fs.l2_reg > 0:
            raise UserError(
                "eval.fewshot needs shots, num_eval_examples and knn_k >= 1 and l2_reg > 0; got "
                f"{fs.shots}, {fs.num_eval_examples}, {fs.knn_k}, {fs.l2_reg}"
            )
        if fs.attention not in ("bidirectional", "causal"):
            raise UserError(f"eval.fewshot.attention={fs.attention!r}: use 'bidirectional' or 'causal'")
    if eval_cfg.batch_size % num_devices:
        raise UserError(f"eval.batch_size={eval_cfg.batch_size} is not divisible by {num_devices} devices")
    if eval_cfg.num_examples < -1 or eval_cfg.batch_size < 1 or eval_cfg.num_images < 0:
        raise UserError(
            f"eval.num_examples >= -1 (-1: the whole split), eval.batch_size >= 1 and eval.num_images >= 0 "
            f"are required; got {eval_cfg.num_examples}, {eval_cfg.batch_size}, {eval_cfg.num_images}"
        )


def make_eval_step(model: nn.Module, cfg: ConfigDict, mesh: Mesh, params_sharding) -> Callable:
    """Returns eval_step(params, batch) -> dict of replicated sums for one global batch:
    err_sum, count (scalars), bin_sum/bin_count [bins], pos_sum/pos_count [N], with the MSE objective
    ref_sum, ref_count (sum of per-image reference MSEs, images with targets; batch['ref_prefix'] int32 [B]),
    ref_err_sum and ref_images (summed target errors after the prefixes, valid images),
    and for the first cfg.eval.num_images examples: pred_pixels [n,N,K] in [0,1], patches, coords, grid,
    length."""
    bins = cfg.eval.error_map_bins
    n_img = cfg.eval.num_images
    first = first_target(bool(cfg.model.get("sos_token", False)))
    objective = make_objective(model, cfg.loss)
    target = objective.targets

    def eval_step(params, batch):
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        err, pred = objective.evaluate(params, inputs)
        n = inputs["patches"].shape[1]
        w = loss_weights(inputs["length"], first, n) * batch["valid"][:, None].astype(jnp.float32)
        rel = jnp.arange(n)[None, :] / inputs["length"][:, None]
        b = jnp.clip(jnp.floor(rel * bins).astype(jnp.int32), 0, bins - 1)
        onehot = jax.nn.one_hot(b, bins) * w[..., None]
        ref = {}
        if objective.reference_mse:
            prefix = batch["ref_prefix"]
            out = model.apply({"params": params}, inputs, attention="prefix_causal", prefix_length=prefix)
            ref_err = per_patch_error(out["pred"], inputs["patches"], **target)
            ref_w = loss_weights(inputs["length"], prefix, n) * batch["valid"][:, None].astype(jnp.float32)
            targets = jnp.sum(ref_w, 1)
            image_sums = jnp.sum(ref_err * ref_w, 1)
            ref = {
                "ref_sum": jnp.sum(image_sums / jnp.maximum(targets, 1.0)),
                "ref_count": jnp.sum(targets > 0),
                "ref_err_sum": jnp.sum(image_sums),
                "ref_images": jnp.sum(batch["valid"].astype(jnp.float32)),
            }
        return {
            **ref,
            "err_sum": jnp.sum(err * w),
            "count": jnp.sum(w),
            "bin_sum": jnp.einsum("bnk,bn->k", onehot, err),
            "bin_count": onehot.sum((0, 1)),
            "pos_sum": jnp.sum(err * w, 0),
            "pos_count": jnp.sum(w, 0),
            "pred_pixels": unnormalize(pred[:n_img], inputs["patches"][:n_img], **target),
            **{k: inputs[k][:n_img] for k in MODEL_INPUTS},
        }

    return jax.jit(eval_step, in_shardings=(params_sharding, None), out_shardings=replicated(mesh))


def _mean_or_nan(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per-entry mean; NaN (left blank in the plots) where nothing was predicted, e.g. the first patch."""
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def reference_prefixes(length: np.ndarray, indices: np.ndarray, seed: int) -> np.ndarray:
    """int32 [B]: the reference protocol's prefix per example, uniform in {1, .., length-1} (1 when
    length < 2), drawn from a generator seeded by (seed, example index): the same for an image whatever the
    batch it is in."""
    high = np.maximum(np.asarray(length, np.int64) - 1, 1)
    draws = [
        np.random.default_rng([seed, int(i)]).integers(1, h + 1) for i, h in zip(indices, high, strict=True)
    ]
    return np.asarray(draws, np.int32)


class Evaluator:
    """run(params, step) -> {'loss': validation next-patch MSE, 'num_targets', 'mse_ref' and
    'mse_ref_fixed_count' (MSE objective)};
    writes the PNGs into the workdir (error_by_position_<step>.png, error_grid_<step>.png for fixed square
    grids, reconstructions_<step>.png)."""

    def __init__(self, model: nn.Module, cfg: ConfigDict, mesh: Mesh, params_sharding, workdir: str):
        self.cfg, self.mesh, self.workdir = cfg, mesh, workdir
        self.patch = patch_size(cfg.model.variant)
        self._num_tokens = token_budget(cfg.data, self.patch)
        self._step = make_eval_step(model, cfg, mesh, params_sharding)

    def _iterator(self):
        return make_eval_iterator(
            self.cfg.data,
            split=self.cfg.data.val_split,
            patch_size=self.patch,
            global_batch_size=self.cfg.eval.batch_size,
            max_examples=None if self.cfg.eval.num_examples < 0 else self.cfg.eval.num_examples,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def run(self, params, step: int) -> tuple[dict, list[str]]:
        """Returns (metrics, paths of the PNGs written)."""
        totals, first, grids = None, None, set()
        local_batch = self.cfg.eval.batch_size // jax.process_count()
        for k, local in enumerate(self._iterator()):
            start = k * self.cfg.eval.batch_size + jax.process_index() * local_batch  # as make_eval_iterator
            indices = np.arange(start, start + local_batch)
            local = dict(
                local, ref_prefix=reference_prefixes(local["length"], indices, self.cfg.eval.ref_seed)
            )
            out = jax.device_get(self._step(params, global_batch(local, self.mesh)))
            grids.update(map(tuple, np.asarray(local["grid"])[np.asarray(local["valid"])]))
            if first is None:
                first = out
            keys = [k for k in out if k.endswith(("_sum", "_count")) or k in ("count", "ref_images")]
            totals = {k: out[k] if totals is None else totals[k] + out[k] for k in keys}
        if totals is None or totals["count"] == 0:
            return {}, []
        metrics = {"loss": float(totals["err_sum"] / totals["count"]), "num_targets": int(totals["count"])}
        if "ref_sum" in totals:
            metrics["mse_ref"] = float(totals["ref_sum"] / max(int(totals["ref_count"]), 1))
            slots = self._num_tokens - 1  # the reference's N - 1 prediction slots per image
            metrics["mse_ref_fixed_count"] = float(
                totals["ref_err_sum"] / max(totals["ref_images"] * slots, 1)
            )
        paths = [] if jax.process_index() else self._plots(step, totals, first, grids)
        return metrics, paths

    def _plots(self, step: int, totals: dict, first: dict, grids: set) -> list[str]:
        paths = []
        by_bin = _mean_or_nan(totals["bin_sum"], totals["bin_count"])
        path = os.path.join(self.workdir, f"error_by_position_{step}.png")
        plots.save_error_by_position(by_bin, path, f"validation error by position, step {step}")
        paths.append(path)
        if len(grids) == 1:
            rows, cols = next(iter(grids))
            if rows * cols <= len(totals["pos_sum"]):
                by_position = _mean_or_nan(totals["pos_sum"], totals["pos_count"])[: rows * cols]
                # sequence position -> raster position (DARL orderings permute the patches)
                perm = orderings.ordering_permutation(self.cfg.data.ordering, rows, cols)
                grid_err = by_position[orderings.inverse_permutation(perm)].reshape(rows, cols)
                path = os.path.join(self.workdir, f"error_grid_{step}.png")
                plots.save_error_grid(grid_err, path, f"validation error by patch, step {step}")
                paths.append(path)
        if self.cfg.eval.num_images:
            targets, preds = [], []
            for i in range(len(first["length"])):
                args = (first["coords"][i], first["grid"][i], first["length"][i], self.patch)
                targets.append(plots.patches_to_image(first["patches"][i] / 255.0, *args))
                preds.append(plots.patches_to_image(first["pred_pixels"][i], *args))
            path = os.path.join(self.workdir, f"reconstructions_{step}.png")
            plots.save_reconstructions(targets, preds, path, f"validation reconstructions, step {step}")
            paths.append(path)
        return paths
