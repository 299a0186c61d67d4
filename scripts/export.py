"""Export a naraim backbone in timm's layout: `python scripts/export.py --workdir RUN --out DIR`.

Writes DIR/model.safetensors, DIR/config.json (timm's VisionTransformer, loaded with
timm.create_model('local-dir:DIR', pretrained=True)) and DIR/README.md (a Hugging Face model card: the
run's model, data and steps, and the results of probes found in RUN/probe_*/). --step picks a checkpoint
(default: the newest; RUN:best for the best few-shot evaluation) and --grid the export grid ROWSxCOLS
(default: learned_2d's own grid, else data.image_size / patch on both sides), for which the position
table is baked. An option timm's
VisionTransformer cannot carry ends with one line naming it (docs/interop.md).
"""

import glob
import json
import os

from safetensors.numpy import save_file

from naraim.backbone import load_backbone
from naraim.cli import ArgumentParser, run_main
from naraim.errors import UserError
from naraim.infra.workdir import atomic_write
from naraim.interop.timm import model_card, timm_config, to_timm
from naraim.model import posemb
from naraim.model.sizes import get_size
from naraim.probe.results import read_results


def parse_grid(text: str) -> tuple[int, int]:
    """'16x12' -> (16, 12); a bad --grid is one line."""
    try:
        return posemb.parse_grid(text)
    except ValueError as e:
        raise UserError(f"--grid={e}") from None


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a naraim pre-training workdir (or RUN:best)")
    parser.add_argument("--out", required=True, help="folder to write (created; files in it are replaced)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the newest)")
    parser.add_argument(
        "--grid",
        default="",
        help="export grid ROWSxCOLS of patches (default: learned_2d's grid, else square)",
    )
    args = parser.parse_args()
    backbone = load_backbone(args.workdir, args.step)
    cfg = backbone.config
    p = get_size(cfg.model.variant)["patch"]
    if args.grid:
        rows, cols = parse_grid(args.grid)
    elif cfg.model.get("posemb") == "learned_2d":
        rows, cols = posemb.parse_grid(cfg.model.posemb_grid)
    else:
        rows, cols = (cfg.data.image_size // p,) * 2
    state = to_timm(backbone.params, cfg.model, rows, cols)
    config = timm_config(cfg.model, rows, cols)
    os.makedirs(args.out, exist_ok=True)
    save_file(state, os.path.join(args.out, "model.safetensors"))
    atomic_write(os.path.join(args.out, "config.json"), json.dumps(config, indent=2) + "\n")
    run = args.workdir.removesuffix(":best")
    probes = {
        os.path.basename(folder): read_results(folder)
        for folder in sorted(glob.glob(os.path.join(run, "probe_*")))
        if os.path.exists(os.path.join(folder, "results.json"))
    }
    name = os.path.basename(os.path.abspath(args.out))
    card = model_card(name, cfg, backbone.step, rows, cols, probes)
    atomic_write(os.path.join(args.out, "README.md"), card)
    print(f"exported step {backbone.step} of {args.workdir} for a {rows}x{cols} grid to {args.out}")


if __name__ == "__main__":
    run_main(main)
