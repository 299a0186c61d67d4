"""scripts/inspect_data.py: the tokens a config makes of a split, as the pipeline gives them to the model."""

import os

import numpy as np
import pytest
from PIL import Image
from probe_helpers import load_config
from script_runner import run_script

from naraim.data.pipeline import make_eval_iterator

ARGS = ["--config=configs/demo.py:naraim", "--config.data.image_size=32", "--config.data.max_tokens=16"]


def _folder(root):
    for c, color in (("a", 30), ("b", 220)):
        (root / "validation" / c).mkdir(parents=True)
        (root / "train" / c).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (40 + 16 * i, 30 + 4 * i), (color, 20 * i, 90))
            image.save(root / "validation" / c / f"{i}.png")
            image.save(root / "train" / c / f"{i}.png")
    (root / "validation" / "a" / "0_broken.png").write_bytes(b"not an image")
    return root


def run(*args):
    return run_script("scripts/inspect_data.py", *ARGS, *args, timeout=300)


@pytest.mark.slow
def test_inspect_writes_the_tokens_the_pipeline_makes_and_a_contact_sheet(tmp_path):
    data = _folder(tmp_path / "data")
    source = f"--config.data.source=folder:{data}"
    r = run(source, "--split=validation", "--num=4", f"--out={tmp_path / 'look'}")
    assert r.returncode == 0, r.stderr
    tokens = np.load(tmp_path / "look" / "tokens.npz")
    assert tokens["patches"].shape == (4, 16, 8 * 8 * 3) and tokens["patches"].dtype == np.uint8
    assert tokens["coords"].shape == (4, 16, 2) and tokens["grid"].shape == (4, 2)
    # the broken file is skipped; the rest in the source's order
    names = [os.path.relpath(p, data) for p in tokens["path"]]
    assert names == ["validation/a/0.png", "validation/a/1.png", "validation/a/2.png", "validation/b/0.png"]
    cfg = load_config("demo", "naraim").data
    cfg.update(image_size=32, max_tokens=16, source=f"folder:{data}")
    batch = next(iter(make_eval_iterator(cfg, split="validation", patch_size=8, global_batch_size=5)))
    valid = batch["valid"]
    np.testing.assert_array_equal(tokens["patches"], batch["patches"][valid][:4])
    np.testing.assert_array_equal(tokens["length"], batch["length"][valid][:4])
    assert (tmp_path / "look" / "tokens.png").read_bytes()[:4] == b"\x89PNG"
    # training transforms: seeded
    a = run(source, "--split=train", "--num=6", "--train", "--seed=3", f"--out={tmp_path / 't1'}")
    b = run(source, "--split=train", "--num=6", "--train", "--seed=3", f"--out={tmp_path / 't2'}")
    assert a.returncode == b.returncode == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "t1" / "tokens.npz")["patches"], np.load(tmp_path / "t2" / "tokens.npz")["patches"]
    )
    bad = run(source, "--split=nope", "--num=2", f"--out={tmp_path / 'x'}")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), bad.stderr
