"""timm checks of naraim's exports, run by hand (docs/interop.md): two environments, naraim's and one with
torch + timm (it does not import naraim there).

  python scripts/timm_check.py reference DIR --workdir RUN    # naraim's: DIR/naraim_features.npz
  TORCH_PY scripts/timm_check.py compare DIR                  # timm loads DIR, compares the features
  python scripts/timm_check.py cases FOLDER                   # naraim's: one export per case of CASES
  TORCH_PY scripts/timm_check.py check FOLDER                 # timm's features and layout of every case
  TORCH_PY scripts/timm_check.py manifest FOLDER OUT          # records tests/fixtures/timm_manifest.json

reference writes seeded uint8 images of the export's input size and naraim's bidirectional features of
them (load_backbone); compare loads DIR with timm.create_model('local-dir:DIR', pretrained=True), feeds the
same images normalised as config.json says and prints the largest absolute difference of forward_features
(exit status 1 above --tolerance). cases writes one export per case of CASES (random weights) with
naraim's features; check (CI's timm step, .ci/run) compares timm's features of every case with naraim's
and the layout timm builds with tests/fixtures/timm_manifest.json; manifest records, per case, every
state_dict key and shape timm builds from the export's config.json, with timm's version, which
tests/test_interop.py checks naraim's exports still write.
"""

import argparse
import json
import os
import sys

import numpy as np

# name -> (model.* overrides, export grid): every switch the export maps
CASES = {
    "sincos_bias_tanh": ({"variant": "Pico/8"}, (4, 4)),
    "learned_nobias_exact": (
        {"variant": "Pico/8", "posemb": "learned", "use_bias": False, "gelu": "exact"},
        (3, 5),
    ),
    "fractional": ({"variant": "Pico/8", "posemb": "fractional"}, (4, 4)),
    "none_unit": ({"variant": "Pico/8", "posemb": "none", "pixel_scale": "unit"}, (2, 6)),
    "learned_2d_inception": (
        {"variant": "Pico/8", "posemb": "learned_2d", "posemb_grid": "3x4", "pixel_scale": "inception"},
        (3, 4),
    ),
    "patch_norm": ({"variant": "Pico/8", "patch_norm": True, "use_bias": False, "gelu": "exact"}, (4, 4)),
    "rope_2d": ({"variant": "Pico/8", "posemb": "rope_2d", "use_bias": False, "gelu": "exact"}, (4, 4)),
    "rope_2d_wide": ({"variant": "Pico/8", "posemb": "rope_2d", "use_bias": False, "gelu": "exact"}, (3, 5)),
}


REFERENCE = "naraim_features.npz"
MANIFEST = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "timm_manifest.json"
)


def images_for(folder: str, count: int = 4) -> np.ndarray:
    """Seeded uint8 images [count, H, W, 3] of the export's input size."""
    size = json.load(open(os.path.join(folder, "config.json")))["pretrained_cfg"]["input_size"]
    return np.random.default_rng(0).integers(0, 256, (count, size[1], size[2], 3)).astype(np.uint8)


def reference(folder: str, workdir: str) -> None:
    from naraim import load_backbone  # naraim's environment only

    images = images_for(folder)
    features, _ = load_backbone(workdir)(images)
    np.savez(os.path.join(folder, REFERENCE), images=images, features=np.asarray(features))
    print(f"wrote {os.path.join(folder, REFERENCE)}")


def timm_difference(folder: str) -> tuple[float, list[int]]:
    """(largest |timm - naraim| of the features of DIR/naraim_features.npz's images, the features' shape),
    timm loading DIR through local-dir."""
    import timm  # torch's environment only
    import torch

    saved = np.load(os.path.join(folder, REFERENCE))
    pretrained = json.load(open(os.path.join(folder, "config.json")))["pretrained_cfg"]
    model = timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=True).eval()
    x = torch.from_numpy(saved["images"]).float().div(255).permute(0, 3, 1, 2)
    mean, std = (torch.tensor(pretrained[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        features = model.forward_features((x - mean) / std).numpy()
    return float(np.max(np.abs(features - saved["features"]))), list(features.shape)


def compare(folder: str, tolerance: float) -> int:
    import timm  # torch's environment only

    diff, shape = timm_difference(folder)
    print(f"timm {timm.__version__}: forward_features {shape}, max |timm - naraim| = {diff:.2e}")
    return 0 if diff <= tolerance else 1


def check(root: str, manifest_path: str, tolerance: float) -> int:
    """Every case of `cases`: timm's features against naraim's, and timm's layout against the manifest."""
    import timm  # torch's environment only

    manifest = json.load(open(manifest_path))
    failures = 0
    for name in CASES:
        folder = os.path.join(root, name)
        diff, _ = timm_difference(folder)
        layout = _layout(folder)
        same = manifest["cases"].get(name) == layout and manifest["timm"] == timm.__version__
        ok = diff <= tolerance and same
        failures += not ok
        print(f"{name}: max |timm - naraim| = {diff:.2e}, layout {'as' if same else 'NOT as'} recorded")
    print(f"timm {timm.__version__}: {len(CASES) - failures} of {len(CASES)} cases as naraim computes them")
    return 1 if failures else 0


def export_cases(root: str) -> None:
    import jax  # naraim's environment only
    from safetensors.numpy import save_file

    from naraim.data.tokens import to_tokens
    from naraim.interop.timm import timm_config, to_timm
    from naraim.model.model import dummy_batch
    from naraim.model.vit import make_backbone
    from naraim.train.config import default_pretrain_config

    for name, (model, (rows, cols)) in CASES.items():
        cfg = default_pretrain_config()
        cfg.model.update(model)
        cfg.data.update(image_size=32, max_tokens=16)
        batch = dummy_batch(cfg, 1)
        vit = make_backbone(cfg.model)
        params = vit.init(jax.random.key(0), *batch.values())["params"]
        params = jax.tree.map(lambda x: x + 0.2 * np.random.default_rng(1).standard_normal(x.shape), params)
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        save_file(to_timm(params, cfg.model, rows, cols), os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(timm_config(cfg.model, rows, cols), f, indent=2)
        images = images_for(folder)
        tokens = [to_tokens(image, patch_size=8, max_tokens=rows * cols) for image in images]
        inputs = {k: np.stack([t[k] for t in tokens]) for k in tokens[0]}
        features, _ = vit.apply({"params": params}, *inputs.values(), attention="bidirectional")
        np.savez(os.path.join(folder, REFERENCE), images=images, features=np.asarray(features))
    print(f"wrote {len(CASES)} exports and naraim's features under {root}")


def _layout(folder: str) -> dict:
    """{'model_args', 'state': {key: shape}} of the model timm builds from an export's config.json."""
    import timm  # torch + timm's environment only

    config = json.load(open(os.path.join(folder, "config.json")))
    # built as local-dir builds it: create_model(name, **args) would drop the None-valued args
    model = timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=False)
    state = {key: list(value.shape) for key, value in model.state_dict().items()}
    return json.loads(json.dumps({"model_args": config["model_args"], "state": state}))


def record(root: str, out: str) -> None:
    import timm  # torch + timm's environment only

    manifest = {"timm": timm.__version__, "cases": {}}
    for name in CASES:
        manifest["cases"][name] = _layout(os.path.join(root, name))
    with open(out, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(f"recorded timm {timm.__version__}'s layout of {len(CASES)} cases in {out}")


class ArgumentParser(argparse.ArgumentParser):
    """A bad argument is one line and exit status 1 (this script cannot import naraim.cli in timm's
    environment)."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    ref = commands.add_parser("reference", help="naraim's environment: DIR/naraim_features.npz")
    ref.add_argument("folder", help="the export folder (scripts/export.py --out)")
    ref.add_argument("--workdir", required=True, help="the run that was exported")
    cmp = commands.add_parser("compare", help="torch + timm's environment: timm's features against naraim's")
    cmp.add_argument("folder", help="the export folder, with naraim_features.npz")
    cmp.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference allowed")
    cases = commands.add_parser("cases", help="naraim's environment: one export per case")
    cases.add_argument("folder", help="where to write the exports")
    checks = commands.add_parser("check", help="torch + timm's environment: every case against naraim")
    checks.add_argument("folder", help="the exports of 'cases'")
    checks.add_argument("--manifest", default=MANIFEST, help="the recorded layout to compare with")
    checks.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference allowed")
    manifest = commands.add_parser("manifest", help="torch + timm's environment: record the manifest")
    manifest.add_argument("folder", help="the exports of 'cases'")
    manifest.add_argument("out", help="the manifest to write (tests/fixtures/timm_manifest.json)")
    args = parser.parse_args()
    if args.command == "reference":
        reference(args.folder, args.workdir)
    elif args.command == "compare":
        sys.exit(compare(args.folder, args.tolerance))
    elif args.command == "cases":
        export_cases(args.folder)
    elif args.command == "check":
        sys.exit(check(args.folder, args.manifest, args.tolerance))
    else:
        record(args.folder, args.out)


if __name__ == "__main__":
    main()
