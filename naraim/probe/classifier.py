"""A protocol's classifier: the pre-trained ViT backbone, the features it hands on, and a head.

Pure functions of explicit parameters, so the frozen protocols can keep the backbone's parameters outside
the trained (and optimised) state, and so features can be computed once and cached.
"""

import dataclasses

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from naraim.model.model import MODEL_INPUTS
from naraim.model.probe_head import probe_features
from naraim.model.sizes import get_size
from naraim.model.vit import ViT, make_backbone
from naraim.probe.heads import make_head


@dataclasses.dataclass(frozen=True)
class Classifier:
    """backbone (ViT) -> features [B,N,D] -> head -> logits [B,C].

    frozen: the features are wrapped in stop_gradient (attentive and linear probes).
    block / last_k: which intermediates become the features (see probe_features); block None and last_k 0
    select the final LayerNorm output ('encoded', fine-tuning).
    """

    backbone: ViT
    head: nn.Module
    attention: str
    frozen: bool
    block: int | None
    last_k: int

    def features(self, backbone_params: dict, batch: dict) -> jax.Array:
        """The head's input [B,N,D] for a batch (the batch contract's model inputs)."""
        _, inter = self.backbone.apply(
            {"params": backbone_params}, *(batch[k] for k in MODEL_INPUTS), attention=self.attention
        )
        if self.block is None and self.last_k == 0:
            feats = inter["encoded"]
        else:
            feats = probe_features(inter, self.backbone.depth, self.block, self.last_k)
        return jax.lax.stop_gradient(feats) if self.frozen else feats

    def logits(self, head_vars: dict, features: jax.Array, length: jax.Array, train: bool):
        """(logits float32 [B,C], updated head batch_stats ({} when the head has none or not training))."""
        if train and "batch_stats" in head_vars:
            logits, updates = self.head.apply(head_vars, features, length, True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return self.head.apply(head_vars, features, length, train), head_vars.get("batch_stats", {})


def make_classifier(cfg: ConfigDict, num_classes: int) -> Classifier:
    """The classifier of a resolved probe config (cfg.protocol, cfg.attention, cfg.probe/linear/finetune)."""
    size = get_size(cfg.model.variant)
    head = make_head(
        cfg.protocol,
        cfg.finetune.descriptor,
        num_classes,
        cfg.probe.num_heads or size["heads"],
        cfg.probe.use_map_mlp,
    )
    if cfg.protocol == "attentive":
        block, last_k = cfg.probe.block, cfg.probe.last_k
    elif cfg.protocol == "linear":
        block, last_k = cfg.linear.block, 1
    else:
        block, last_k = None, 0
    return Classifier(
        backbone=make_backbone(cfg.model),
        head=head,
        attention=cfg.attention,
        frozen=cfg.protocol != "finetune",
        block=block,
        last_k=last_k,
    )
