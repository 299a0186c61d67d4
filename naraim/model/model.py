"""The pre-training model: ViT backbone + a head predicting the next patch, aligned to the targets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from naraim.data.config import token_budget
from naraim.model import segments
from naraim.model.config import HEADS, model_options
from naraim.model.denoiser import make_denoiser
from naraim.model.heads import LinearHead, MLPHead
from naraim.model.sizes import get_size, patch_size
from naraim.model.vit import make_backbone

MODEL_INPUTS = ("patches", "coords", "grid", "length")  # the batch-contract keys the model reads


def model_inputs(batch: dict) -> dict:
    """The arrays of `batch` the model reads: MODEL_INPUTS, and segment_ids / positions of packed rows."""
    keys = MODEL_INPUTS + (segments.PACKED_INPUTS if segments.is_packed(batch) else ())
    return {k: batch[k] for k in keys}


def dummy_batch(cfg: ml_collections.ConfigDict, batch_size: int) -> dict:
    """Zero inputs with the run's static shapes (length 1), for initialisation and shape inference."""
    p = patch_size(cfg.model.variant)
    n = token_budget(cfg.data, p)
    return {
        "patches": jnp.zeros((batch_size, n, p * p * 3), jnp.uint8),
        "coords": jnp.zeros((batch_size, n, 2), jnp.int32),
        "grid": jnp.ones((batch_size, 2), jnp.int32),
        "length": jnp.ones((batch_size,), jnp.int32),
    }


def make_head(cfg: ml_collections.ConfigDict) -> nn.Module:
    """Builds the pre-training head named by cfg.head. Every head is called as head(features, **head_inputs)
    with features [B,N,D] aligned to the targets and returns float32 [B,N,P*P*3]."""
    size = get_size(cfg.variant)
    out_dim = size["patch"] ** 2 * 3
    if cfg.head == "linear":
        return LinearHead(out_dim, cfg.dtype, cfg.weight_init)
    if cfg.head == "mlp":
        width = cfg.head_width or size["width"]
        return MLPHead(
            out_dim,
            cfg.head_depth,
            mlp_dim=int(cfg.head_mlp_ratio * width),
            width=cfg.head_width,
            dtype=cfg.dtype,
            use_bias=bool(cfg.use_bias),
            gelu=cfg.gelu,
            norm_eps=float(cfg.norm_eps),
            weight_init=cfg.weight_init,
        )
    if cfg.head == "denoising":
        return make_denoiser(cfg, out_dim, size["width"], size["heads"])
    raise ValueError(f"unknown head {cfg.head!r}; expected one of {HEADS}")


class Model(nn.Module):
    """Backbone (submodule 'backbone') + pre-training head (submodule 'head'); config: a FrozenConfigDict."""

    config: ml_collections.FrozenConfigDict

    def setup(self):
        self.backbone = make_backbone(self.config)
        self.head = make_head(self.config)

    def __call__(
        self,
        batch: dict,
        *,
        attention: str | None = None,
        prefix_length: jax.Array | None = None,
        head_inputs: dict | None = None,
    ) -> dict[str, jax.Array]:
        """batch: 'patches' uint8 [B,N,P*P*3], 'coords' [B,N,2], 'grid' [B,2], 'length' [B]; packed rows add
        'segment_ids' and 'positions' [B,N] with grid [B,M,2] and length [B,M] (naraim.model.segments), and
        the alignment below is then within each image (pred = 0 at each image's first token without SOS).

        Returns 'pred' float32 [B,N,P*P*3] where pred[:, j] predicts patch j: from backbone position j-1
        (pred[:, 0] = 0) or, with sos_token, from position j of [SOS, p_0, .., p_{N-2}]; 'aligned' [B,N,D],
        the features the head consumed (aligned the same way; zeros at 0 without SOS); and the backbone
        intermediates ('embed', 'block_i', 'encoded'). head_inputs: extra keyword inputs of the head.
        """
        sos = bool(self.config.sos_token)
        packed = segments.is_packed(batch)
        x, intermediates = self.backbone(
            batch["patches"],
            batch["coords"],
            batch["grid"],
            batch["length"],
            attention=attention,
            prefix_length=prefix_length,
            prepend_sos=sos,
            segment_ids=batch.get("segment_ids"),
            positions=batch.get("positions"),
        )
        if sos:
            aligned = x
        elif packed:
            aligned = segments.shift_within_images(x, batch["positions"], jnp.zeros((), x.dtype))
        else:
            aligned = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
        pred = self.head(aligned, **(head_inputs or {})).astype(jnp.float32)
        if not sos and packed:
            pred = jnp.where(segments.starts(batch["positions"])[..., None], 0.0, pred)
        elif not sos:
            pred = pred.at[:, 0].set(0.0)
        return {"pred": pred, "aligned": aligned, **intermediates}


def make_model(model_cfg) -> Model:
    """Builds the Model described by model_cfg (model.* keys; missing keys take their defaults)."""
    return Model(model_options(model_cfg))
