"""ViT encoder: uint8 patches -> patch + position embedding -> pre-LN blocks -> final LayerNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from naraim.model import posemb, segments
from naraim.model.attention import SelfAttention, attention_mask, packed_attention_mask
from naraim.model.config import model_options, remat_policy
from naraim.model.init import dense_kernel_init
from naraim.model.layernorm import LayerNorm
from naraim.model.mlp import MlpBlock
from naraim.model.pixels import scale_pixels
from naraim.model.sizes import get_size


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). Returns (x, x) so it can be scanned.

    The LayerNorms and the branches compute in `dtype`; the residual adds keep x's dtype (float32 when the
    stream is float32 under bfloat16 compute, model.residual_dtype).
    """

    options: ml_collections.FrozenConfigDict  # model_options(): the resolved model.* section
    drop_path: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, rope_angles: jax.Array | None):
        """x [B,N,D], mask bool [B,1,N,N], rope_angles [B,N,Dh/2] or None -> (x, x).

        drop_path: stochastic depth (when not deterministic, each branch is dropped per example with this
        probability and scaled by 1/(1 - p) otherwise; needs the 'dropout' rng)."""
        o, size = self.options, get_size(self.options.variant)
        dense = dict(use_bias=o.use_bias, weight_init=o.weight_init)
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=self.deterministic)
        y = LayerNorm(epsilon=o.norm_eps, dtype=o.dtype, name="norm1")(x)
        attention = SelfAttention(size["heads"], o.dtype, o.attention_impl, **dense, name="attn")
        x = x + drop(attention(y, mask, rope_angles)).astype(x.dtype)
        y = LayerNorm(epsilon=o.norm_eps, dtype=o.dtype, name="norm2")(x)
        x = x + drop(MlpBlock(size["mlp_dim"], o.dtype, gelu=o.gelu, **dense, name="mlp")(y)).astype(x.dtype)
        return x, x


class ViT(nn.Module):
    """Vision Transformer over padded token sequences; see __call__ for shapes.

    `options` (model_options(): the model.* section, every default from naraim.model.config.MODEL_OPTIONS)
    says everything: the size (`variant`), position embedding, attention, dtypes, ... Parameters are
    float32; activations use options.dtype, the residual stream options.residual_dtype ('' = dtype). With
    options.scan the blocks' parameters are stacked under 'blocks' (leading axis = depth) instead of
    'block_0'..'block_{L-1}'.
    """

    options: ml_collections.FrozenConfigDict

    @property
    def width(self) -> int:
        return get_size(self.options.variant)["width"]

    @property
    def depth(self) -> int:
        return get_size(self.options.variant)["depth"]

    @property
    def heads(self) -> int:
        return get_size(self.options.variant)["heads"]

    @property
    def patch(self) -> int:
        return get_size(self.options.variant)["patch"]

    @property
    def attention_impl(self) -> str:
        return self.options.attention_impl

    @nn.compact
    def __call__(
        self,
        patches: jax.Array,
        coords: jax.Array,
        grid: jax.Array,
        length: jax.Array,
        *,
        attention: str | None = None,
        prefix_length: jax.Array | None = None,
        prepend_sos: bool = False,
        train: bool = False,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Encodes a batch.

        patches uint8 [B,N,P*P*3], coords int32 [B,N,2], grid int32 [B,2], length int32 [B].
        attention: mode override (None -> options.attention). prefix_length int32 [B] for 'prefix_causal'
          (None = empty prefix, i.e. causal).
        prepend_sos: the sequence becomes [SOS, x_0, .., x_{N-2}] (the last token is dropped so N stays
          fixed; rotary SOS position = (0, 0), no additive position on SOS). Needs sos_token, which creates
          the learned SOS vector 'sos' [D] whether or not this call prepends it (same params either way).
        segment_ids, positions: int32 [B,N] for packed rows (naraim.model.segments); grid is then [B,M,2],
          length [B,M] and prefix_length [B,M], one per image slot, and attention, position embeddings and
          the SOS token are per image.
        train: stochastic depth on (drop_path > 0: rates rise linearly from 0 at the first block to
          drop_path at the last; needs the 'dropout' rng); False: deterministic.
        Returns (x [B,N,D] final-LN output, intermediates) with intermediates 'embed' (after patch + position
        embedding), 'block_0'..'block_{L-1}' (block outputs, pre final LN) and 'encoded' (= x), all [B,N,D]
        in the residual dtype.
        """
        o = self.options
        if patches.shape[-1] != self.patch * self.patch * 3:
            raise ValueError(
                f"patches have {patches.shape[-1]} values, a {self.patch}x{self.patch} RGB patch has "
                f"{self.patch * self.patch * 3}: the data's patch size must match model.variant"
            )
        mode = attention or o.attention
        num_tokens = patches.shape[1]
        packed = segment_ids is not None
        token_grid = segments.per_token(grid, segment_ids) if packed else grid
        residual = jnp.dtype(o.residual_dtype or o.dtype)
        pixels = scale_pixels(patches, o.pixel_scale)
        x = nn.Dense(self.width, dtype=o.dtype, kernel_init=dense_kernel_init(o.weight_init), name="embed")(
            pixels
        )
        if o.patch_norm:
            x = LayerNorm(epsilon=o.norm_eps, dtype=residual, name="embed_norm")(x)
        x = x.astype(residual)
        if o.posemb == "absolute_sincos_2d":
            x = x + posemb.absolute_sincos_2d(coords, self.width).astype(x.dtype)
        elif o.posemb == "fractional":
            fractional = posemb.Fractional(self.width, o.fractional_scale, name="posemb")
            x = x + fractional(coords, token_grid).astype(x.dtype)
        elif o.posemb == "learned":
            x = x + posemb.Learned(self.width, o.learned_posemb_max_side, name="posemb")(coords).astype(
                x.dtype
            )
        elif o.posemb == "learned_2d":
            table = posemb.Learned2D(self.width, posemb.parse_grid(o.posemb_grid), name="posemb")
            x = x + table(coords, token_grid).astype(x.dtype)
        elif o.posemb not in posemb.POSEMBS:
            raise ValueError(f"unknown posemb {o.posemb!r}; expected one of {posemb.POSEMBS}")

        head_dim = self.width // self.heads
        angles = None
        if o.posemb == "rope_1d":
            angles = posemb.rope_angles_1d(coords, token_grid, head_dim, o.rope_base)
        elif o.posemb == "rope_2d":
            angles = posemb.rope_angles_2d(coords, head_dim, o.rope_base)

        if prepend_sos and not o.sos_token:
            raise ValueError("prepend_sos needs a ViT built with sos_token=True")
        if o.sos_token:
            sos = self.param("sos", nn.initializers.normal(0.02), (self.width,))
        if prepend_sos and packed:  # every image's own SOS; its last token is dropped
            x = segments.shift_within_images(x, positions, sos.astype(x.dtype))
            if angles is not None:
                angles = segments.shift_within_images(angles, positions, jnp.zeros((), angles.dtype))
        elif prepend_sos:
            sos = jnp.broadcast_to(sos.astype(x.dtype), (x.shape[0], 1, self.width))
            x = jnp.concatenate([sos, x[:, :-1]], axis=1)
            if angles is not None:
                angles = jnp.concatenate([jnp.zeros_like(angles[:, :1]), angles[:, :-1]], axis=1)

        if packed:
            mask = packed_attention_mask(segment_ids, positions, mode, prefix_length)
        else:
            mask = attention_mask(length, num_tokens, mode, prefix_length)
        intermediates = {"embed": x}
        block_cls = Block
        if o.remat:
            block_cls = nn.remat(Block, policy=remat_policy(o.remat), prevent_cse=not o.scan)
        if o.drop_path and o.scan:
            raise ValueError("drop_path needs one module per block: use scan=False")
        if o.scan:
            blocks = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=self.depth,
            )(o, name="blocks")
            x, stacked = blocks(x, mask, angles)
            for i in range(self.depth):
                intermediates[f"block_{i}"] = stacked[i]
        else:
            for i in range(self.depth):
                rate = o.drop_path * i / max(self.depth - 1, 1)
                block = block_cls(o, drop_path=rate, deterministic=not train, name=f"block_{i}")
                x, _ = block(x, mask, angles)
                intermediates[f"block_{i}"] = x
        x = LayerNorm(epsilon=o.norm_eps, dtype=residual, name="encoder_norm")(x)
        intermediates["encoded"] = x
        return x, intermediates


def make_backbone(model_cfg) -> ViT:
    """Builds the ViT described by model_cfg (model.* keys; missing keys take their defaults)."""
    return ViT(model_options(model_cfg))
