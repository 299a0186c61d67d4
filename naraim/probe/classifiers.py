"""What the probe step trains: the frozen-backbone sweep of heads, and fine-tuning's whole classifier.

Both give naraim.probe.step the same interface: `heads` (the leading axes of their stacked heads: (F, L) for
a sweep, () for fine-tuning), `init` (parameters and BatchNorm statistics), `inputs` (what is computed
outside the gradient, from the frozen parameters) and `apply` (logits from the trained parameters).

Sweep: one head per (feature spec, learning rate), all trained together on one frozen-backbone forward per
batch. Head parameters, BatchNorm statistics and optimizer states are stacked [F, L, ...] and every head
starts from the same initialisation, so head (f, l) trains exactly as a single-head run with those features
and that learning rate would. The backbone's parameters are a separate, read-only argument: never
optimised, and no gradient reaches them (stop_gradient).

Classifier: the pre-trained backbone, its final LayerNorm output and a head, parameters {'backbone',
'head'} all trained.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from naraim.errors import UserError
from naraim.interop.aim_v1 import load_head
from naraim.model.model import MODEL_INPUTS
from naraim.model.sizes import get_size
from naraim.model.vit import ViT
from naraim.probe import features as F
from naraim.probe.heads import make_head


def head_vars(params: dict, batch_stats: dict) -> dict:
    """A head's flax variables ('batch_stats' only when it has BatchNorm statistics)."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def apply_head(head: nn.Module, variables: dict, x: jax.Array, length: jax.Array, train: bool):
    """(logits, updated batch_stats): the statistics update only when training a head that has them."""
    if train and "batch_stats" in variables:
        out, updates = head.apply(variables, x, length, True, mutable=["batch_stats"])
        return out, updates["batch_stats"]
    return head.apply(variables, x, length, train), variables.get("batch_stats", {})


@dataclasses.dataclass(frozen=True)
class Sweep:
    """backbone (frozen) -> block stack -> F feature specs -> F x L heads -> logits [F, L, B, C]; head (f, l)
    trains with learning rate lrs[l] (and weight decay weight_decays[l] when given).

    pooled: the stack is mean-pooled over the real tokens ([B, nb, D], for heads on pooled features such as
    the linear probe) instead of the tokens themselves ([B, nb, N, D], for the attentive head)."""

    backbone: ViT
    head: nn.Module
    attention: str
    specs: tuple[F.Spec, ...]
    lrs: tuple[float, ...]
    last_k: int
    pooled: bool = False
    weight_decays: tuple[float, ...] | None = None  # one per head of lrs (None: the optimizer's own)

    @property
    def blocks(self) -> tuple[int, ...]:
        return F.needed_blocks(self.specs, self.backbone.depth, self.last_k)

    @property
    def heads(self) -> tuple[int, int]:
        return len(self.specs), len(self.lrs)

    def block_stack(self, backbone_params: dict, batch: dict) -> jax.Array:
        """float32 [B, nb, N, D] (pooled: [B, nb, D]) of the blocks the specs read (what the feature cache
        stores)."""
        _, inter = self.backbone.apply(
            {"params": backbone_params}, *(batch[k] for k in MODEL_INPUTS), attention=self.attention
        )
        stack = F.block_stack(inter, self.blocks)
        return jax.lax.stop_gradient(F.mean_pool(stack, batch["length"]) if self.pooled else stack)

    def features(self, stack: jax.Array) -> jax.Array:
        """[F, B, N, D] from a block stack [B, nb, N, D] (pooled: [F, B, D] from [B, nb, D])."""
        return F.spec_features(stack, self.specs, self.blocks, self.backbone.depth, self.last_k)

    def inputs(self, backbone_params: dict, batch: dict, cached: bool) -> jax.Array:
        """The heads' features [F, B, ...], from the cached block stack (batch['features']) or the
        backbone."""
        return self.features(batch["features"] if cached else self.block_stack(backbone_params, batch))

    def apply(self, params: dict, batch_stats: dict, feats: jax.Array, length: jax.Array, rng, train: bool):
        """(logits float32 [F, L, B, C], updated batch_stats ({} without BatchNorm))."""

        def one(variables, x):
            return apply_head(self.head, variables, x, length, train)

        per_lr = jax.vmap(one, in_axes=(0, None))  # over L, same features
        return jax.vmap(per_lr, in_axes=(0, 0))(head_vars(params, batch_stats), feats)  # over F

    def init(self, backbone_params: dict, sample: dict, seed: int) -> tuple[dict, dict]:
        """(stacked head params, stacked batch_stats): every head from PRNGKey(seed), as a single run's."""
        feats = self.inputs(backbone_params, sample, False)[0]
        variables = self.head.init(jax.random.PRNGKey(seed), feats, sample["length"], False)

        def stacked(tree):
            return jax.tree.map(lambda x: jnp.broadcast_to(x, self.heads + x.shape), tree)

        return stacked(variables["params"]), stacked(variables.get("batch_stats", {}))


@dataclasses.dataclass(frozen=True)
class Classifier:
    """backbone (ViT) -> 'encoded' features [B,N,D] -> head -> logits [B,C]; drop_path: the backbone
    trains with its stochastic depth (model.drop_path)."""

    backbone: ViT
    head: nn.Module
    attention: str
    drop_path: bool = False
    heads = ()

    def features(self, backbone_params: dict, batch: dict, dropout_rng: jax.Array | None = None) -> jax.Array:
        """The head's input [B,N,D] for a batch (the batch contract's model inputs); with `dropout_rng` the
        backbone's stochastic depth is on."""
        encoded, _ = self.backbone.apply(
            {"params": backbone_params},
            *(batch[k] for k in MODEL_INPUTS),
            attention=self.attention,
            train=dropout_rng is not None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        return encoded

    def inputs(self, frozen: None, batch: dict, cached: bool) -> dict:
        """Nothing is frozen: the batch itself."""
        return batch

    def apply(self, params: dict, batch_stats: dict, batch: dict, length: jax.Array, rng, train: bool):
        """(logits float32 [B,C], updated head batch_stats)."""
        dropout_rng = jax.random.fold_in(rng, 1) if train and self.drop_path else None
        features = self.features(params["backbone"], batch, dropout_rng)
        return apply_head(self.head, head_vars(params["head"], batch_stats), features, length, train)

    def init(self, backbone_params: dict, sample: dict, seed: int) -> tuple[dict, dict]:
        """(params {'backbone', 'head'}, head batch_stats); `sample` is a batch of model inputs that shapes
        the head."""
        features = self.features(backbone_params, sample)
        variables = self.head.init(jax.random.PRNGKey(seed), features, sample["length"], False)
        return {"backbone": backbone_params, "head": variables["params"]}, variables.get("batch_stats", {})


def make_classifier(cfg: ConfigDict, backbone: ViT, num_classes: int) -> Classifier:
    """The fine-tuning classifier of a resolved probe config (cfg.finetune.descriptor, cfg.attention)."""
    heads = cfg.probe.num_heads or get_size(cfg.model.variant)["heads"]
    head = make_head(
        "finetune", cfg.finetune.descriptor, num_classes, heads, cfg.probe.use_map_mlp, cfg.probe.head
    )
    return Classifier(backbone, head, cfg.attention, bool(cfg.model.get("drop_path", 0.0)))


def released_head(cfg: ConfigDict, sw: Sweep, params: dict, stats: dict) -> tuple[dict, dict]:
    """The released head of init_from's run in the sweep's one-head layout [1, 1, ...]; UserError unless it
    has the shapes of the head this config builds (classes, width, heads)."""
    head = load_head(cfg.init_from.removesuffix(":best"))
    if len(sw.specs) != 1:
        raise UserError(f"probe.released_head reads one feature spec; probe.blocks={cfg.probe.blocks!r}")
    loaded = (head["params"], head.get("batch_stats", {}))
    built = (jax.tree.map(lambda x: x[0, 0], params), jax.tree.map(lambda x: x[0, 0], stats))
    shapes = jax.tree.map(lambda x: x.shape, built)
    if (
        jax.tree.structure(loaded) != jax.tree.structure(built)
        or jax.tree.map(lambda x: x.shape, loaded) != shapes
    ):
        raise UserError(
            "the released probe head does not fit the head this probe builds (its classes, width or heads "
            "differ): probe a source with the head's classes, or train a probe instead"
        )
    return tuple(jax.tree.map(lambda x: jnp.asarray(x)[None, None], tree) for tree in loaded)
