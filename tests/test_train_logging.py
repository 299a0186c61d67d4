import json
import os

from ml_collections import ConfigDict

from naraim.infra.metrics_log import MetricsLogger


def cfg(mode: str) -> ConfigDict:
    return ConfigDict({"wandb": {"mode": mode, "project": "naraim-test", "name": ""}})


def read(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_metrics_jsonl_and_resume_truncation(tmp_path):
    log = MetricsLogger(str(tmp_path), cfg("disabled"))
    for step in (10, 20, 30):
        log.write(step, "train", {"loss": 1.0 / step, "lr": 0.1})
    log.write(20, "val", {"loss": 0.5})
    log.close()
    assert [(r["step"], r["split"]) for r in read(tmp_path)] == [
        (10, "train"),
        (20, "train"),
        (30, "train"),
        (20, "val"),
    ]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "spl')  # a line cut off by a kill
    log = MetricsLogger(str(tmp_path), cfg("disabled"), resume_step=20)  # resumed from the step-20 checkpoint
    log.write(30, "train", {"loss": 0.25})
    log.close()
    records = read(tmp_path)
    assert [(r["step"], r["split"]) for r in records] == [
        (10, "train"),
        (20, "train"),
        (20, "val"),
        (30, "train"),
    ]
    assert records[-1]["loss"] == 0.25


def test_wandb_offline_writes_into_the_workdir_and_keeps_its_run_id(tmp_path):
    log = MetricsLogger(str(tmp_path), cfg("offline"))
    log.write(1, "train", {"loss": 1.0})
    log.close()
    runs = os.listdir(tmp_path / "wandb")
    run_id = (tmp_path / "wandb_run_id").read_text()
    assert run_id and any(r.startswith("offline-run-") and r.endswith(run_id) for r in runs)
    MetricsLogger(str(tmp_path), cfg("disabled")).close()
    assert (tmp_path / "wandb_run_id").read_text() == run_id
