"""Bar chart of top-1 accuracy per aspect-ratio bin, one bar series per run (PNG, matplotlib Agg)."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def bin_label(lo: float, hi: float) -> str:
    """'[0.75, 1.33)' style label of a bin; infinite edges print as 'inf'."""
    fmt = lambda e: "inf" if math.isinf(e) else f"{e:g}"  # noqa: E731
    return f"[{fmt(lo)}, {fmt(hi)})"


def plot_accuracy_by_bin(
    runs: dict[str, dict], path: str, title: str = "Top-1 accuracy by aspect ratio"
) -> None:
    """Writes a grouped bar chart to `path`: x = aspect-ratio bins (width/height), one bar per run.

    runs: name -> results dict (see naraim.probe.results); all runs must share the same bins.
    Each bar is labelled with its accuracy; empty bins get no bar. The legend shows overall top-1.
    """
    names = list(runs)
    bins = [tuple(b["bin"]) for b in runs[names[0]]["per_aspect_ratio_bin"]]
    counts = [b["count"] for b in runs[names[0]]["per_aspect_ratio_bin"]]
    x = np.arange(len(bins))
    width = 0.8 / len(names)
    rows = -(-len(names) // 3)  # legend rows below the axes, 3 runs per row
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(bins), 3.6 + 0.3 * rows))
    for i, name in enumerate(names):
        acc = [np.nan if b["top1"] is None else 100 * b["top1"] for b in runs[name]["per_aspect_ratio_bin"]]
        bars = ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            acc,
            width,
            label=f"{name} (overall {100 * runs[name]['top1']:.1f}%)",
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [f"{bin_label(*b)}\nn={c}" for b, c in zip(bins, counts, strict=True)])
    ax.set_xlabel("aspect ratio (width / height) of the source image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    fig.legend(loc="lower center", ncol=min(len(names), 3), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_by_block(per_head: list[dict], path: str, value_name: str = "lr", title: str = "") -> None:
    """Writes a line chart to `path`: top-1 (%) on the evaluation split per feature (block index, then the
    mean of the last blocks), one line per learning rate (or kNN k). per_head: results.json's list."""
    features = list(dict.fromkeys(h["features"] for h in per_head))
    values = list(dict.fromkeys(h[value_name] for h in per_head))
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(features), 3.6))
    x = np.arange(len(features))
    for value in values:
        acc = {h["features"]: 100 * h["top1"] for h in per_head if h[value_name] == value}
        ax.plot(x, [acc.get(f, np.nan) for f in features], marker="o", label=f"{value_name} {value:g}")
    ax.set_xticks(x, [str(f) if isinstance(f, int) else f.replace("_", " ") for f in features])
    ax.set_xlabel("features: backbone block (0 = first)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Top-1 accuracy by block")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
