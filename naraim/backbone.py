"""A pre-trained backbone in three lines of Python:

    from naraim import load_backbone
    backbone = load_backbone("runs/x")              # or "runs/x:best", or step=N
    features, blocks = backbone(images)             # uint8 [B, H, W, 3], H and W multiples of the patch

`features` are the final-LayerNorm token outputs [B, T, D] (T = (H/P) * (W/P), raster order) and `blocks`
every block's output {'block_<i>': [B, T, D]} (before the final LayerNorm), computed with bidirectional
attention unless asked otherwise: what naraim's probes read and what an exported timm model computes.
"""

import dataclasses
import functools

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.data.tokens import to_tokens
from naraim.errors import UserError
from naraim.infra.checkpoint import restore_params
from naraim.model.sizes import get_size
from naraim.model.vit import ViT, make_backbone


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A ViT and its parameters. config: the run's config (model.* and data.*); step: the checkpoint's."""

    config: ConfigDict
    params: dict
    step: int

    @functools.cached_property
    def vit(self) -> ViT:
        return make_backbone(self.config.model)

    @property
    def patch_size(self) -> int:
        return get_size(self.config.model.variant)["patch"]

    def tokens(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The batch-contract inputs of uint8 images [B, H, W, 3] (one size for the batch)."""
        images = np.asarray(images)
        p = self.patch_size
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UserError(f"images must be uint8 [B, H, W, 3]; got {images.dtype} {list(images.shape)}")
        if images.shape[1] % p or images.shape[2] % p:
            raise UserError(f"image sides {images.shape[1:3]} must be multiples of the patch size {p}")
        n = (images.shape[1] // p) * (images.shape[2] // p)
        examples = [to_tokens(image, patch_size=p, max_tokens=n) for image in images]
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}

    def __call__(
        self, images: np.ndarray, attention: str = "bidirectional"
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(features [B, T, D], {'block_<i>': [B, T, D]}) of uint8 images [B, H, W, 3]."""
        tokens = self.tokens(images)
        return _forward(self.vit, attention)(self.params, tokens)


@functools.cache
def _forward(vit: ViT, attention: str):
    def forward(params, tokens):
        x, inter = vit.apply(
            {"params": params},
            tokens["patches"],
            tokens["coords"],
            tokens["grid"],
            tokens["length"],
            attention=attention,
        )
        return x, {k: v for k, v in inter.items() if k.startswith("block_")}

    return jax.jit(forward)


def load_backbone(workdir: str, step: int | None = None) -> Backbone:
    """The backbone of a naraim workdir (pre-trained or imported): its newest checkpoint, checkpoint `step`,
    or with workdir 'RUN:best' its best few-shot evaluation."""
    path = workdir if step is None else f"{workdir.rstrip('/')}/checkpoints/{int(step)}"
    params, cfg, found = restore_params(path)
    if "backbone" not in params:
        raise UserError(f"{path} holds no backbone parameters: pass a naraim pre-training workdir")
    return Backbone(cfg, params["backbone"], found)
