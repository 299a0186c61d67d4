"""Shared by the probe tests: a tiny pre-training workdir made by the trainer's own code; config loading."""

import atexit
import functools
import os
import shutil
import tempfile

from naraim.infra.flags import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = ""):
    """configs/<name>.py:get_config(arg)."""
    return load_config_file(os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else ""))


@functools.cache
def pretrain_workdir(variant: str = "naraim") -> str:
    """A 2-step pre-training run of a tiny ViT (Pico/8, 32px images, <= 16 tokens) on small synthetic splits,
    made once per test session by naraim.train.trainer.train."""
    from naraim.train.trainer import train

    cfg = load_config("demo", variant)
    cfg.total_steps = 2
    cfg.batch_size = 8
    cfg.log_every = 1
    cfg.checkpoint_every = 2
    cfg.eval_every = 2
    cfg.eval.num_examples = 0
    cfg.progress_bar = False
    cfg.optim.warmup_steps = 1
    cfg.optim.cooldown_steps = 1
    cfg.data.image_size = 32
    cfg.data.max_tokens = 16
    cfg.data.synthetic.train_size = 48
    cfg.data.synthetic.validation_size = 24
    root = tempfile.mkdtemp(prefix="naraim_probe_test_")
    atexit.register(shutil.rmtree, root, True)
    workdir = os.path.join(root, variant)
    train(cfg, workdir)
    return workdir


def tiny_probe_config(init_from: str, variants: str = ""):
    """configs/probe.py sized for tests: 6 steps of batch 8, evaluation on 24 images."""
    cfg = load_config("probe", variants)
    cfg.init_from = init_from
    cfg.total_steps = 6
    cfg.batch_size = 8
    cfg.log_every = 3
    cfg.optim.warmup_steps = 1
    cfg.probe.last_k = 2
    cfg.progress_bar = False
    cfg.eval.batch_size = 8
    return cfg
