"""Complete images from a prefix with a pre-trained model and write a PNG grid (prefix, completion, original).

  python scripts/generate.py --init_from runs/x [--out completions.png] [--num_images 8]
      [--prefix_fraction 0.5] [--num_steps 50] [--seed 0] [--split validation]

MSE models predict each patch greedily; diffusion models (loss.objective='diffusion') sample each patch with
DDPM ancestral sampling over --num_steps steps. The same seed gives the same images.
"""

from naraim.cli import ArgumentParser, run_main
from naraim.generate import generate_from_run


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init_from", required=True, help="pre-training workdir or checkpoints/<step>")
    parser.add_argument("--out", default="", help="PNG path (default: INIT_FROM/completions_<step>.png)")
    parser.add_argument("--num_images", type=int, default=8, help="first images of the split to complete")
    parser.add_argument("--prefix_fraction", type=float, default=0.5, help="share of each sequence given")
    parser.add_argument("--num_steps", type=int, default=50, help="DDPM steps per patch (diffusion models)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--split", default="", help="data split (default: the run's data.val_split)")
    args = parser.parse_args()
    path = generate_from_run(
        args.init_from,
        args.out,
        num_images=args.num_images,
        prefix_fraction=args.prefix_fraction,
        num_steps=args.num_steps,
        seed=args.seed,
        split=args.split,
    )
    print(f"completions: {path}")


if __name__ == "__main__":
    run_main(main)
