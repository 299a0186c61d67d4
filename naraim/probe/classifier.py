"""Fine-tuning's classifier: the pre-trained ViT backbone, its final LayerNorm output, and a head.

A pure function of explicit parameters {'backbone', 'head'}, all trained (frozen protocols use
naraim.probe.sweep instead).
"""

import dataclasses

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from naraim.model.model import MODEL_INPUTS
from naraim.model.sizes import get_size
from naraim.model.vit import ViT
from naraim.probe.heads import make_head


@dataclasses.dataclass(frozen=True)
class Classifier:
    """backbone (ViT) -> 'encoded' features [B,N,D] -> head -> logits [B,C]."""

    backbone: ViT
    head: nn.Module
    attention: str

    def features(self, backbone_params: dict, batch: dict, dropout_rng: jax.Array | None = None) -> jax.Array:
        """The head's input [B,N,D] for a batch (the batch contract's model inputs); with `dropout_rng` the
        backbone trains (its stochastic depth, model.drop_path, is on)."""
        encoded, _ = self.backbone.apply(
            {"params": backbone_params},
            *(batch[k] for k in MODEL_INPUTS),
            attention=self.attention,
            train=dropout_rng is not None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        return encoded

    def logits(self, head_vars: dict, features: jax.Array, length: jax.Array, train: bool):
        """(logits float32 [B,C], updated head batch_stats ({} when the head has none or not training))."""
        if train and "batch_stats" in head_vars:
            logits, updates = self.head.apply(head_vars, features, length, True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return self.head.apply(head_vars, features, length, train), head_vars.get("batch_stats", {})


def make_classifier(cfg: ConfigDict, backbone: ViT, num_classes: int) -> Classifier:
    """The fine-tuning classifier of a resolved probe config (cfg.finetune.descriptor, cfg.attention)."""
    heads = cfg.probe.num_heads or get_size(cfg.model.variant)["heads"]
    head = make_head(
        "finetune", cfg.finetune.descriptor, num_classes, heads, cfg.probe.use_map_mlp, cfg.probe.head
    )
    return Classifier(backbone=backbone, head=head, attention=cfg.attention)
