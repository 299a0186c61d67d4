"""Where an example's CPU time goes: reading, decoding, transforms and tokenisation, timed stage by stage in
this process (scripts/benchmark_input.py reports the shares)."""

import time

import ml_collections
import numpy as np
from PIL import Image

from naraim.data.decode import decode_image, upscale_to_patch
from naraim.data.pipeline import make_loader
from naraim.data.tokens import to_tokens
from naraim.data.transforms import apply_transforms

STAGES = ("read", "decode", "transforms", "tokens")


def stage_seconds(
    data_cfg: ml_collections.ConfigDict, patch_size: int, num_examples: int
) -> dict[str, float]:
    """CPU seconds per example of each stage (STAGES) over the first `num_examples` training examples; bad
    examples are left out."""
    loader = make_loader(data_cfg, data_cfg.train_split, data_cfg.transforms, patch_size, 0, training=True)
    totals, count = dict.fromkeys(STAGES, 0.0), 0
    limits = dict(patch_size=patch_size, max_tokens=loader.max_tokens)
    for i in range(min(num_examples, len(loader.source))):
        t0 = time.process_time()
        raw = loader.source[i][0]
        t1 = time.process_time()
        try:
            if isinstance(raw, np.ndarray):
                image = upscale_to_patch(Image.fromarray(raw), **limits)
            else:
                image = decode_image(raw, **limits, min_area=loader.min_area, max_pixels=loader.max_pixels)
        except Exception:  # a bad example: not part of the profile
            continue
        t2 = time.process_time()
        image = apply_transforms(image, np.random.default_rng([0, i]), loader.transforms)
        t3 = time.process_time()
        to_tokens(np.asarray(image), patch_size=patch_size, max_tokens=loader.max_tokens)
        t4 = time.process_time()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            totals[stage] += seconds
        count += 1
    return {stage: seconds / max(count, 1) for stage, seconds in totals.items()}
