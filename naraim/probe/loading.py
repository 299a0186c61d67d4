"""Loading a pre-trained backbone for downstream use: only its parameters, checked against its model."""

import jax
from ml_collections import ConfigDict

from naraim.errors import UserError
from naraim.infra.checkpoint import restore_params
from naraim.model.vit import ViT


def _shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def check_backbone_params(params: dict, backbone: ViT, inputs: dict, source: str) -> None:
    """Raises UserError naming the first difference unless `params` has the backbone's exact tree and shapes.

    inputs: example model inputs ('patches', 'coords', 'grid', 'length'), e.g. naraim.model.model.dummy_batch.
    """
    expected = _shapes(jax.eval_shape(backbone.init, jax.random.PRNGKey(0), **inputs)["params"])
    found = _shapes(params)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or extra or wrong:
        if wrong:
            detail = f"{wrong[0]} has shape {found[wrong[0]]}, the model needs {expected[wrong[0]]}"
        elif missing:
            detail = f"{len(missing)} parameter(s) missing, e.g. {missing[0]}"
        else:
            detail = f"{len(extra)} unexpected parameter(s), e.g. {extra[0]}"
        raise UserError(
            f"the checkpoint at {source} does not fit the backbone described by its config.json ({detail}); "
            "point init_from at a checkpoint written with that config"
        )


def load_pretrained(init_from: str) -> tuple[dict, ConfigDict, int]:
    """(backbone params (numpy), the pre-training run's config, its step) from a pre-training workdir (newest
    checkpoint) or one WORKDIR/checkpoints/<step> folder. The pre-training head and optimizer are not kept."""
    if not init_from:
        raise UserError("init_from is not set: pass --config.init_from=PRETRAIN_WORKDIR (or a step dir)")
    params, cfg, step = restore_params(init_from)
    if "backbone" not in params:
        raise UserError(f"the checkpoint at {init_from} has no 'backbone' params; pass a pre-training run")
    return params["backbone"], cfg, step
