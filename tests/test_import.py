"""AIMv1 weights imported from ml-aim's own outputs (tests/fixtures/aim_v1_reference.npz: a 2-block, width-16
model with random weights, recorded by scripts/record_reference.py aim_v1 at the ml-aim commit in its
.json)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import ROOT, load_config
from safetensors.numpy import save_file
from script_runner import run_script

from naraim import load_backbone
from naraim.data.pipeline import make_eval_iterator
from naraim.data.tokens import to_tokens
from naraim.errors import UserError
from naraim.interop.aim_v1 import backbone_params, model_overrides, probe_head
from naraim.model.vit import make_backbone
from naraim.probe.heads import ProbeHead
from naraim.probe.runner import prepare, run_probe

FIXTURE = dict(np.load(os.path.join(ROOT, "tests", "fixtures", "aim_v1_reference.npz")))
STATE = {k.removeprefix("param."): v for k, v in FIXTURE.items() if k.startswith("param.")}


def _tokens(pixels: np.ndarray) -> list[jnp.ndarray]:
    examples = [to_tokens(image, patch_size=14, max_tokens=6) for image in pixels]
    return [jnp.asarray(np.stack([e[k] for e in examples])) for k in ("patches", "coords", "grid", "length")]


def test_imported_aim_v1_gives_ml_aims_blocks_features_and_probe_logits():
    vit = make_backbone(model_overrides("Nano/14"))
    params = backbone_params(STATE, "Nano/14")
    encoded, inter = vit.apply({"params": params}, *_tokens(FIXTURE["pixels"]), attention="bidirectional")
    for i in range(2):
        np.testing.assert_allclose(inter[f"block_{i}"], FIXTURE[f"block_{i}"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(encoded, FIXTURE["encoded"], rtol=1e-4, atol=1e-4)
    head = probe_head(STATE, "Nano/14")
    mean = (inter["block_0"] + inter["block_1"]) / 2  # ml-aim's AverageLayers over its probe layers
    logits = ProbeHead(5, 2).apply(head, mean, jnp.full(2, 6), False)
    np.testing.assert_allclose(logits, FIXTURE["logits"], rtol=1e-4, atol=1e-4)


def test_a_checkpoint_of_another_size_is_refused_in_one_line():
    with pytest.raises(Exception, match="patch embedding is \\[16, 3, 14, 14\\], AIM-0.6B needs") as error:
        backbone_params(STATE, "AIM-0.6B")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_import_script_writes_a_run_that_load_backbone_and_probes_read(tmp_path):
    checkpoint = tmp_path / "aim.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in STATE.items()}, str(checkpoint))
    out = tmp_path / "imported"
    command = ["scripts/import_weights.py", "--format", "aim_v1"]
    r = run_script(*command, "--checkpoint", str(checkpoint), "--variant", "Nano/14", "--out", str(out))
    assert r.returncode == 0, r.stderr
    features, blocks = load_backbone(str(out))(FIXTURE["pixels"])
    np.testing.assert_allclose(features, FIXTURE["encoded"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(blocks["block_1"], FIXTURE["block_1"], rtol=1e-4, atol=1e-4)
    bad = run_script(
        *command, "--checkpoint", str(tmp_path / "x.pth"), "--variant", "600m", "--out", str(tmp_path / "y")
    )
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_the_released_head_is_evaluated_as_released_without_training(tmp_path):
    """Imported with its head, probed with configs/probe.py:released: no step is trained, and the reported
    top-1 is the released head's own on the mean of the last blocks (ml-aim's), recomputed here. Its
    BatchNorm variance is made small, so that its predictions differ from image to image (and from a fresh
    head's)."""
    state = dict(STATE, **{"head.bn.running_var": np.full_like(STATE["head.bn.running_var"], 1e-4)})
    checkpoint = tmp_path / "aim.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(checkpoint))
    out = tmp_path / "imported"
    args = ["--checkpoint", str(checkpoint), "--variant", "Nano/14", "--out", str(out), "--image_size", "56"]
    r = run_script("scripts/import_weights.py", "--format", "aim_v1", *args)
    assert r.returncode == 0 and "released probe head" in r.stdout, r.stderr
    cfg = load_config("probe", "released")
    cfg.init_from, cfg.progress_bar, cfg.batch_size = str(out), False, 8
    cfg.data.source = "synthetic"
    cfg.data.synthetic = dict(num_classes=5, train_size=16, validation_size=20)
    results = run_probe(cfg, str(tmp_path / "probe"))
    assert not any(json.loads(x)["split"] == "train" for x in open(tmp_path / "probe" / "metrics.jsonl"))
    resolved = prepare(cfg)[0]
    head, vit = probe_head(state, "Nano/14"), make_backbone(resolved.model)
    params = backbone_params(STATE, "Nano/14")
    correct, predicted = [], []
    for batch in make_eval_iterator(resolved.data, split="validation", patch_size=14, global_batch_size=8):
        inputs = [jnp.asarray(batch[k]) for k in ("patches", "coords", "grid", "length")]
        _, inter = vit.apply({"params": params}, *inputs, attention="bidirectional")
        mean = (inter["block_0"] + inter["block_1"]) / 2  # the mean of the last 6 blocks of 2
        logits = ProbeHead(5, 2).apply(head, mean, inputs[3], False)
        correct += list((np.argmax(logits, -1) == batch["label"])[batch["valid"]])
        predicted += np.asarray(np.argmax(logits, -1))[batch["valid"]].tolist()
    assert results["num_examples"] == len(correct) == 20
    assert results["top1"] == pytest.approx(np.mean(correct)) and len(set(predicted)) > 2
    cfg.data.synthetic.num_classes = 4  # a head of 5 classes on a 4-class source: one clear line
    with pytest.raises(UserError, match="does not fit the head"):
        run_probe(cfg, str(tmp_path / "probe4"))
