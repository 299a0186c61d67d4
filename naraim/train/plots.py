"""PNG figures of pre-training evaluation: per-position error maps, target/prediction reconstruction grids,
and the run's curves over steps."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def patches_to_image(
    patches: np.ndarray, coords: np.ndarray, grid: np.ndarray, length: int, p: int
) -> np.ndarray:
    """float [N, P*P*3] in [0,1] -> [rows*P, cols*P, 3] image from the first `length` patches at their
    coords."""
    rows, cols = int(grid[0]), int(grid[1])
    image = np.zeros((rows * p, cols * p, 3), np.float32)
    for j in range(int(length)):
        r, c = int(coords[j, 0]), int(coords[j, 1])
        image[r * p : (r + 1) * p, c * p : (c + 1) * p] = patches[j].reshape(p, p, 3)
    return image


def save_reconstructions(targets: list, predictions: list, path: str, title: str = "") -> None:
    """Two rows (target, prediction) of [H, W, 3] float images in [0, 1]."""
    n = len(targets)
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.2), squeeze=False)
    for i in range(n):
        for row, (images, label) in enumerate(((targets, "target"), (predictions, "prediction"))):
            ax = axes[row, i]
            ax.imshow(np.clip(images[i], 0.0, 1.0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_error_by_position(errors: np.ndarray, path: str, title: str = "") -> None:
    """Bar chart of the mean error per bin of relative sequence position (bin i covers [i/K, (i+1)/K))."""
    k = len(errors)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar((np.arange(k) + 0.5) / k, errors, width=0.9 / k)
    ax.set_xlabel("relative position in the sequence (patch index / length)")
    ax.set_ylabel("next-patch MSE")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_error_grid(errors: np.ndarray, path: str, title: str = "") -> None:
    """Heat map of the mean error per patch position of a fixed [rows, cols] grid."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(errors, cmap="viridis")
    fig.colorbar(im, ax=ax, label="next-patch MSE")
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_training_curves(rows: list[dict], path: str, title: str = "") -> None:
    """Loss (train and validation) and, where logged, few-shot and kNN top-1 against the step, from the
    rows of metrics.jsonl."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
    val = [r for r in rows if r.get("split") == "val"]
    accuracy_keys = [k for k in ("fewshot_top1", "knn_top1") if any(k in r for r in val)]
    fig, axes = plt.subplots(1, 1 + bool(accuracy_keys), figsize=(5.5 * (1 + bool(accuracy_keys)), 3.6))
    axes = np.atleast_1d(axes)
    if train:
        axes[0].plot(*zip(*train, strict=True), label="train loss")
    losses = [(r["step"], r["loss"]) for r in val if "loss" in r]
    if losses:
        axes[0].plot(*zip(*losses, strict=True), "o-", label="validation loss")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend()
    for key in accuracy_keys:
        points = [(r["step"], r[key]) for r in val if key in r]
        axes[1].plot(*zip(*points, strict=True), "o-", label=key.replace("_top1", " top-1"))
    if accuracy_keys:
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("top-1 (eval.fewshot.split)")
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
