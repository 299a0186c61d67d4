"""Backbones that travel: load_backbone, and the export to timm's VisionTransformer layout
(tests/fixtures/timm_manifest.json was recorded with timm itself: scripts/timm_check.py)."""

import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import ROOT, pretrain_workdir
from safetensors.flax import save_file as flax_save_file
from safetensors.numpy import load_file, save_file
from script_runner import run_script

from naraim import load_backbone
from naraim.data.tokens import to_tokens
from naraim.errors import UserError
from naraim.interop.timm import ExportError, ImportError_, from_timm, grid_coords, timm_config, to_timm
from naraim.interop.timm_import import import_config, import_params
from naraim.model import posemb
from naraim.model.model import dummy_batch
from naraim.model.vit import make_backbone
from naraim.train.config import default_pretrain_config

MANIFEST = os.path.join(ROOT, "tests", "fixtures", "timm_manifest.json")


def _script(name: str):
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recorder():
    return _script("timm_check")


def _params(model: dict):
    """(config, backbone params of its shapes drawn from a seeded normal: every value distinct, no init
    compiled)."""
    cfg = default_pretrain_config()
    cfg.model.update(model)
    cfg.data.update(image_size=32, max_tokens=16)
    init = make_backbone(cfg.model).init
    shapes = jax.eval_shape(init, jax.random.key(0), *dummy_batch(cfg, 1).values())["params"]
    rng = np.random.default_rng(0)
    return cfg, jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize("case", list(_recorder().CASES))
def test_exports_have_the_keys_shapes_and_arguments_timm_builds(case):
    manifest = json.load(open(MANIFEST))
    assert manifest["timm"] == "1.0.31" and sorted(manifest["cases"]) == sorted(_recorder().CASES)
    model, (rows, cols) = _recorder().CASES[case]
    cfg, params = _params(model)
    state = to_timm(params, cfg.model, rows, cols)
    expected = manifest["cases"][case]
    assert {k: list(v.shape) for k, v in state.items()} == expected["state"]
    assert json.loads(json.dumps(timm_config(cfg.model, rows, cols)["model_args"])) == expected["model_args"]


@pytest.mark.parametrize("model", [{"posemb": "absolute_sincos_2d"}, {"posemb": "none", "use_bias": False}])
def test_naraim_to_timm_to_naraim_is_the_identity(model):
    cfg, params = _params({"variant": "Pico/8", **model})
    back = from_timm(to_timm(params, cfg.model, 4, 4), cfg.model)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "model, says",
    [
        ({"posemb": "rope_2d"}, "model.posemb='rope_2d'"),
        ({"posemb": "rope_1d"}, "model.posemb='rope_1d'"),
        ({"norm_eps": 1e-5}, "model.norm_eps=1e-05"),
        ({"posemb": "rope_2d", "gelu": "exact", "use_bias": False, "patch_norm": True}, "patch_norm=True"),
        ({"sos_token": True}, "model.sos_token=True"),
    ],
)
def test_what_timm_cannot_carry_is_refused_in_one_line(model, says):
    cfg, params = _params({"variant": "Pico/8", **model})
    with pytest.raises(ExportError, match=says.replace("(", r"\(")) as error:
        to_timm(params, cfg.model, 4, 4)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_load_backbone_gives_the_vits_bidirectional_features_of_images():
    workdir = pretrain_workdir()
    backbone = load_backbone(workdir)
    images = np.random.default_rng(0).integers(0, 256, (2, 24, 32, 3)).astype(np.uint8)
    features, blocks = backbone(images)
    assert features.shape == (2, 12, backbone.vit.width) and sorted(blocks) == ["block_0", "block_1"]
    tokens = [to_tokens(image, patch_size=8, max_tokens=12) for image in images]
    batch = {k: np.stack([t[k] for t in tokens]) for k in tokens[0]}
    expected, inter = backbone.vit.apply(
        {"params": backbone.params}, *batch.values(), attention="bidirectional"
    )
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)  # jitted there, not here
    np.testing.assert_allclose(blocks["block_1"], inter["block_1"], rtol=1e-5, atol=1e-5)
    causal, _ = backbone(images, attention="causal")
    assert not np.allclose(causal, features)
    assert load_backbone(workdir, step=backbone.step).step == backbone.step
    with pytest.raises(UserError, match="multiples of the patch size"):
        backbone(images[:, :20])
    with pytest.raises(UserError, match="uint8"):
        backbone(images.astype(np.float32))


@pytest.mark.slow
def test_export_script_writes_timms_files_and_a_model_card(tmp_path):
    workdir = pretrain_workdir()
    out = tmp_path / "export"
    run = lambda *args: run_script("scripts/export.py", *args)  # noqa: E731
    r = run("--workdir", workdir, "--out", str(out), "--grid", "2x3")
    assert r.returncode == 0, r.stderr
    config = json.load(open(out / "config.json"))
    assert config["model_args"]["img_size"] == [16, 24] and config["pretrained_cfg"]["fixed_input_size"]
    state = load_file(str(out / "model.safetensors"))
    assert state["pos_embed"].shape == (1, 6, config["num_features"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and "local-dir:" in card
    bad = run("--workdir", workdir, "--out", str(tmp_path / "x"), "--grid", "2by3")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "ROWSxCOLS" in bad.stderr


def _timm_rope_cat(x: np.ndarray, rows: int, cols: int, temperature: float) -> np.ndarray:
    """A numpy transcription of timm's Eva rotary embedding ('cat', in_pixels=False, 'ij' grid; timm's
    build_rotary_pos_embed and apply_rot_embed_cat, not rotate_half) on x [N, H, Dh], N = rows * cols."""
    dh = x.shape[-1]
    bands = 1.0 / temperature ** (np.arange(dh // 4, dtype=np.float32) / (dh // 4))  # freq_bands(step=1)
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).astype(np.float32)
    pos = (grid[..., None] * bands).reshape(rows * cols, -1)  # [N, 2 * Dh/4]: row bands, then column bands
    sin, cos = np.repeat(np.sin(pos), 2, -1)[:, None], np.repeat(np.cos(pos), 2, -1)[:, None]
    rot = np.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)  # timm's rot(): pairs (2i, 2i + 1)
    return x * cos + rot * sin


def test_the_rope_channel_order_turns_naraims_rotation_into_timms():
    """naraim rotates channel pairs (i, i + Dh/2), timm's Eva (2i, 2i + 1): the export reorders q and k
    channels so that timm's rotation of the reordered vectors is naraim's rotation, reordered."""
    from naraim.interop.timm import rope_channel_order
    from naraim.model import posemb

    rows, cols, heads, dh = 3, 5, 2, 16
    x = np.random.default_rng(0).normal(size=(rows * cols, heads, dh)).astype(np.float32)
    coords = np.stack(np.divmod(np.arange(rows * cols), cols), -1)[None]
    angles = posemb.rope_angles_2d(coords, dh, 100.0)
    naraim = np.asarray(posemb.apply_rope(x[None], angles))[0]
    order = rope_channel_order(dh)
    np.testing.assert_allclose(
        _timm_rope_cat(x[..., order], rows, cols, 100.0), naraim[..., order], atol=1e-5
    )
    q, k = naraim, np.asarray(posemb.apply_rope(x[None] * 2 + 1, angles))[0]
    np.testing.assert_allclose(  # the attention logits are unchanged by the common reordering
        np.einsum("nhd,mhd->hnm", q[..., order], k[..., order]), np.einsum("nhd,mhd->hnm", q, k), rtol=1e-5
    )


def test_a_rope_2d_backbone_goes_to_evas_layout_and_back():
    model = {"variant": "Pico/8", "posemb": "rope_2d", "use_bias": False, "gelu": "exact"}
    cfg, params = _params(model)
    state = to_timm(params, cfg.model, 4, 4)
    assert "blocks.0.attn.q_proj.weight" in state and "pos_embed" not in state
    back = from_timm(state, cfg.model)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    config = timm_config(cfg.model, 4, 4)
    assert config["model_args"]["dynamic_img_size"] and not config["pretrained_cfg"]["fixed_input_size"]
    for bad in ({"gelu": "tanh"}, {"use_bias": True}):
        cfg, params = _params({**model, **bad})
        with pytest.raises(ExportError, match="timm's Eva"):
            to_timm(params, cfg.model, 4, 4)


TIMM_IMPORTS = os.path.join(ROOT, "tests", "fixtures", "timm_import")


def _import_weights():
    return _script("import_weights")


@pytest.mark.parametrize("case", ["siglip_gap", "patch_norm_no_bias", "eva_rope"])
def test_timms_own_checkpoints_import_with_timms_features(case, tmp_path):
    """timm's own models, saved by timm's save_for_hf with their forward_features recorded by timm
    (scripts/record_reference.py timm), import to naraim runs whose load_backbone gives those features."""
    reference = np.load(os.path.join(ROOT, "tests", "fixtures", "timm_reference.npz"))
    run = str(tmp_path / "run")
    _import_weights().import_timm(os.path.join(TIMM_IMPORTS, case), run, None)
    backbone = load_backbone(run)
    sizes = [k.split(".")[1] for k in reference.files if k.startswith(case) and k.endswith(".features")]
    assert sizes
    for size in sizes:
        features, _ = backbone(reference[f"{case}.{size}.pixels"])
        np.testing.assert_allclose(features, reference[f"{case}.{size}.features"], rtol=0, atol=1e-4)


def test_learned_2d_resamples_its_table_as_torchs_bilinear_interpolate(tmp_path):
    reference = np.load(os.path.join(ROOT, "tests", "fixtures", "timm_reference.npz"))
    run = str(tmp_path / "run")
    _import_weights().import_timm(os.path.join(TIMM_IMPORTS, "siglip_gap"), run, None)
    backbone = load_backbone(run)
    assert backbone.config.model.posemb == "learned_2d" and backbone.config.model.posemb_grid == "3x4"
    coords, grid = (np.asarray(a) for a in grid_coords(5, 2))
    module = posemb.Learned2D(backbone.vit.width, (3, 4))
    table = module.apply({"params": backbone.params["posemb"]}, coords, grid)[0]
    np.testing.assert_allclose(table, reference["siglip_gap.pos_embed_5x2"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"model_args": {"class_token": True}}, "class_token=True"),
        ({"model_args": {"reg_tokens": 4}}, "reg_tokens=4"),
        ({"model_args": {"init_values": 1e-5}}, "init_values=1e-05"),
        ({"model_args": {"fc_norm": None}}, "fc_norm=None"),
        ({"model_args": {"qk_norm": True}}, "qk_norm=True"),
        ({"model_args": {"act_layer": "silu"}}, "act_layer='silu'"),
        ({"model_args": {"pos_embed": "rope"}}, "pos_embed='rope'"),
        ({"model_args": {"mlp_layer": "swiglu"}}, "mlp_layer='swiglu'"),
        ({"model_args": {"embed_dim": 24}}, "width 24"),
        ({"pretrained_cfg": {"mean": [0.1] * 3, "std": [0.2] * 3}}, "mean [0.1, 0.1, 0.1]"),
        ({"architecture": "deit_tiny_patch16_224", "model_args": None}, "architecture 'deit_tiny"),
    ],
)
def test_what_naraim_cannot_reproduce_of_a_timm_checkpoint_is_refused_in_one_line(change, says):
    config = json.load(open(os.path.join(TIMM_IMPORTS, "siglip_gap", "config.json")))
    for key, value in change.items():
        if isinstance(value, dict):
            config[key] = {**config[key], **value}
        elif value is None:
            config.pop(key)
        else:
            config[key] = value
    if change.get("model_args") is None and "model_args" in change:
        config.pop("model_args", None)
    with pytest.raises(ImportError_, match=re.escape(says)) as error:
        import_config(config, {})
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_import_script_refuses_a_class_token_checkpoint_in_one_line(tmp_path):
    r = run_script(
        "scripts/import_weights.py",
        "--format",
        "timm",
        "--checkpoint",
        os.path.join(TIMM_IMPORTS, "class_token"),
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "class_token=True" in r.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "model",
    [
        {"posemb": "learned_2d", "posemb_grid": "3x5", "pixel_scale": "inception"},
        {"posemb": "none", "patch_norm": True, "use_bias": False, "gelu": "exact"},
        {"posemb": "rope_2d", "use_bias": False, "gelu": "exact"},
    ],
)
def test_an_export_imports_back_to_the_same_backbone(model, tmp_path):
    cfg, params = _params({"variant": "Pico/8", **model})
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(to_timm(params, cfg.model, 3, 5), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(timm_config(cfg.model, 3, 5)))
    _import_weights().import_timm(str(folder), str(tmp_path / "run"), None)
    backbone = load_backbone(str(tmp_path / "run"))
    for key in model:
        assert backbone.config.model[key] == model[key]
    assert jax.tree.structure(backbone.params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(backbone.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_tensor_naraim_has_no_place_for_is_refused_but_the_classifier_head_is_left_out():
    config = json.load(open(os.path.join(TIMM_IMPORTS, "siglip_gap", "config.json")))
    state = load_file(os.path.join(TIMM_IMPORTS, "siglip_gap", "model.safetensors"))
    model, _ = import_config(config, state)
    head = {"head.weight": np.ones((5, 16), np.float32), "head.bias": np.ones(5, np.float32)}
    import_params({**state, **head}, model)
    with pytest.raises(ImportError_, match="blocks.0.gamma_1") as error:
        import_params({**state, "blocks.0.gamma_1": np.ones(16, np.float32)}, model)
    assert "\n" not in str(error.value)
    import_params({**state, "blocks.0.gamma_1": np.zeros(16, np.float32)}, model)  # zero: nothing lost


@pytest.mark.parametrize(
    "change, says",
    [({"init_values": 1e-5}, "init_values=1e-05"), ({"swiglu_mlp": True}, "swiglu_mlp=True")],
)
def test_an_eva_unlike_the_exports_is_refused_in_one_line(change, says):
    config = json.load(open(os.path.join(TIMM_IMPORTS, "eva_rope", "config.json")))
    config["model_args"].update(change)
    with pytest.raises(ImportError_, match=re.escape(says)) as error:
        import_config(config, {})
    assert "\n" not in str(error.value)


def test_a_bfloat16_checkpoint_imports_as_its_float32_values(tmp_path):
    folder = tmp_path / "bf16"
    folder.mkdir()
    source = os.path.join(TIMM_IMPORTS, "siglip_gap")
    (folder / "config.json").write_text(open(os.path.join(source, "config.json")).read())
    state = load_file(os.path.join(source, "model.safetensors"))
    flax_save_file(
        {k: jnp.asarray(v, jnp.bfloat16) for k, v in state.items()}, str(folder / "model.safetensors")
    )
    _import_weights().import_timm(str(folder), str(tmp_path / "run"), None)
    table = load_backbone(str(tmp_path / "run")).params["posemb"]["table"]
    expected = np.asarray(jnp.asarray(state["pos_embed"], jnp.bfloat16), np.float32).reshape(table.shape)
    np.testing.assert_array_equal(table, expected)
