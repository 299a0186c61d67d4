"""Import released weights as a naraim run: `python scripts/import_weights.py --format aim_v1
--checkpoint FILE --variant 600m --out RUN`.

aim_v1: Apple's AIMv1 (ml-aim's torch checkpoints; --variant 600m, 1b, 3b or 7b). RUN gets config.json
(AIMv1's architecture, AIM's square data geometry at --image_size) and its trunk as checkpoint 0, so
load_backbone(RUN) and probe.py --config.init_from=RUN read it (docs/interop.md), and the released
probe head where the checkpoint has one (RUN/probe_head.safetensors, which configs/probe.py:released
evaluates). FILE is a .safetensors
file (read with safetensors' numpy API) or, with torch installed, a .pth/.pt read with torch.load(...,
weights_only=True) only: nothing is unpickled.
"""

import os

import numpy as np
from safetensors.numpy import load_file

from naraim.cli import ArgumentParser, run_main
from naraim.errors import UserError
from naraim.infra.checkpoint import CHECKPOINT_DIR, write_config, write_params
from naraim.interop import aim_v1


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


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=["aim_v1"], help="the checkpoint's model family")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors (or, with torch, .pth) file")
    parser.add_argument("--variant", required=True, help="aim_v1: 600m | 1b | 3b | 7b")
    parser.add_argument("--out", required=True, help="the naraim run folder to write (must not exist)")
    parser.add_argument("--image_size", type=int, default=224, help="the square image side the run records")
    args = parser.parse_args()
    if os.path.exists(args.out):
        raise UserError(f"{args.out} exists: pick a new --out (an import never overwrites a run)")
    variant = aim_v1.VARIANTS.get(args.variant, args.variant)
    state = read_checkpoint(args.checkpoint)
    params = aim_v1.backbone_params(state, variant)
    write_config(args.out, aim_v1.run_config(variant, args.image_size))
    write_params(os.path.join(args.out, CHECKPOINT_DIR), 0, {"backbone": params})
    head = aim_v1.probe_head(state, variant)
    if head is not None:
        aim_v1.save_head(args.out, head)
    with_head = ", the released probe head" if head is not None else ""
    print(f"imported {args.checkpoint} as {variant} into {args.out} (checkpoint 0{with_head})")


if __name__ == "__main__":
    run_main(main)
