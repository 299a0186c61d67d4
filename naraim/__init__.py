"""naraim: autoregressive image pre-training at native aspect ratio (NARAIM, AIM, DARL) in JAX/Flax."""

__version__ = "0.1.0"
