"""Downstream evaluation of a pre-trained backbone (scripts/probe.py).

    python scripts/probe.py --config configs/probe.py[:VARIANTS] --workdir runs/p --config.init_from=runs/x

`init_from` is a pre-training workdir (its newest checkpoint) or one checkpoint step dir. The backbone's
architecture (model.*) and the data recipe (data.*) are read from that run's config.json; every `data.*` and
`model.*` key below is an override that stays unset (None) unless given. VARIANTS, comma-separated:
  (none)     the NARAIM/AIM attentive probe: frozen backbone, bidirectional attention, mean of the last 6
             blocks, 50k steps, 500 warmup, cosine (papers/NOTES.md).
  finetune   DARL fine-tuning: whole network, no causal mask, last token's output, layer-wise lr decay 0.75,
             label smoothing 0.1, AdamW(0.9, 0.95), weight decay 0.05.
  linear     BatchNorm (no affine) on the mean-pooled features of one block, then a linear layer.
  demo       sized for the demo pre-training (configs/demo.py) on a 2-core CPU: 12,000 synthetic training
             images without augmentation (so the backbone features are computed once and cached), a probe
             head with 16 heads and the MAP MLP, 3,000 steps of batch 64, 1,000 validation images.
"""

import math

from ml_collections import ConfigDict, config_dict

from naraim.errors import UserError
from naraim.probe.config import default_data_overrides

VARIANTS = ("finetune", "linear", "demo")


def get_config(variants: str = "") -> ConfigDict:
    names = [v for v in (variants or "").split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise UserError(f"unknown config variant(s) {unknown}: use a comma-separated subset of {VARIANTS}")
    c = ConfigDict()
    c.init_from = ""
    c.protocol = "attentive"  # 'attentive' | 'finetune' | 'linear'
    c.attention = "bidirectional"  # the backbone's attention at probe / fine-tuning time: or 'causal'
    c.seed = 0
    c.total_steps = 50_000
    c.batch_size = 1024  # global
    c.log_every = 100
    c.eval_every = 0  # 0: evaluate once, at the end
    c.checkpoint_every = 0  # probe runs are short and not checkpointed
    c.aspect_ratio_bins = (0.0, 0.5, 0.75, 1.33, 2.0, math.inf)  # width/height; on a command line inf = 1e9
    # Training transforms: 'pretraining' = the pre-training run's data.transforms (NARAIM: native aspect
    # ratio + random crop + flip; AIM: RandomResizedCrop + flip), 'eval' = its data.eval_transforms.
    c.train_transforms = "pretraining"
    c.wandb = ConfigDict(dict(mode="disabled", project="naraim-probe", name=""))

    c.data = default_data_overrides()  # any data.* key; None = the pre-training run's value
    c.model = ConfigDict()  # compute settings only; the architecture always comes from the checkpoint's run
    c.model.dtype = config_dict.placeholder(str)
    c.model.remat = config_dict.placeholder(str)
    c.model.attention_impl = config_dict.placeholder(str)

    c.eval = ConfigDict()
    c.eval.split = config_dict.placeholder(str)  # None: data.val_split
    c.eval.max_examples = config_dict.placeholder(int)  # None: the whole split
    c.eval.batch_size = config_dict.placeholder(int)  # None: batch_size

    c.probe = ConfigDict()  # attentive probe (also fine-tuning's 'probe' descriptor)
    c.probe.block = config_dict.placeholder(int)  # one block's output; None: mean of the last `last_k` blocks
    c.probe.last_k = 6
    c.probe.num_heads = config_dict.placeholder(int)  # None: the backbone's number of heads
    c.probe.use_map_mlp = False
    # 'auto': cache the backbone features when the training transforms have no randomness | 'always' | 'never'
    c.probe.cache_features = "auto"

    c.linear = ConfigDict()
    c.linear.block = -1  # the block whose mean-pooled output is classified (-1: the last)

    c.finetune = ConfigDict()
    c.finetune.descriptor = "last"  # 'last' (last real token's output) | 'mean' (mean pooling) | 'probe'
    c.finetune.layer_decay = 0.75  # lr of block i = lr * decay**(depth - i); embeddings decay**(depth + 1)
    c.finetune.label_smoothing = 0.1
    c.finetune.mixup_alpha = 0.0  # 0 = off (DARL: 0.8)
    c.finetune.cutmix_alpha = 0.0  # 0 = off (DARL: 1.0)
    c.finetune.mix_prob = 1.0  # probability that a batch is mixed when mixup/cutmix is on

    c.optim = ConfigDict()
    c.optim.schedule = "cosine"
    c.optim.lr = 1e-3
    c.optim.end_lr = 0.0
    c.optim.warmup_steps = 500
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0

    if "finetune" in names:
        c.protocol = "finetune"
        c.optim.b2 = 0.95
        c.optim.weight_decay = 0.05
    if "linear" in names:
        c.protocol = "linear"
        c.optim.weight_decay = 0.0
    if "demo" in names:
        c.total_steps = 3_000
        c.batch_size = 64
        c.log_every = 500
        c.optim.warmup_steps = 100
        c.optim.lr = 1e-3 if c.protocol == "finetune" else 1e-2
        c.probe.last_k = 2
        c.probe.num_heads = 16
        c.probe.use_map_mlp = True
        c.train_transforms = "eval"
        c.data.synthetic.train_size = 12_000
        c.eval.max_examples = 1_000
    return c
