"""Pre-training: its config, the jitted step, the evaluation and the training loop."""
