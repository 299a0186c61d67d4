"""Image completion with a pre-trained model: given the first k patches of each image, generate the rest.

The prefix is the first `prefix_fraction` of each image's patch sequence (at least one patch), in the
order the data pipeline produces (data.ordering): for raster order and an even number of rows at
fraction 0.5 that is the top half of the image. Patches are generated one at a time, each from all
the patches before it: an MSE model (linear/mlp head) predicts the patch greedily; a diffusion model
(denoising head) samples it by DDPM ancestral sampling over `num_steps` steps. Each generated patch is
rounded to uint8 pixels and fed back as input. One jitted function with static shapes recomputes the
whole sequence per generated patch (no KV cache). The given prefix is never modified and the original
patches after it are never input to the model (they are zeroed before generation).

Models trained on normalized-pixel targets (loss.norm_pix) predict each patch up to its mean and scale;
their completions take those two numbers per patch from the original image (as the reconstructions plot
does), so they show shape, not colour, predictions. Raw-pixel models (configs/demo.py:darl, darl_mse)
complete from the prefix alone.
"""

import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from ml_collections import ConfigDict

from naraim.data.pipeline import make_eval_iterator
from naraim.errors import UserError
from naraim.infra.checkpoint import restore_params
from naraim.model.model import MODEL_INPUTS, make_model
from naraim.model.sizes import patch_size
from naraim.objectives import diffusion
from naraim.objectives.objective import make_objective
from naraim.objectives.targets import unnormalize
from naraim.train.plots import patches_to_image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def prefix_lengths(length: np.ndarray, prefix_fraction: float) -> np.ndarray:
    """int32 [B]: floor(prefix_fraction * length), at least 1 and at most length."""
    if not 0.0 < prefix_fraction < 1.0:
        raise UserError(f"prefix_fraction={prefix_fraction} must be in (0, 1), e.g. 0.5 for the first half")
    length = np.asarray(length, np.int64)
    return np.clip(np.floor(prefix_fraction * length), 1, length).astype(np.int32)


def to_uint8(
    pred: jax.Array,
    original: jax.Array,
    norm_pix: bool,
    raw_scale: str = "symmetric",
    pixel_scale: str = "unit",
) -> jax.Array:
    """Predictions in target units [..., K] -> uint8 pixels. norm_pix models are un-normalized with the
    original patch's own mean and std (the convention of the reconstructions plot)."""
    pixels = unnormalize(pred, original, norm_pix, raw_scale, pixel_scale)
    return jnp.clip(jnp.round(pixels * 255.0), 0, 255).astype(jnp.uint8)


def make_complete_fn(model: nn.Module, cfg: ConfigDict, num_steps: int = 50) -> Callable:
    """Returns jitted complete(params, batch, prefix_length [B], rng) -> uint8 patches [B,N,K].

    batch: 'patches' uint8 [B,N,K], 'coords', 'grid', 'length' (the batch contract). Positions < prefix_length
    and >= length keep their input values; the others are generated in sequence order.
    """
    attention = cfg.model.attention
    if attention == "bidirectional":
        raise UserError("generation needs a causal model: this run used model.attention='bidirectional'")
    objective = make_objective(model, cfg.loss)

    def complete(params, batch, prefix_length, rng):
        batch = {k: batch[k] for k in MODEL_INPUTS}
        original = batch["patches"]
        b, n, k = original.shape
        position = jnp.arange(n)[None, :]
        keep = (position < prefix_length[:, None]) | (position >= batch["length"][:, None])
        patches = jnp.where(keep[..., None], original, jnp.zeros_like(original))
        prefix = prefix_length if attention == "prefix_causal" else None
        head_inputs = objective.init_head_inputs(b, n, k)

        def body(j, patches):
            inputs = dict(batch, patches=patches)
            out = model.apply({"params": params}, inputs, prefix_length=prefix, head_inputs=head_inputs)
            sampled = objective.sample_patch(params, out, j, rng, num_steps)
            new = to_uint8(sampled, original[:, j], **objective.targets)
            return patches.at[:, j].set(jnp.where(keep[:, j, None], patches[:, j], new))

        start = jnp.maximum(jnp.min(prefix_length), 1)
        return jax.lax.fori_loop(start, jnp.max(batch["length"]), body, patches)

    return jax.jit(complete)


def completion_images(
    completed: np.ndarray, batch: dict, prefix_length: np.ndarray, patch: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per example (prefix, completion, original) float images [H, W, 3] in [0, 1], patches at their coords;
    the prefix image shows the not-given patches in mid grey."""
    rows = []
    for i in range(len(batch["length"])):
        args = (batch["coords"][i], batch["grid"][i], int(batch["length"][i]), patch)
        original = np.asarray(batch["patches"][i], np.float32) / 255.0
        given = np.where(np.arange(len(original))[:, None] < prefix_length[i], original, 0.5)
        rows.append(
            (
                patches_to_image(given, *args),
                patches_to_image(np.asarray(completed[i], np.float32) / 255.0, *args),
                patches_to_image(original, *args),
            )
        )
    return rows


def save_completion_grid(rows: list, path: str, title: str = "") -> None:
    """PNG with one row per image: input prefix | completion | original."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.2 * len(rows)), squeeze=False)
    for i, images in enumerate(rows):
        for c, (image, label) in enumerate(zip(images, ("prefix", "completion", "original"), strict=True)):
            ax = axes[i, c]
            ax.imshow(np.clip(image, 0.0, 1.0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def generate_from_run(
    init_from: str,
    out_path: str = "",
    *,
    num_images: int = 8,
    prefix_fraction: float = 0.5,
    num_steps: int = 50,
    seed: int = 0,
    split: str = "",
) -> str:
    """Completes the first `num_images` images of the run's validation split (or `split`) and writes the PNG
    grid to out_path (default INIT_FROM/completions_<step>.png). Returns the path written."""
    if num_images < 1:
        raise UserError(f"num_images={num_images} must be at least 1")
    prefix_lengths(np.ones(1), prefix_fraction)  # checks the fraction before any loading
    diffusion.sampling_signal_levels(num_steps)  # checks the step count
    params, cfg, step = restore_params(init_from)
    patch = patch_size(cfg.model.variant)
    iterator = make_eval_iterator(
        cfg.data,
        split=split or cfg.data.val_split,
        patch_size=patch,
        global_batch_size=num_images,
        max_examples=num_images,
    )
    batch = next(iter(iterator), None)
    if batch is None:
        raise UserError(f"the split {split or cfg.data.val_split!r} has no images: pass another with --split")
    batch = {k: np.asarray(batch[k]) for k in (*MODEL_INPUTS, "valid")}
    prefix_length = prefix_lengths(batch["length"], prefix_fraction)
    model = make_model(cfg.model)
    complete = make_complete_fn(model, cfg, num_steps)
    inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS}
    completed = np.asarray(complete(params, inputs, prefix_length, jax.random.key(seed)))
    valid = batch["valid"]
    shown = {k: v[valid] for k, v in batch.items()}
    rows = completion_images(completed[valid], shown, prefix_length[valid], patch)
    how = make_objective(model, cfg.loss).describe_sampling(num_steps)
    if cfg.loss.norm_pix:
        how += ", patch mean/std from the original"
    path = out_path or os.path.join(init_from, f"completions_{step}.png")
    save_completion_grid(rows, path, f"{os.path.basename(os.path.abspath(init_from))} step {step}: {how}")
    return path
