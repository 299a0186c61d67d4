"""results.json of a probe run: overall top-1/top-5 and top-1 per aspect-ratio bin.

File format (strict JSON): {"top1": float, "top5": float, "num_examples": int,
"per_aspect_ratio_bin": [{"bin": [lo, hi], "count": int, "top1": float | null}, ...]}.
Accuracies are fractions in [0, 1]. JSON has no infinity, so an unbounded upper edge is written as
null; `read_results` turns it back into math.inf. An empty bin has "top1": null.
"""

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from naraim.errors import UserError
from naraim.probe.bins import assign_bins, check_edges

RESULTS_FILE = "results.json"


def summarize(top1: np.ndarray, top5: np.ndarray, aspect_ratio: np.ndarray, edges: Sequence[float]) -> dict:
    """Results dict from per-example correctness (bool [M]) and aspect ratios (float [M]) of M examples."""
    edges = check_edges(edges)
    top1 = np.asarray(top1, dtype=bool)
    top5 = np.asarray(top5, dtype=bool)
    bins = assign_bins(aspect_ratio, edges)
    per_bin = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False)):
        in_bin = bins == i
        count = int(in_bin.sum())
        acc = float(top1[in_bin].mean()) if count else None
        per_bin.append({"bin": [lo, hi], "count": count, "top1": acc})
    n = int(top1.size)
    return {
        "top1": float(top1.mean()) if n else 0.0,
        "top5": float(top5.mean()) if n else 0.0,
        "num_examples": n,
        "per_aspect_ratio_bin": per_bin,
    }


def _json_safe(results: dict) -> dict:
    out = dict(results)
    out["per_aspect_ratio_bin"] = [
        {**b, "bin": [None if math.isinf(e) else e for e in b["bin"]]}
        for b in results["per_aspect_ratio_bin"]
    ]
    return out


def write_results(workdir: str, results: dict) -> str:
    """Writes WORKDIR/results.json (infinite edges as null) and returns its path."""
    path = os.path.join(workdir, RESULTS_FILE)
    with open(path, "w") as f:
        json.dump(_json_safe(results), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def read_results(run: str) -> dict:
    """Reads a run's results.json (`run` = a probe workdir or the file itself); null edges become math.inf."""
    path = os.path.join(run, RESULTS_FILE) if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise UserError(f"no {RESULTS_FILE} at {path}: pass the workdir of a finished probe run")
    with open(path) as f:
        results = json.load(f)
    for b in results["per_aspect_ratio_bin"]:
        b["bin"] = [math.inf if e is None else float(e) for e in b["bin"]]
    return results
