"""Downstream evaluation of a pre-trained backbone (scripts/probe.py).

    python scripts/probe.py --config configs/probe.py[:VARIANTS] --workdir runs/p --config.init_from=runs/x

`init_from` is a pre-training workdir (its newest checkpoint) or one checkpoint step dir. The backbone's
architecture (model.*) and the data recipe (data.*) are read from that run's config.json; every `data.*` and
`model.*` key below is an override that stays unset (None) unless given. VARIANTS, comma-separated:
  (none)        AIM's attentive probe: frozen backbone, bidirectional attention, BatchNorm + attention
                pooling on the mean of the last 6 blocks, 50k steps of batch 1024, 500 warmup, cosine.
  naraim        the NARAIM reference's probe (Table 1): the last block, its multi-head attention head with
                q/k/v/out biases and no BatchNorm, AdamW b2 0.98 with decay on every parameter, batch 512.
  sweep         one head per block and for the mean of the last blocks, at 3 learning rates, trained
                together; the head with the best top-1 on a minival split (10% of the training split)
                is reported, and every head's accuracy is in results.json (per_head).
  knn           weighted kNN (k = 10, 20, 100 and 200 in one pass, temperature 0.07) on the mean-pooled
                features of every block, no training; the block and k are selected on minival.
  linear        BatchNorm (no affine) on the mean-pooled features of the last block, then a linear layer.
  finetune      fine-tuning: whole network, no causal mask, last token's output, layer-wise lr decay 0.75,
                label smoothing 0.1, AdamW(0.9, 0.95), weight decay 0.05.
  darl_linear   DARL's linear evaluation (Appendix B): causal attention, BatchNorm + linear on mean-pooled
                tokens, LARS lr 0.1, label smoothing 0.1, no weight decay, cosine; add sweep's blocks to
                find the best block.
  darl_finetune DARL's fine-tuning of ViT-L for its ablations (Table 8, 50 epochs): finetune +
                RandAugment(9, 0.5), mixup 0.8, CutMix 1.0, batch 4096, 5 warm-up epochs, lr 1e-3, no drop
                path (ImageNet-1k: 312.8 steps per epoch).
  darl_finetune_long  its extended ViT-L schedule (Table 8, 90 epochs): darl_finetune with drop path 0.1.
  small         sized for configs/small.py pre-trainings on a 2-core CPU (scripts/study.py): features cached
                once (evaluation transforms), every block and the mean of the last blocks at 2 learning
                rates selected on a 10% minival split, 400 steps of batch 128; combine with linear or knn.
  released      the attentive head released with AIMv1 weights (scripts/import_weights.py keeps it), evaluated
                as it is, without training, on the mean of the last 6 blocks as AIM's tables.
  demo          sized for the demo pre-training (configs/demo.py) on a 2-core CPU: 12,000 synthetic training
                images without augmentation (features computed once and cached), every block at 2 learning
                rates selected on minival, a head with 16 heads and the MAP MLP, 3,000 steps of batch 64.
"""

from configs import common
from naraim.probe.config import default_probe_config

IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's training split (epochs -> steps)


def _naraim(c):
    c.probe.head = "naraim_ref"
    c.probe.blocks = "-1"
    c.batch_size = 512
    c.optim.b2 = 0.98
    c.optim.decay = "all"


def _linear(c):
    c.protocol = "linear"
    c.probe.blocks = "-1"
    c.optim.weight_decay = 0.0


def _darl_linear(c):
    _linear(c)
    c.attention = "causal"
    c.optim.optimizer = "lars"
    c.optim.lr = 0.1
    c.optim.b1 = 0.9  # LARS momentum
    c.optim.warmup_steps = 10 * IMAGENET_TRAIN // 16_384
    c.total_steps = 90 * IMAGENET_TRAIN // 16_384
    c.batch_size = 16_384
    c.probe.label_smoothing = 0.1


def _sweep(c):
    c.probe.blocks = "all,mean"
    c.probe.lrs = (3e-4, 1e-3, 3e-3)
    c.probe.minival_fraction = 0.1


def _knn(c):
    c.protocol = "knn"
    c.probe.blocks = "all,mean"
    c.probe.minival_fraction = 0.1
    c.train_transforms = "eval"


def _finetune(c):
    c.protocol = "finetune"
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05


def _darl_finetune(c, epochs: int = 50):
    _finetune(c)
    c.finetune.mixup_alpha = 0.8
    c.finetune.cutmix_alpha = 1.0
    c.data.transforms = ("random_resized_crop", "horizontal_flip", "rand_augment")
    c.batch_size = 4096
    c.total_steps = epochs * IMAGENET_TRAIN // c.batch_size
    c.optim.warmup_steps = 5 * IMAGENET_TRAIN // c.batch_size
    c.optim.lr = 1e-3
    c.model.drop_path = 0.0


def _darl_finetune_long(c):
    _darl_finetune(c, epochs=90)
    c.model.drop_path = 0.1


def _small(c):
    c.total_steps = 400
    c.batch_size = 128
    c.log_every = 100
    c.checkpoint_every = 0
    c.optim.warmup_steps = 40
    c.train_transforms = "eval"
    c.probe.blocks = "all,mean"
    c.probe.lrs = (1e-2, 1e-1) if c.protocol == "linear" else (3e-3, 1e-2)
    c.probe.minival_fraction = 0.1


def _demo(c):
    c.total_steps = 3_000
    c.batch_size = 64
    c.log_every = 500
    c.checkpoint_every = 0
    c.optim.warmup_steps = 100
    c.optim.lr = 1e-3 if c.protocol == "finetune" else 1e-2
    c.probe.last_k = 2
    c.probe.num_heads = 16
    c.probe.use_map_mlp = True
    c.probe.blocks = "all,mean"
    c.probe.lrs = (3e-3, 1e-2)
    c.probe.minival_fraction = 0.1
    c.train_transforms = "eval"
    c.data.synthetic.train_size = 12_000
    c.eval.max_examples = 1_000


def _released(c):
    c.probe.released_head = True
    c.total_steps = 0
    c.optim.warmup_steps = 0
    c.probe.minival_fraction = 0.0


# applied in this order, whatever order the command line names them in (a protocol before what sizes it)
VARIANTS = {
    "naraim": _naraim,
    "linear": _linear,
    "darl_linear": _darl_linear,
    "sweep": _sweep,
    "knn": _knn,
    "finetune": _finetune,
    "darl_finetune": _darl_finetune,
    "darl_finetune_long": _darl_finetune_long,
    "small": _small,
    "demo": _demo,
    "released": _released,
}


def get_config(variants: str | None = None):
    return common.apply_variants(default_probe_config(), variants or "", VARIANTS)
