"""study.json and report.md of a study: each arm's probe results per seed, their mean and spread."""

import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from naraim.infra.workdir import atomic_write, read_json  # noqa: E402
from naraim.probe.plots import bin_label, plot_accuracy_by_bin  # noqa: E402
from naraim.probe.results import read_results  # noqa: E402

METRICS = ("top1", "knn_top1", "linear_top1")


def best_per_block(per_head: list[dict]) -> dict[str, float]:
    """{features: validation top-1 of the head with the best minival top-1 among that block's lrs}."""
    best: dict[str, dict] = {}
    for head in per_head:
        name = str(head["features"])
        if name not in best or head["minival_top1"] > best[name]["minival_top1"]:
            best[name] = head
    return {name: head["top1"] for name, head in best.items()}


def fewshot_by_step(folder: str) -> list[list[float]]:
    """[[step, few-shot top-1], ...] of a pre-training run's evaluations ([] without few-shot rows)."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path)]
    return [[r["step"], r["fewshot_top1"]] for r in rows if r.get("split") == "val" and "fewshot_top1" in r]


def arm_seed_results(folder: str) -> dict:
    """One arm and seed: its probes' results, its few-shot curve and wall time."""
    attentive = read_results(os.path.join(folder, "probe_attentive"))
    knn = read_results(os.path.join(folder, "probe_knn"))
    linear = read_results(os.path.join(folder, "probe_linear"))
    times = read_json(os.path.join(folder, "arm.json"), "the arm's record")
    return {
        "top1": attentive["top1"],
        "selected": attentive["selected"],
        "knn_top1": knn["top1"],
        "knn_selected": knn["selected"],
        "linear_top1": linear["top1"],
        "linear_selected": linear["selected"],
        "per_block_top1": best_per_block(attentive["per_head"]),
        "knn_per_block_top1": best_per_block(knn["per_head"]),
        "fewshot_by_step": fewshot_by_step(folder),
        "per_aspect_ratio_bin": attentive["per_aspect_ratio_bin"],
        "per_token_budget": attentive.get("per_token_budget", {}),
        "num_examples": attentive["num_examples"],
        "wall_seconds": sum(times.values()),
    }


def _mean_bins(runs: list[dict]) -> list[dict]:
    bins = []
    for i, b in enumerate(runs[0]["per_aspect_ratio_bin"]):
        values = [
            r["per_aspect_ratio_bin"][i]["top1"]
            for r in runs
            if r["per_aspect_ratio_bin"][i]["top1"] is not None
        ]
        bins.append(
            {"bin": b["bin"], "count": b["count"], "top1": float(np.mean(values)) if values else None}
        )
    return bins


def aggregate(runs: dict[int, dict]) -> dict:
    """An arm over seeds: means, {metric: {min, max, std}}, and the per-seed results."""
    seeds = list(runs.values())
    out = {m: float(np.mean([r[m] for r in seeds])) for m in (*METRICS, "wall_seconds")}
    blocks = seeds[0]["per_block_top1"]
    out["per_block_top1"] = {b: float(np.mean([r["per_block_top1"][b] for r in seeds])) for b in blocks}
    out["per_aspect_ratio_bin"] = _mean_bins(seeds)
    out["per_token_budget"] = {
        b: {
            "top1": float(np.mean([r["per_token_budget"][b]["top1"] for r in seeds])),
            "per_aspect_ratio_bin": _mean_bins([r["per_token_budget"][b] for r in seeds]),
        }
        for b in seeds[0]["per_token_budget"]
    }
    steps = [dict(map(tuple, r["fewshot_by_step"])) for r in seeds]
    common = sorted(set.intersection(*(set(s) for s in steps))) if steps else []
    out["fewshot_by_step"] = [[step, float(np.mean([s[step] for s in steps]))] for step in common]
    out["spread"] = {
        m: {
            "min": min(r[m] for r in seeds),
            "max": max(r[m] for r in seeds),
            "std": float(np.std([r[m] for r in seeds])),
        }
        for m in METRICS
    }
    out["seeds"] = {str(s): r for s, r in runs.items()}
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _range(arm: dict, metric: str) -> str:
    s = arm["spread"][metric]
    return f"{_pct(arm[metric])} ({_pct(s['min'])}-{_pct(s['max'])})"


def _steps(plan: dict) -> str:
    """'N steps', or the steps of each seed where re-planning changed them."""
    by_seed = plan.get("steps_by_seed", {})
    if len(set(by_seed.values()) | {plan["steps"]}) == 1:
        return f"{plan['steps']} steps"
    return "steps " + ", ".join(f"{steps} (seed {seed})" for seed, steps in by_seed.items()) + " (re-planned)"


def _k(selected: dict) -> str:
    return f", k {selected['k']}" if "k" in selected else ""


def _finite(obj):
    """obj with infinite floats (open aspect-ratio bin edges) as None, for strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and math.isinf(obj) else obj


def _plot_blocks(arms: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, arm in arms.items():
        blocks = list(arm["per_block_top1"])
        ax.plot(range(len(blocks)), [100 * arm["per_block_top1"][b] for b in blocks], marker="o", label=name)
    ax.set_xticks(range(len(blocks)), [b.replace("_", " ") for b in blocks])
    ax.set_xlabel("features: backbone block (attentive probe, best lr on minival)")
    ax.set_ylabel("validation top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_fewshot(arms: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, arm in arms.items():
        if arm["fewshot_by_step"]:
            steps, values = zip(*arm["fewshot_by_step"], strict=True)
            ax.plot(steps, [100 * v for v in values], marker="o", label=name)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("few-shot top-1 (%, eval.fewshot.split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(workdir: str, arm_names: tuple[str, ...], seeds: list[int], meta: dict) -> dict:
    """Reads every arm's probes, writes DIR/study.json, DIR/report.md and two plots; returns the study."""
    arms = {
        a: aggregate({s: arm_seed_results(os.path.join(workdir, f"{a}_s{s}")) for s in seeds})
        for a in arm_names
    }
    gaps = {
        f"{a}_minus_random_init": {m: arms[a][m] - arms["random_init"][m] for m in METRICS}
        for a in arm_names
        if a != "random_init"
    }
    study = {**meta, "seeds": seeds, "arms": arms, "gaps": gaps}
    text = json.dumps(_finite(study), indent=2, allow_nan=False)
    atomic_write(os.path.join(workdir, "study.json"), text + "\n")
    _plot_blocks(arms, os.path.join(workdir, "accuracy_by_block.png"))
    if any(arm["fewshot_by_step"] for arm in arms.values()):
        _plot_fewshot(arms, os.path.join(workdir, "fewshot_by_step.png"))
    plot_accuracy_by_bin(
        {a: {"top1": arms[a]["top1"], "per_aspect_ratio_bin": arms[a]["per_aspect_ratio_bin"]} for a in arms},
        os.path.join(workdir, "accuracy_by_aspect_ratio.png"),
        "Attentive probe top-1 by aspect ratio (mean over seeds)",
    )
    atomic_write(os.path.join(workdir, "report.md"), _markdown(study))
    return study


def _markdown(study: dict) -> str:
    arms, seeds = study["arms"], study["seeds"]
    plan = study["plan"]
    lines = [
        "# naraim study",
        "",
        f"Data: `{study['data']}`. Date: {study['date']}. Seeds: {', '.join(map(str, seeds))}. "
        f"Pre-training: {_steps(plan)} per arm ({plan['chosen_by']}).",
        "",
        "Commands:",
        "",
        "```bash",
        *study["commands"],
        "```",
        "",
        "Validation top-1 (%), mean over seeds (min-max). Attentive and linear: the head selected on a "
        "minival split carved from the training split; kNN: the block selected on minival.",
        "",
        "| arm | attentive top-1 | kNN top-1 | linear top-1 | wall time (s, all seeds) |",
        "|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        row = [_range(arm, m) for m in METRICS]
        lines.append(f"| {name} | {' | '.join(row)} | {arm['wall_seconds'] * len(seeds):.0f} |")
    lines += ["", "Gaps to the random-init control (points, mean over seeds):", ""]
    for name, gap in study["gaps"].items():
        lines.append(f"- {name}: " + ", ".join(f"{m} {100 * v:+.1f}" for m, v in gap.items()))
    blocks = list(next(iter(arms.values()))["per_block_top1"])
    lines += ["", "Attentive top-1 (%) per block (best lr per block on minival), mean over seeds:", ""]
    lines += ["| arm | " + " | ".join(blocks) + " |", "|---" * (len(blocks) + 1) + "|"]
    for name, arm in arms.items():
        lines.append(f"| {name} | " + " | ".join(_pct(arm["per_block_top1"][b]) for b in blocks) + " |")
    curves = {name: dict(map(tuple, arm["fewshot_by_step"])) for name, arm in arms.items()}
    steps = sorted({step for curve in curves.values() for step in curve})
    if steps:
        lines += ["", "Few-shot top-1 (%) during pre-training (eval.fewshot), mean over seeds, by step:", ""]
        lines += ["| arm | " + " | ".join(map(str, steps)) + " |", "|---" * (len(steps) + 1) + "|"]
        for name, curve in curves.items():
            lines.append(f"| {name} | " + " | ".join(_pct(curve.get(step)) for step in steps) + " |")
        lines += ["", "![few-shot top-1 by step](fewshot_by_step.png)"]
    bins = next(iter(arms.values()))["per_aspect_ratio_bin"]
    lines += ["", "Attentive top-1 (%) per aspect-ratio bin (width/height of the source image):", ""]
    lines += ["| arm | " + " | ".join(f"{bin_label(*b['bin'])} (n={b['count']})" for b in bins) + " |"]
    lines += ["|---" * (len(bins) + 1) + "|"]
    for name, arm in arms.items():
        lines.append(f"| {name} | " + " | ".join(_pct(b["top1"]) for b in arm["per_aspect_ratio_bin"]) + " |")
    budgets = {name: arm["per_token_budget"] for name, arm in arms.items() if arm["per_token_budget"]}
    if budgets:
        lines += [
            "",
            "Attentive top-1 (%) with every validation image sized to a token budget, by aspect-ratio ",
        ]
        lines[-1] += "bin, mean over seeds (the selected head; probe.eval_token_budgets):"
        lines += ["", "| arm | budget | all | " + " | ".join(bin_label(*b["bin"]) for b in bins) + " |"]
        lines += ["|---" * (len(bins) + 3) + "|"]
        for name, per_budget in budgets.items():
            for budget, r in per_budget.items():
                cells = " | ".join(_pct(b["top1"]) for b in r["per_aspect_ratio_bin"])
                lines.append(f"| {name} | {budget} | {_pct(r['top1'])} | {cells} |")
    lines += [
        "",
        "Per seed:",
        "",
        "| arm | seed | attentive | selected | kNN | selected | linear |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        for seed, r in arm["seeds"].items():
            sel, ksel = r["selected"], r["knn_selected"]
            lines.append(
                f"| {name} | {seed} | {_pct(r['top1'])} | block {sel['features']}, lr {sel['lr']:g} | "
                f"{_pct(r['knn_top1'])} | block {ksel['features']}{_k(ksel)} | {_pct(r['linear_top1'])} |"
            )
    lines += [
        "",
        "![top-1 by block](accuracy_by_block.png)",
        "",
        "![top-1 by aspect ratio](accuracy_by_aspect_ratio.png)",
        "",
    ]
    return "\n".join(lines)
