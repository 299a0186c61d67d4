"""Import released weights as a naraim run: `python scripts/import_weights.py --format aim_v1
--checkpoint FILE --variant 600m --out RUN`, or `--format timm --checkpoint DIR --out RUN`.

aim_v1: Apple's AIMv1 (ml-aim's torch checkpoints; --variant 600m, 1b, 3b or 7b), with the released probe
head where the checkpoint has one (RUN/probe_head.safetensors, which configs/probe.py:released evaluates).
timm: a timm VisionTransformer (or the export's Eva) in the local-dir / Hugging Face layout, DIR holding
config.json and model.safetensors (or pytorch_model.bin), as scripts/export.py writes it; what naraim's
ViT cannot reproduce (a class token, registers, layer scale, ...) ends with one line.
RUN gets config.json (the architecture, a square data geometry at --image_size) and the backbone as
checkpoint 0, so load_backbone(RUN) and probe.py --config.init_from=RUN read it (docs/interop.md).
A .safetensors file is read with safetensors' numpy API; with torch installed, a .pth/.pt/.bin only with
torch.load(..., weights_only=True): nothing is unpickled.
"""

import json
import os

import numpy as np
from safetensors.numpy import load_file

from naraim.cli import ArgumentParser, run_main
from naraim.errors import UserError
from naraim.infra.checkpoint import CHECKPOINT_DIR, write_config, write_params
from naraim.interop import aim_v1, imported, timm_import
from naraim.model.sizes import get_size


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """{name: float32 array} of a .safetensors file, or of a torch state dict read with weights_only."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        return load_file(path)
    try:
        import torch  # optional: only .pth/.pt files need it
    except ImportError:
        raise UserError(f"{path} is not .safetensors and torch is not installed to read it") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # anything torch's safe loader refuses
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} does not load with torch.load(weights_only=True): {first}") from None
    state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
    return {
        k: v.float().numpy()
        for k, v in state.items()
        if hasattr(v, "is_floating_point") and v.is_floating_point()
    }


def read_timm(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, state dict) of a timm model folder (or of its weights file, config.json beside it)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(
            f"{config_path} does not exist: --format timm reads a folder in timm's local-dir layout"
        )
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{config_path} is not readable JSON: {e}") from None
    weights = path
    if os.path.isdir(path):
        names = [
            n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(path, n))
        ]
        if not names:
            raise UserError(f"{path} has neither model.safetensors nor pytorch_model.bin")
        weights = os.path.join(path, names[0])
    return config, read_checkpoint(weights)


def import_timm(path: str, out: str, image_size: int | None) -> str:
    """Writes the timm model at `path` as the run `out`; returns what it imported, in words."""
    config, state = read_timm(path)
    model, (rows, cols) = timm_import.import_config(config, state)
    model["attention"] = "bidirectional"  # how timm's ViTs were trained and compute their features
    params = timm_import.import_params(state, model)
    size = image_size or max(rows, cols) * get_size(model["variant"])["patch"]
    write_config(out, imported.run_config(model, size))
    write_params(os.path.join(out, CHECKPOINT_DIR), 0, {"backbone": params})
    return f"{config.get('architecture', 'timm')} ({model['variant']}, {model['posemb']} on {rows}x{cols})"


def import_aim_v1(path: str, variant: str, out: str, image_size: int | None) -> str:
    """Writes the AIMv1 checkpoint at `path` as the run `out`; returns what it imported, in words."""
    variant = aim_v1.VARIANTS.get(variant, variant)
    state = read_checkpoint(path)
    params = aim_v1.backbone_params(state, variant)
    write_config(out, imported.run_config(aim_v1.model_overrides(variant), image_size or 224))
    write_params(os.path.join(out, CHECKPOINT_DIR), 0, {"backbone": params})
    head = aim_v1.probe_head(state, variant)
    if head is not None:
        aim_v1.save_head(out, head)
    return variant + (", the released probe head" if head is not None else "")


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=["aim_v1", "timm"], help="the checkpoint's family")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="aim_v1: a .safetensors (or, with torch, .pth) file; timm: a folder",
    )
    parser.add_argument("--variant", default="", help="aim_v1: 600m | 1b | 3b | 7b")
    parser.add_argument("--out", required=True, help="the naraim run folder to write (must not exist)")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="the square image side the run records (default: aim_v1 224; timm its input size)",
    )
    args = parser.parse_args()
    if os.path.exists(args.out):
        raise UserError(f"{args.out} exists: pick a new --out (an import never overwrites a run)")
    if args.format == "aim_v1":
        if not args.variant:
            raise UserError("--format aim_v1 needs --variant (600m | 1b | 3b | 7b)")
        what = import_aim_v1(args.checkpoint, args.variant, args.out, args.image_size)
    else:
        if args.variant:
            raise UserError(
                "--variant is for --format aim_v1: a timm checkpoint's config.json names its size"
            )
        what = import_timm(args.checkpoint, args.out, args.image_size)
    print(f"imported {args.checkpoint} as {what} into {args.out} (checkpoint 0)")


if __name__ == "__main__":
    run_main(main)
