"""ViT encoder: uint8 patches -> patch + position embedding -> pre-LN blocks -> final LayerNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model import posemb
from naraim.model.attention import SelfAttention, attention_mask
from naraim.model.config import remat_policy, resolve_attention_impl, resolve_model_config
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

    heads: int
    mlp_dim: int
    dtype: str = "float32"
    attention_impl: str | None = None
    use_bias: bool = True
    gelu: str = "tanh"
    norm_eps: float = 1e-6
    weight_init: str = "lecun"
    drop_path: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, rope_angles: jax.Array | None):
        """x [B,N,D], mask bool [B,1,N,N], rope_angles [B,N,Dh/2] or None -> (x, x).

        drop_path: stochastic depth (when not deterministic, each branch is dropped per example with this
        probability and scaled by 1/(1 - p) otherwise; needs the 'dropout' rng)."""
        dense = dict(use_bias=self.use_bias, weight_init=self.weight_init)
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=self.deterministic)
        y = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm1")(x)
        attention = SelfAttention(self.heads, self.dtype, self.attention_impl, **dense, name="attn")
        x = x + drop(attention(y, mask, rope_angles)).astype(x.dtype)
        y = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm2")(x)
        x = x + drop(MlpBlock(self.mlp_dim, self.dtype, gelu=self.gelu, **dense, name="mlp")(y)).astype(
            x.dtype
        )
        return x, x


class ViT(nn.Module):
    """Vision Transformer over padded token sequences; see __call__ for shapes.

    Parameters are float32; activations use `dtype`, the residual stream `residual_dtype` ('' = `dtype`).
    With `scan` the blocks' parameters are stacked under 'blocks' (leading axis = depth) instead of
    'block_0'..'block_{L-1}'. pixel_scale, patch_norm (a LayerNorm after the patch embedding), use_bias
    (biases of the blocks' attention and MLP), gelu, norm_eps and weight_init: see naraim.model.config.
    """

    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int
    posemb: str = "absolute_sincos_2d"
    attention: str = "prefix_causal"
    dtype: str = "float32"
    remat: str = ""
    scan: bool = False
    rope_base: float = 10000.0
    learned_posemb_max_side: int = 256
    attention_impl: str | None = None
    sos_token: bool = False
    residual_dtype: str = ""
    pixel_scale: str = "imagenet"
    patch_norm: bool = False
    use_bias: bool = True
    gelu: str = "tanh"
    norm_eps: float = 1e-6
    weight_init: str = "lecun"
    fractional_scale: str = "count"
    drop_path: float = 0.0

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
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Encodes a batch.

        patches uint8 [B,N,P*P*3], coords int32 [B,N,2], grid int32 [B,2], length int32 [B].
        attention: mode override (None -> self.attention). prefix_length int32 [B] for 'prefix_causal'
          (None = empty prefix, i.e. causal).
        prepend_sos: the sequence becomes [SOS, x_0, .., x_{N-2}] (the last token is dropped so N stays
          fixed; rotary SOS position = (0, 0), no additive position on SOS). Needs sos_token, which creates
          the learned SOS vector 'sos' [D] whether or not this call prepends it (same params either way).
        train: stochastic depth on (drop_path > 0: rates rise linearly from 0 at the first block to
          drop_path at the last; needs the 'dropout' rng); False: deterministic.
        Returns (x [B,N,D] final-LN output, intermediates) with intermediates 'embed' (after patch + position
        embedding), 'block_0'..'block_{L-1}' (block outputs, pre final LN) and 'encoded' (= x), all [B,N,D]
        in the residual dtype.
        """
        if patches.shape[-1] != self.patch * self.patch * 3:
            raise ValueError(
                f"patches have {patches.shape[-1]} values, a {self.patch}x{self.patch} RGB patch has "
                f"{self.patch * self.patch * 3}: the data's patch size must match model.variant"
            )
        mode = attention or self.attention
        num_tokens = patches.shape[1]
        residual = jnp.dtype(self.residual_dtype or self.dtype)
        pixels = scale_pixels(patches, self.pixel_scale)
        x = nn.Dense(
            self.width, dtype=self.dtype, kernel_init=dense_kernel_init(self.weight_init), name="embed"
        )(pixels)
        if self.patch_norm:
            x = LayerNorm(epsilon=self.norm_eps, dtype=residual, name="embed_norm")(x)
        x = x.astype(residual)
        if self.posemb == "absolute_sincos_2d":
            x = x + posemb.absolute_sincos_2d(coords, self.width).astype(x.dtype)
        elif self.posemb == "fractional":
            fractional = posemb.Fractional(self.width, self.fractional_scale, name="posemb")
            x = x + fractional(coords, grid).astype(x.dtype)
        elif self.posemb == "learned":
            x = x + posemb.Learned(self.width, self.learned_posemb_max_side, name="posemb")(coords).astype(
                x.dtype
            )
        elif self.posemb not in posemb.POSEMBS:
            raise ValueError(f"unknown posemb {self.posemb!r}; expected one of {posemb.POSEMBS}")

        head_dim = self.width // self.heads
        angles = None
        if self.posemb == "rope_1d":
            angles = posemb.rope_angles_1d(coords, grid, head_dim, self.rope_base)
        elif self.posemb == "rope_2d":
            angles = posemb.rope_angles_2d(coords, head_dim, self.rope_base)

        if prepend_sos and not self.sos_token:
            raise ValueError("prepend_sos needs a ViT built with sos_token=True")
        if self.sos_token:
            sos = self.param("sos", nn.initializers.normal(0.02), (self.width,))
        if prepend_sos:
            sos = jnp.broadcast_to(sos.astype(x.dtype), (x.shape[0], 1, self.width))
            x = jnp.concatenate([sos, x[:, :-1]], axis=1)
            if angles is not None:
                angles = jnp.concatenate([jnp.zeros_like(angles[:, :1]), angles[:, :-1]], axis=1)

        mask = attention_mask(length, num_tokens, mode, prefix_length)
        intermediates = {"embed": x}
        block_args = (self.heads, self.mlp_dim, self.dtype, self.attention_impl)
        block_kwargs = dict(
            use_bias=self.use_bias, gelu=self.gelu, norm_eps=self.norm_eps, weight_init=self.weight_init
        )
        block_cls = Block
        if self.remat:
            block_cls = nn.remat(Block, policy=remat_policy(self.remat), prevent_cse=not self.scan)
        if self.drop_path and self.scan:
            raise ValueError("drop_path needs one module per block: use scan=False")
        if self.scan:
            blocks = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=self.depth,
            )(*block_args, **block_kwargs, name="blocks")
            x, stacked = blocks(x, mask, angles)
            for i in range(self.depth):
                intermediates[f"block_{i}"] = stacked[i]
        else:
            for i in range(self.depth):
                rate = self.drop_path * i / max(self.depth - 1, 1)
                block = block_cls(
                    *block_args, **block_kwargs, drop_path=rate, deterministic=not train, name=f"block_{i}"
                )
                x, _ = block(x, mask, angles)
                intermediates[f"block_{i}"] = x
        x = LayerNorm(epsilon=self.norm_eps, dtype=residual, name="encoder_norm")(x)
        intermediates["encoded"] = x
        return x, intermediates


def make_backbone(model_cfg) -> ViT:
    """Builds the ViT described by model_cfg (model.* keys; missing keys take their defaults)."""
    cfg = resolve_model_config(model_cfg)
    size = get_size(cfg.variant)
    return ViT(
        width=size["width"],
        depth=size["depth"],
        heads=size["heads"],
        mlp_dim=size["mlp_dim"],
        patch=size["patch"],
        posemb=cfg.posemb,
        attention=cfg.attention,
        dtype=cfg.dtype,
        remat=cfg.remat,
        scan=cfg.scan,
        rope_base=float(cfg.rope_base),
        learned_posemb_max_side=cfg.learned_posemb_max_side,
        attention_impl=resolve_attention_impl(cfg.attention_impl, cfg.dtype, size["width"] // size["heads"]),
        sos_token=bool(cfg.sos_token),
        residual_dtype=cfg.residual_dtype,
        pixel_scale=cfg.pixel_scale,
        patch_norm=bool(cfg.patch_norm),
        use_bias=bool(cfg.use_bias),
        gelu=cfg.gelu,
        norm_eps=float(cfg.norm_eps),
        weight_init=cfg.weight_init,
        fractional_scale=cfg.fractional_scale,
        drop_path=float(cfg.drop_path),
    )
