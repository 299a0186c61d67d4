"""The pre-training objective, chosen once per run (`make_objective`): what the train step, evaluation and
generation ask of it, so that none of them compares objective names.

An objective gives the per-patch training error, the evaluation error with the prediction it plots, the
extra head inputs the model is initialised with, and one generated patch. The first target (the first
sequence position in the loss) is shared by both: 0 with an SOS token, else 1 (patch 0 has nothing to
predict it from).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from naraim.model.model import make_head
from naraim.objectives import diffusion
from naraim.objectives.mse import per_patch_error


def first_target(sos_token: bool) -> int:
    """The first sequence position with a target when nothing is given as prefix."""
    return 0 if sos_token else 1


def pixel_targets(loss_cfg: ConfigDict) -> dict[str, Any]:
    """The keyword arguments of per_patch_error / unnormalize / to_uint8 that define the pixel targets."""
    return dict(
        norm_pix=bool(loss_cfg.norm_pix),
        raw_scale=loss_cfg.get("raw_scale", "symmetric"),
        pixel_scale=loss_cfg.get("target_pixel_scale", "unit"),
    )


@dataclasses.dataclass(frozen=True)
class MSE:
    """Next-patch regression: the model's 'pred' against the (normalised or raw) pixels of the patch."""

    model: nn.Module
    loss: ConfigDict
    reference_mse = True  # evaluation adds the reference protocol's validation MSEs (mse_ref)

    @property
    def targets(self) -> dict[str, Any]:
        return pixel_targets(self.loss)

    def init_head_inputs(self, batch_size: int, num_tokens: int, patch_dim: int) -> None:
        return None

    def error(self, params, inputs: dict, rng: jax.Array, **apply_kwargs) -> jax.Array:
        """float32 [B,N] per-patch squared error; apply_kwargs go to model.apply (prefix_length, ...)."""
        del rng
        out = self.model.apply({"params": params}, inputs, **apply_kwargs)
        return per_patch_error(out["pred"], inputs["patches"], **self.targets)

    def evaluate(self, params, inputs: dict) -> tuple[jax.Array, jax.Array]:
        """(float32 [B,N] error, [B,N,K] prediction) under causal attention."""
        pred = self.model.apply({"params": params}, inputs, attention="causal")["pred"]
        return per_patch_error(pred, inputs["patches"], **self.targets), pred

    def sample_patch(self, params, out: dict, j: jax.Array, rng: jax.Array, num_steps: int) -> jax.Array:
        """[B,K] target-space prediction of patch j (greedy)."""
        return out["pred"][:, j]

    def describe_sampling(self, num_steps: int) -> str:
        return "greedy"


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """DARL: the denoising head regresses x_0 (or eps) of per-patch corrupted targets (naraim.objectives.
    diffusion)."""

    model: nn.Module
    loss: ConfigDict
    reference_mse = False

    @property
    def targets(self) -> dict[str, Any]:
        return pixel_targets(self.loss)

    def init_head_inputs(self, batch_size: int, num_tokens: int, patch_dim: int) -> dict:
        return diffusion.init_head_inputs(self.loss, batch_size, num_tokens, patch_dim)

    def error(self, params, inputs: dict, rng: jax.Array, **apply_kwargs) -> jax.Array:
        """float32 [B,N] denoising error with per-patch signal levels drawn from `rng`."""
        return diffusion.denoising_error(self.model, params, inputs, rng, self.loss, **apply_kwargs)

    def evaluate(self, params, inputs: dict) -> tuple[jax.Array, jax.Array]:
        """(denoising error under fixed noise, x_0 estimate from pure noise: the context alone), causal."""
        rng, kw = jax.random.PRNGKey(0), {"attention": "causal"}
        err = diffusion.denoising_error(self.model, params, inputs, rng, self.loss, **kw)
        pred = diffusion.pure_noise_prediction(self.model, params, inputs, rng, self.loss, **kw)
        return err, pred

    def sample_patch(self, params, out: dict, j: jax.Array, rng: jax.Array, num_steps: int) -> jax.Array:
        """[B,K] patch j sampled by DDPM from the denoising head, conditioned on the backbone's feature."""
        features = out["aligned"][:, j][:, None]
        append_gamma = self.loss.diffusion.append_gamma
        head = make_head(self.model.config)

        def denoise(x_t, gamma):
            inputs = diffusion.head_inputs(x_t[:, None], gamma[:, None], append_gamma)
            return head.apply({"params": params["head"]}, features, **inputs)[:, 0]

        b, k = features.shape[0], out["pred"].shape[-1]
        return diffusion.ddpm_sample(
            jax.random.fold_in(rng, j), denoise, (b, k), num_steps, self.loss.diffusion.predict
        )

    def describe_sampling(self, num_steps: int) -> str:
        return f"DDPM, {num_steps} steps"


def make_objective(model: nn.Module, loss_cfg: ConfigDict) -> MSE | Diffusion:
    """The run's objective (loss.objective: 'mse' or 'diffusion')."""
    if loss_cfg.get("objective", "mse") == "diffusion":
        return Diffusion(model, loss_cfg)
    return MSE(model, loss_cfg)
