"""Downstream evaluation of a pre-trained backbone: attentive probe, linear probe, fine-tuning, results."""
