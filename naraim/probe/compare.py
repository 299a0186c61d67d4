"""Side-by-side table of several probe runs' results (overall and per aspect-ratio bin)."""

import os

from naraim.errors import UserError
from naraim.probe.plots import bin_label
from naraim.probe.results import read_results


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
