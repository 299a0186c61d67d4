"""naraim: autoregressive image pre-training at native aspect ratio (NARAIM, AIM, DARL) in JAX/Flax."""

from naraim.backbone import Backbone, load_backbone

__version__ = "0.1.0"
__all__ = ["Backbone", "load_backbone"]
