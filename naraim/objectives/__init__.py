"""Pre-training objectives, used by the train step, evaluation and generation.

objective.py  the interface they call (make_objective: MSE or Diffusion), chosen once per run
targets.py    pixel targets from uint8 patches (normalized per patch or raw) and their inverse
mse.py        which targets are in the loss, how they are averaged, the per-patch squared error
diffusion.py  DARL's per-patch diffusion: signal levels, forward process, denoising error, DDPM sampling
config.py     the `loss.*` config section and its validation
"""
