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
  knn           weighted kNN (k = 20, temperature 0.07) on the mean-pooled features of every block, no
                training; the block is selected on minival.
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
  demo          sized for the demo pre-training (configs/demo.py) on a 2-core CPU: 12,000 synthetic training
                images without augmentation (features computed once and cached), every block at 2 learning
                rates selected on minival, a head with 16 heads and the MAP MLP, 3,000 steps of batch 64.
"""

import math

from ml_collections import ConfigDict, config_dict

from naraim.errors import UserError
from naraim.probe.config import default_data_overrides

VARIANTS = (
    "naraim",
    "sweep",
    "knn",
    "finetune",
    "linear",
    "darl_linear",
    "darl_finetune",
    "darl_finetune_long",
    "small",
    "demo",
)
IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's training split (epochs -> steps)


def get_config(variants: str = "") -> ConfigDict:
    names = [v for v in (variants or "").split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise UserError(f"unknown config variant(s) {unknown}: use a comma-separated subset of {VARIANTS}")
    c = ConfigDict()
    c.variant = variants or ""  # the variants this config was built with
    c.init_from = ""  # the pre-training workdir (its newest checkpoint) or one of its checkpoints/<step>
    c.protocol = "attentive"  # 'attentive' | 'linear' | 'knn' | 'finetune'
    c.attention = "bidirectional"  # the backbone's attention at probe / fine-tuning time: or 'causal'
    c.seed = 0  # heads' initialisation, data order, minival split
    c.total_steps = 50_000  # optimiser steps (not used by knn)
    c.batch_size = 1024  # global
    c.log_every = 100  # steps between train rows of metrics.jsonl
    c.eval_every = 0  # 0: evaluate once, at the end
    c.checkpoint_every = 1_000  # probe state + data position, so a stopped run resumes (0: never)
    c.keep_checkpoints = 2  # the newest checkpoints kept
    c.aspect_ratio_bins = (0.0, 0.5, 0.75, 1.33, 2.0, math.inf)  # width/height; on a command line inf = 1e9
    # Training transforms: 'pretraining' = the pre-training run's data.transforms (NARAIM: native aspect
    # ratio + random crop + flip; AIM: RandomResizedCrop + flip), 'eval' = its data.eval_transforms.
    c.train_transforms = "pretraining"
    c.progress_bar = True  # progress on stderr
    c.wandb = ConfigDict(dict(mode="disabled", project="naraim-probe", name=""))  # as pre-training's wandb.*

    c.data = default_data_overrides()  # any data.* key; None = the pre-training run's value
    c.model = ConfigDict()  # compute settings only; the architecture always comes from the checkpoint's run
    c.model.dtype = config_dict.placeholder(str)
    c.model.remat = config_dict.placeholder(str)
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.drop_path = config_dict.placeholder(float)  # fine-tuning's stochastic depth (None: 0)

    c.eval = ConfigDict()
    c.eval.split = config_dict.placeholder(str)  # None: data.val_split
    c.eval.max_examples = config_dict.placeholder(int)  # None: the whole split
    c.eval.batch_size = config_dict.placeholder(int)  # None: batch_size

    c.probe = ConfigDict()  # frozen protocols (attentive, linear, knn)
    # features: 'mean' (of the last `last_k` blocks' outputs), 'all' (every block), block indices ('0,-1'),
    # or a comma-separated mix ('all,mean'); one head per entry and learning rate
    c.probe.blocks = "mean"
    c.probe.last_k = 6
    c.probe.lrs = ()  # learning rates of the sweep; () = (optim.lr,)
    # share of the training split held out (seeded) to select among heads; needed by sweeps of > 1 head
    c.probe.minival_fraction = 0.0
    c.probe.head = "aim"  # attentive head: 'aim' (ml-aim's) | 'naraim_ref' (the NARAIM reference code's)
    c.probe.num_heads = config_dict.placeholder(int)  # None: the backbone's number of heads
    c.probe.use_map_mlp = False
    c.probe.label_smoothing = 0.0
    # 'auto': cache the backbone features when the training transforms have no randomness | 'always' | 'never'
    c.probe.cache_features = "auto"

    c.knn = ConfigDict(dict(k=20, temperature=0.07))  # DINO's weighted kNN

    c.finetune = ConfigDict()
    c.finetune.descriptor = "last"  # 'last' (last real token's output) | 'mean' (mean pooling) | 'probe'
    c.finetune.layer_decay = 0.75  # lr of block i = lr * decay**(depth - i); embeddings decay**(depth + 1)
    c.finetune.label_smoothing = 0.1  # of the one-hot targets
    c.finetune.mixup_alpha = 0.0  # 0 = off (DARL: 0.8)
    c.finetune.cutmix_alpha = 0.0  # 0 = off (DARL: 1.0)
    c.finetune.mix_prob = 1.0  # probability that a batch is mixed when mixup/cutmix is on

    c.optim = ConfigDict()
    c.optim.optimizer = "adamw"  # 'adamw' | 'lars'
    c.optim.schedule = "cosine"  # warmup then cosine decay (or 'constant', 'naraim', 'naraim_ref')
    c.optim.lr = 1e-3  # peak learning rate (probe.lrs: one head per rate instead)
    c.optim.end_lr = 0.0  # final learning rate of the cosine
    c.optim.warmup_steps = 500  # linear warmup from 0
    c.optim.b1 = 0.9  # AdamW beta1 (LARS: momentum)
    c.optim.b2 = 0.999  # AdamW beta2
    c.optim.eps = 1e-8  # AdamW epsilon
    c.optim.weight_decay = 0.01  # decoupled weight decay
    c.optim.decay = "kernels"  # weight decay on 'kernels' (Dense kernels, not the query) | 'all'
    c.optim.clip_norm = 1.0  # global gradient-norm clipping per head (0: off)

    if "naraim" in names:
        c.probe.head = "naraim_ref"
        c.probe.blocks = "-1"
        c.batch_size = 512
        c.optim.b2 = 0.98
        c.optim.decay = "all"
    if "sweep" in names:
        c.probe.blocks = "all,mean"
        c.probe.lrs = (3e-4, 1e-3, 3e-3)
        c.probe.minival_fraction = 0.1
    if "knn" in names:
        c.protocol = "knn"
        c.probe.blocks = "all,mean"
        c.probe.minival_fraction = 0.1
        c.train_transforms = "eval"
    if "darl_finetune_long" in names:
        names.append("darl_finetune")
    if "finetune" in names or "darl_finetune" in names:
        c.protocol = "finetune"
        c.optim.b2 = 0.95
        c.optim.weight_decay = 0.05
    if "darl_finetune" in names:
        epochs = 90 if "darl_finetune_long" in names else 50
        c.finetune.mixup_alpha = 0.8
        c.finetune.cutmix_alpha = 1.0
        c.data.transforms = ("random_resized_crop", "horizontal_flip", "rand_augment")
        c.batch_size = 4096
        c.total_steps = epochs * IMAGENET_TRAIN // c.batch_size
        c.optim.warmup_steps = 5 * IMAGENET_TRAIN // c.batch_size
        c.optim.lr = 1e-3
        c.model.drop_path = 0.1 if epochs == 90 else 0.0
    if "linear" in names or "darl_linear" in names:
        c.protocol = "linear"
        c.probe.blocks = "-1" if "sweep" not in names else c.probe.blocks
        c.optim.weight_decay = 0.0
    if "darl_linear" in names:
        c.attention = "causal"
        c.optim.optimizer = "lars"
        c.optim.lr = 0.1
        c.optim.b1 = 0.9  # LARS momentum
        c.optim.warmup_steps = 10 * IMAGENET_TRAIN // 16_384
        c.total_steps = 90 * IMAGENET_TRAIN // 16_384
        c.batch_size = 16_384
        c.probe.label_smoothing = 0.1
    if "small" in names:
        c.total_steps = 400
        c.batch_size = 128
        c.log_every = 100
        c.checkpoint_every = 0
        c.optim.warmup_steps = 40
        c.train_transforms = "eval"
        c.probe.blocks = "all,mean"
        c.probe.lrs = (1e-2, 1e-1) if c.protocol == "linear" else (3e-3, 1e-2)
        c.probe.minival_fraction = 0.1
    if "demo" in names:
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
    return c
