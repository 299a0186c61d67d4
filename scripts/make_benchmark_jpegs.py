"""Write a JPEG benchmark set that looks like ImageNet to the decoder, made from photos you have.

  python scripts/make_benchmark_jpegs.py --source ../shared/datasets/clothing-small --out data/imagenet_like \
      [--count 1000] [--seed 0]

ImageNet's training JPEGs are mostly 500 x 375 (or 375 x 500, 500 x 333, ...), some much larger (up to about
2,000 px), at about 0.58 bytes per pixel (110 KB at 500 x 375). Each output image is one source photo
(cycled), resized to a size drawn from that spread, given film-grain-like noise until its entropy matches
(about 0.55-0.7 bytes per pixel at quality 90, ImageNet's typical encoder setting), and saved as
OUT/<class>/<n>.jpg so that `folder:OUT` reads it (a few held out as the validation split). Prints the size
and bytes-per-pixel statistics.
"""

import io
import os

import numpy as np
from PIL import Image

from naraim.cli import ArgumentParser, run_main
from naraim.data.sources.folder import list_files
from naraim.errors import UserError

ASPECTS = (4 / 3, 3 / 4, 3 / 2, 2 / 3, 1.0, 16 / 9)
ASPECT_WEIGHTS = (0.55, 0.15, 0.1, 0.05, 0.1, 0.05)


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): the longer side 500 (80%), 500-1,000 (16%) or 1,000-2,000 (4%) px."""
    u = rng.random()
    longer = 500 if u < 0.8 else int(rng.uniform(500, 1000)) if u < 0.96 else int(rng.uniform(1000, 2000))
    aspect = rng.choice(ASPECTS, p=ASPECT_WEIGHTS)
    w, h = (longer, round(longer / aspect)) if aspect >= 1 else (round(longer * aspect), longer)
    return w, h


def imagenet_like(
    photo: Image.Image, size: tuple[int, int], rng: np.random.Generator, quality: int = 90
) -> bytes:
    """The photo resized to `size` with luminance grain so that the JPEG has ImageNet's bytes per pixel."""
    image = np.asarray(photo.convert("RGB").resize(size, Image.BICUBIC), np.float32)
    target = rng.uniform(0.55, 0.7)  # bytes per pixel
    data = b""
    for sigma in (2.0, 4.0, 6.0, 8.0, 11.0, 14.0, 18.0):
        grain = rng.normal(0.0, sigma, image.shape[:2])[..., None]
        out = Image.fromarray(np.clip(image + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        if len(data) / (size[0] * size[1]) >= target:
            break
    return data


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a folder of photos (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (OUT/<class>/<n>.jpg)")
    parser.add_argument("--count", type=int, default=1000, help="number of JPEGs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.path.isdir(args.source):
        raise UserError(f"--source {args.source!r} is not a folder")
    photos = [p for p in list_files(args.source)[0] if p.lower().endswith((".jpg", ".jpeg", ".png"))]
    if not photos:
        raise UserError(f"--source {args.source!r} holds no .jpg or .png photos")
    rng = np.random.default_rng(args.seed)
    sizes, nbytes = [], []
    for n in range(args.count):
        path = photos[n % len(photos)]
        size = draw_size(rng)
        data = imagenet_like(Image.open(path), size, rng)
        folder = os.path.join(args.out, os.path.basename(os.path.dirname(path)))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{n:05d}.jpg"), "wb") as f:
            f.write(data)
        sizes.append(size)
        nbytes.append(len(data))
    areas = np.array([w * h for w, h in sizes])
    print(
        f"wrote {args.count} JPEGs to {args.out}: median {int(np.median([s[0] for s in sizes]))} x "
        f"{int(np.median([s[1] for s in sizes]))} px, largest side {max(max(s) for s in sizes)} px, "
        f"{np.mean(nbytes) / 1e3:.0f} KB on average, {np.sum(nbytes) / np.sum(areas):.2f} bytes per pixel"
    )


if __name__ == "__main__":
    run_main(main)
