"""What a probe reports: top-k correctness (on device) and its accumulation over an evaluation set,
aspect-ratio bins (width / height of the source image, as in the NARAIM paper's Figure 3), and results.json.
results.json of a probe run: overall top-1/top-5 and top-1 per aspect-ratio bin, of the selected head.

File format (strict JSON): {"top1": float, "top5": float, "num_examples": int,
"per_aspect_ratio_bin": [{"bin": [lo, hi], "count": int, "top1": float | null}, ...],
"selected": {"features": block index | "mean_last_<k>", "lr" (or "k" for kNN): x},
"per_head": [{"features", "lr" (or "k"), "minival_top1": float | null, "top1", "top5", "num_examples",
"per_aspect_ratio_bin"}, ...]}, and with probe.eval_token_budgets "per_token_budget": {"<budget>": {"top1",
"top5", "num_examples", "per_aspect_ratio_bin"}} (the selected head, every image sized to that many
patches). The top-level figures are the selected head's on the evaluation split; the
head is selected by its top-1 on the minival split (carved from the training split), never on the split
reported. Accuracies are fractions in [0, 1]. JSON has no infinity, so an unbounded upper edge is written as
null; `read_results` turns it back into math.inf. An empty bin has "top1": null.

load_runs and format_table: several runs' results side by side (scripts/compare.py).
"""

import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from naraim.errors import UserError
from naraim.probe.plots import bin_label


def topk_correct(logits: jnp.ndarray, label: jnp.ndarray, k: int) -> jnp.ndarray:
    """Whether each label is among its example's k highest logits: logits [..., B, C], label [B] -> bool
    [..., B] (leading axes: e.g. the heads of a sweep).

    Ties count in the label's favour (rank = number of logits strictly above the label's logit).
    """
    label = jnp.broadcast_to(label, logits.shape[:-1])
    label_logit = jnp.take_along_axis(logits, label[..., None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)
    return rank < k


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded along axis 0 (all rows on a single process), as numpy."""
    if jax.process_count() == 1:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


class Accumulator:
    """Collects per-example top-1/top-5 correctness (bool [B] or [B, heads...]), aspect ratio and validity of
    this process's eval rows."""

    def __init__(self) -> None:
        self._cols: list[list[np.ndarray]] = [[], [], [], []]

    def add(self, top1: np.ndarray, top5: np.ndarray, aspect_ratio: np.ndarray, valid: np.ndarray) -> None:
        """top1, top5: bool [B, ...]; valid: bool [B]; aspect_ratio: float [B] (this process's rows)."""
        for col, x, dtype in zip(
            self._cols, (top1, top5, aspect_ratio, valid), (bool, bool, np.float64, bool), strict=True
        ):
            col.append(np.asarray(x, dtype=dtype))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top1 bool [M, ...], top5 bool [M, ...], aspect_ratio float [M]) over the M valid examples of all
        processes (a collective when there are several processes: all must call it)."""
        if not self._cols[0]:
            return np.zeros(0, bool), np.zeros(0, bool), np.zeros(0)
        top1, top5, ar, valid = (np.concatenate(c) for c in self._cols)
        if jax.process_count() > 1:
            top1, top5, ar, valid = (
                np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (top1, top5, ar, valid)
            )
        return top1[valid], top5[valid], ar[valid]


DEFAULT_EDGES: tuple[float, ...] = (0.0, 0.5, 0.75, 1.33, 2.0, math.inf)


def check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """`edges` as floats; UserError unless there are >= 2 strictly increasing, non-negative edges."""
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise UserError(
            f"aspect_ratio_bins={edges} is not valid: give at least two strictly increasing edges >= 0, "
            "e.g. (0, 0.5, 0.75, 1.33, 2, inf)"
        )
    return edges


def assign_bins(aspect_ratio: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each aspect ratio: bin i holds edges[i] <= ar < edges[i+1]; -1 outside all bins.

    aspect_ratio: float [B] (width / height). Returns int64 [B].
    """
    edges_arr = np.asarray(check_edges(edges))
    ar = np.asarray(aspect_ratio, dtype=np.float64)
    idx = np.searchsorted(edges_arr, ar, side="right") - 1
    inside = (idx >= 0) & (idx < len(edges_arr) - 1)
    return np.where(inside, idx, -1)


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


def select_head(minival_top1: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index of the head with the best minival top-1 (the first of equals); (0, ..) without minival."""
    if minival_top1 is None:
        if int(np.prod(shape)) > 1:
            raise ValueError("selecting among several heads needs minival accuracies")
        return (0,) * len(shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(minival_top1)), shape))


def sweep_results(
    top1: np.ndarray,
    top5: np.ndarray,
    aspect_ratio: np.ndarray,
    edges: Sequence[float],
    features: Sequence[int | str],
    values: Sequence[float],
    minival_top1: np.ndarray | None,
    value_name: str = "lr",
    extra: dict[str, Sequence] | None = None,
) -> dict:
    """Results of a sweep: top1, top5 bool [M, F, V] on the evaluation split, one head per (features[f],
    values[v]) (learning rates, or kNN's k with value_name 'k'); minival_top1 [F, V] or None (one head).
    extra: more per-value settings named in each head and the selection (e.g. {'weight_decay': [V]})."""
    shape = (len(features), len(values))
    per_head = []
    for f, v in np.ndindex(*shape):
        head = summarize(top1[:, f, v], top5[:, f, v], aspect_ratio, edges)
        minival = None if minival_top1 is None else float(minival_top1[f, v])
        more = {name: settings[v] for name, settings in (extra or {}).items()}
        per_head.append(
            {"features": features[f], value_name: values[v], **more, "minival_top1": minival, **head}
        )
    f, v = select_head(minival_top1, shape)
    chosen = per_head[f * shape[1] + v]
    return {
        **{k: chosen[k] for k in ("top1", "top5", "num_examples", "per_aspect_ratio_bin")},
        "selected": {
            "features": features[f],
            value_name: values[v],
            **{name: settings[v] for name, settings in (extra or {}).items()},
        },
        "per_head": per_head,
    }


def _json_bins(bins: list[dict]) -> list[dict]:
    return [{**b, "bin": [None if math.isinf(e) else e for e in b["bin"]]} for b in bins]


def _json_safe(results: dict) -> dict:
    out = dict(results, per_aspect_ratio_bin=_json_bins(results["per_aspect_ratio_bin"]))
    if "per_head" in results:
        out["per_head"] = [
            dict(h, per_aspect_ratio_bin=_json_bins(h["per_aspect_ratio_bin"])) for h in out["per_head"]
        ]
    if "per_token_budget" in results:
        out["per_token_budget"] = {
            b: dict(r, per_aspect_ratio_bin=_json_bins(r["per_aspect_ratio_bin"]))
            for b, r in results["per_token_budget"].items()
        }
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
    try:
        with open(path) as f:
            results = json.load(f)
        bin_lists = [
            r["per_aspect_ratio_bin"]
            for r in [results, *results.get("per_head", []), *results.get("per_token_budget", {}).values()]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path} is not a readable results file ({type(e).__name__}); re-run its probe"
        ) from None
    for bins in bin_lists:
        for b in bins:
            b["bin"] = [math.inf if e is None else float(e) for e in b["bin"]]
    return results


def load_runs(runs: list[str]) -> dict[str, dict]:
    """name (the dir's base name, made unique) -> results of each run dir; all must share the same bins."""
    loaded: dict[str, dict] = {}
    for run in runs:
        name = os.path.basename(os.path.normpath(run))
        while name in loaded:
            name += "'"
        loaded[name] = read_results(run)
    bins = {tuple(tuple(b["bin"]) for b in r["per_aspect_ratio_bin"]) for r in loaded.values()}
    if len(bins) > 1:
        raise UserError(
            "the runs use different aspect-ratio bins: re-run their probes with the same aspect_ratio_bins"
        )
    return loaded


def format_table(runs: dict[str, dict]) -> str:
    """Plain-text table: one column per run; rows top-1, top-5, examples, then top-1 (count) per bin, in %."""
    names = list(runs)
    pct = lambda a: "-" if a is None else f"{100 * a:.1f}"  # noqa: E731
    rows = [
        ["top-1 (%)", *(pct(runs[n]["top1"]) for n in names)],
        ["top-5 (%)", *(pct(runs[n]["top5"]) for n in names)],
        ["examples", *(str(runs[n]["num_examples"]) for n in names)],
    ]
    for i, b in enumerate(runs[names[0]]["per_aspect_ratio_bin"]):
        cells = [
            f"{pct(r['per_aspect_ratio_bin'][i]['top1'])} ({r['per_aspect_ratio_bin'][i]['count']})"
            for r in (runs[n] for n in names)
        ]
        rows.append([f"AR {bin_label(*b['bin'])}", *cells])
    header = ["", *names]
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(r: list) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(cells))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
