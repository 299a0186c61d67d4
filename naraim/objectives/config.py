"""The `loss.*` section of a pre-training config: defaults and validation."""

from collections.abc import Mapping
from typing import Any

import ml_collections

from naraim.errors import UserError
from naraim.infra.options import Option, section
from naraim.model.pixels import PIXEL_SCALES
from naraim.objectives.diffusion import PREDICT_CHOICES
from naraim.objectives.mse import AVERAGES
from naraim.objectives.targets import RAW_SCALES

OBJECTIVES = ("mse", "diffusion")


LOSS_OPTIONS = {
    "objective": Option("mse", "'mse' | 'diffusion' (DARL; with model.head='denoising')"),
    "norm_pix": Option(True, "targets: each patch standardised over its pixels; else raw pixels"),
    "raw_scale": Option(
        "symmetric", "raw targets (norm_pix False) in [-1, 1] ('symmetric') or [0, 1] ('unit')"
    ),
    "average": Option(
        "per_patch",
        "'per_patch': one mean over the batch's targets (AIM) | 'per_image': the mean per image, then over "
        "the images | 'fixed_count': summed errors over batch x prediction slots (the NARAIM reference's "
        "training)",
    ),
    "target_pixel_scale": Option(
        "unit",
        "norm_pix targets: patches of x/255 ('unit', NARAIM) or of the mean/std-standardised image "
        "('imagenet', l3m's AIMv1)",
    ),
    "diffusion": {
        "beta_a": Option(
            1.0,
            "DARL: per-patch signal levels g ~ Beta(beta_a, beta_b) (a < b: mostly heavy noise, which DARL "
            "finds best for representations)",
        ),
        "beta_b": Option(3.0, "DARL: the second parameter of the Beta distribution of the signal levels"),
        "predict": Option("x0", "DARL: the decoder's target, 'x0' or 'eps'"),
        "append_gamma": Option(False, "DARL: the signal level g as an extra decoder input channel"),
    },
}


def default_loss_config() -> ml_collections.ConfigDict:
    """Every `loss.*` key with its default (configs/naraim_b14.py sets the NARAIM reference's values)."""
    return section(LOSS_OPTIONS)


def validate_loss_config(loss_cfg: Mapping[str, Any], head: str) -> None:
    """Raises UserError for a bad `loss.*` value, or an objective that does not match model.head
    ('denoising' exactly when the objective is 'diffusion')."""
    objective = loss_cfg["objective"]
    if objective not in OBJECTIVES:
        raise UserError(f"loss.objective={objective!r} is not supported: use one of {OBJECTIVES}")
    if loss_cfg["raw_scale"] not in RAW_SCALES:
        raise UserError(f"loss.raw_scale={loss_cfg['raw_scale']!r} is not supported: use one of {RAW_SCALES}")
    if loss_cfg["average"] not in AVERAGES:
        raise UserError(f"loss.average={loss_cfg['average']!r} is not supported: use one of {AVERAGES}")
    if loss_cfg["target_pixel_scale"] not in PIXEL_SCALES:
        raise UserError(
            f"loss.target_pixel_scale={loss_cfg['target_pixel_scale']!r} is not supported: use one of "
            f"{PIXEL_SCALES}"
        )
    if loss_cfg["target_pixel_scale"] != "unit" and not loss_cfg["norm_pix"]:
        raise UserError(
            "loss.target_pixel_scale applies to normalised-pixel targets: set loss.norm_pix=True or leave "
            "loss.target_pixel_scale='unit'"
        )
    if (objective == "diffusion") != (head == "denoising"):
        raise UserError(
            f"loss.objective={objective!r} with model.head={head!r}: the diffusion objective needs "
            "model.head='denoising' and the denoising head needs loss.objective='diffusion'"
        )
    if objective == "diffusion":
        diffusion = loss_cfg["diffusion"]
        for key in ("beta_a", "beta_b"):
            if not float(diffusion[key]) > 0:
                raise UserError(f"loss.diffusion.{key}={diffusion[key]} must be > 0 (Beta distribution)")
        if diffusion["predict"] not in PREDICT_CHOICES:
            raise UserError(f"loss.diffusion.predict={diffusion['predict']!r}: use one of {PREDICT_CHOICES}")
