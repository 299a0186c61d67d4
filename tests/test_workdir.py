"""A workdir's results are never lost or silently mixed: locks, the config check on resume, damaged
checkpoints, metrics.jsonl, lost evaluations, probes, Ctrl-C, faults and orphaned workers."""

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest
from PIL import Image
from probe_helpers import ROOT, load_config, pretrain_workdir, tiny_probe_config
from script_runner import killable_env, run_script

from naraim.errors import UserError
from naraim.infra.checkpoint import Checkpointer, restore_params
from naraim.infra.workdir import WorkdirLock, check_resume_config
from naraim.probe import step as probe_step
from naraim.probe.runner import run_probe
from naraim.train.trainer import train

TINY = {
    "batch_size": 8,
    "log_every": 1,
    "checkpoint_every": 2,
    "eval_every": 2,
    "progress_bar": False,
}


def tiny(total_steps: int = 4, **overrides):
    cfg = load_config("demo", "naraim")
    cfg.update(TINY, total_steps=total_steps)
    cfg.data.update(image_size=32, max_tokens=16)
    cfg.data.synthetic.update(train_size=64, validation_size=16)
    cfg.eval.update(num_examples=8, batch_size=8, num_images=0)
    cfg.eval.fewshot.enabled = False  # tested in test_fewshot.py; here it would only add time
    cfg.optim.update(warmup_steps=1, cooldown_steps=1)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return cfg


def records(workdir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_a_second_run_on_a_locked_workdir_is_one_line(tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            train(tiny(), str(tmp_path))
    assert "process" not in (tmp_path / ".lock").read_text()  # released
    with WorkdirLock(str(tmp_path)):  # a lock file left by a dead run never blocks: flock dies with it
        pass


@pytest.mark.slow
def test_resume_refuses_changed_keys_and_records_allowed_changes(tmp_path):
    train(tiny(4), str(tmp_path))
    for key, value, shown in (
        ("batch_size", 16, "batch_size: 8 -> 16"),
        ("seed", 3, "seed: 0 -> 3"),
        ("data.num_workers", 2, "data.num_workers: 0 -> 2"),
        ("model.posemb", "fractional", "model.posemb: 'absolute_sincos_2d' -> 'fractional'"),
    ):
        with pytest.raises(UserError, match="another config") as e:
            train(tiny(6, **{key: value}), str(tmp_path))
        assert shown in str(e.value) and "--force_config_change" in str(e.value)
    summary = train(tiny(6, eval_every=3), str(tmp_path))  # longer, evaluated at another interval: allowed
    assert summary["step"] == 6
    (entry,) = [json.loads(line) for line in open(tmp_path / "config_history.jsonl")]
    assert entry["step"] == 4 and not entry["forced"]
    assert entry["changes"]["total_steps"] == {"old": 4, "new": 6}
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 6
    assert check_resume_config(str(tmp_path), tiny(6, eval_every=3, seed=5), 6, force=True) == ["seed"]
    assert json.loads(open(tmp_path / "config_history.jsonl").read().splitlines()[-1])["forced"]


def test_a_key_added_since_the_run_was_written_is_allowed_and_recorded(tmp_path):
    cfg = tiny(4)
    saved = json.loads(cfg.to_json_best_effort())
    del saved["data"]["max_file_bytes"]  # a run written before the key existed
    saved["seed"] = 7
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="seed: 7 -> 0") as e:
        check_resume_config(str(tmp_path), cfg, 2)
    assert "max_file_bytes" not in str(e.value)
    saved["seed"] = 0
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_resume_config(str(tmp_path), cfg, 2) == ["data.max_file_bytes"]
    (entry,) = [json.loads(line) for line in open(tmp_path / "config_history.jsonl")]
    assert entry["changes"] == {"data.max_file_bytes": {"old": None, "new": cfg.data.max_file_bytes}}


@pytest.mark.slow
def test_a_scaled_smoke_run_can_be_extended(tmp_path, capsys):
    """A short run scales optim.warmup_steps and cooldown_steps down to fit; extending it rescales them
    for the new total_steps (part of the allowed total_steps change), while an explicitly changed warmup
    is still refused."""
    schedule = {"optim.warmup_steps": 80, "optim.cooldown_steps": 80, "eval_every": 100}
    train(tiny(4, **schedule), str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())["optim"]
    assert (saved["warmup_steps"], saved["cooldown_steps"]) == (1, 1)
    explicit = {**schedule, "optim.warmup_steps": 2, "optim.cooldown_steps": 2}  # fits: not scaled
    with pytest.raises(UserError, match=r"optim.cooldown_steps: 1 -> 2; optim.warmup_steps: 1 -> 2"):
        train(tiny(12, **explicit), str(tmp_path))
    summary = train(tiny(12, **schedule), str(tmp_path))
    assert summary["step"] == 12 and "resuming from step 4" in capsys.readouterr().err
    entry = [json.loads(line) for line in open(tmp_path / "config_history.jsonl")][-1]
    assert entry["changes"]["optim.warmup_steps"] == {"old": 1, "new": 3} and not entry["forced"]
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["cooldown_steps"] == 3


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one_with_one_line(tmp_path):
    args = ["--config.eval_every=2", "--config.eval.num_examples=8", "--config.checkpoint_every=2"]
    first = run_script(*_command(tmp_path, *args, "--config.total_steps=4")[1:], timeout=300)
    assert first.returncode == 0, first.stderr
    for data in (tmp_path / "checkpoints" / "4" / "state").glob("ocdbt.process_*/d/*"):
        data.write_bytes(data.read_bytes()[:20])  # every array file of the newest checkpoint truncated
    command = _command(tmp_path, *args, "--config.total_steps=6", "--config.progress_bar=False")
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    damaged = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and damaged[0].startswith("checkpoint at step 4 is damaged ("), proc.stderr
    assert "resuming from step 2" in proc.stderr
    expected = (
        "note:",
        "checkpoint at step 4",
        "resuming from",
        "compiling",
        "compiled in",
        "step ",
        "done:",
    )
    stray = [line for line in proc.stderr.splitlines() if not line.startswith(expected)]
    assert stray == [], proc.stderr  # no traceback, 'Event loop is closed' or unawaited-coroutine warning
    assert (tmp_path / "checkpoints_damaged" / "4").is_dir() and (tmp_path / "checkpoints" / "6").is_dir()
    steps = [r["step"] for r in records(tmp_path) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows after step 2 were replaced, each step once


@pytest.mark.slow
def test_a_folder_with_looping_links_a_pipe_and_a_huge_file_trains_in_bounded_memory(tmp_path):
    data = tmp_path / "data"
    for c, color in (("a", 40), ("b", 200)):
        (data / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + 8 * i, 32), (color, 10 * i, 90)).save(data / c / f"{i}.png")
    os.symlink(data / "a" / "loop2", data / "a" / "loop1")  # two file links pointing at each other
    os.symlink(data / "a" / "loop1", data / "a" / "loop2")
    os.mkfifo(data / "b" / "pipe.jpg")
    with open(data / "b" / "huge.jpg", "wb") as f:
        f.truncate(3 * 2**30)  # 3 GiB of zeros, sparse: a video renamed, a disk image
    args = [f"--config.data.source=folder:{data}", "--config.total_steps=3", "--config.eval.num_examples=4"]
    # the run's own peak resident memory (VmHWM after exec: wait4's ru_maxrss would count the pytest process
    # the child was forked from)
    command = _command(tmp_path / "run", *args)
    peak = tmp_path / "peak.txt"
    env = dict(os.environ, NARAIM_PEAK_FILE=str(peak))
    proc = subprocess.run(
        [command[0], "-c", _peak_wrapper(), *command[1:]], cwd=ROOT, capture_output=True, text=True, env=env
    )
    err = proc.stderr
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert int(peak.read_text().split()[1]) * 1024 < 2 * 2**30  # VmHWM is in kB
    assert "skipped 2 looping links" in err and "skipped 1 pipes (FIFOs)" in err
    assert "huge.jpg" in err and "exceed data.max_file_bytes" in err


@pytest.mark.slow
def test_metrics_survive_garbage_and_a_lost_evaluation_is_run_on_resume(tmp_path, capsys):
    train(tiny(4), str(tmp_path))
    path = tmp_path / "metrics.jsonl"
    kept = [r for r in records(tmp_path) if not (r["step"] == 4 and r["split"] == "val")]
    # killed after the save of step 4, before its evaluation; plus a torn line and stray bytes
    path.write_bytes(
        ("".join(json.dumps(r) + "\n" for r in kept) + '{"step": 5, "spl').encode() + b"\xff\xfe\n"
    )
    train(tiny(4), str(tmp_path))
    err = capsys.readouterr().err
    assert "step 4: its evaluation is missing" in err and "run already complete at step 4" in err
    rows = records(tmp_path)
    assert [(r["step"], r["split"]) for r in rows if r["split"] == "val"] == [(2, "val"), (4, "val")]
    assert all(isinstance(r["step"], int) for r in rows)


@pytest.mark.slow
def test_tokens_per_sec_counts_real_tokens(tmp_path):
    train(tiny(2), str(tmp_path))
    row = next(r for r in records(tmp_path) if r["split"] == "train")
    assert row["tokens_per_sec"] < row["padded_tokens_per_sec"] == pytest.approx(row["images_per_sec"] * 16)


def test_a_failing_save_is_one_line_naming_the_step_and_the_intact_checkpoint(tmp_path, monkeypatch):
    import jax.numpy as jnp

    ckpt = Checkpointer(str(tmp_path))
    state = {"w": jnp.ones(3)}
    ckpt.save(1, state, {"pos": 1})
    ckpt.wait()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", full)
    with pytest.raises(
        UserError, match="step 2 .*no space left on the device.*newest intact checkpoint is step 1"
    ):
        ckpt.save(2, state, {"pos": 2})
    ckpt.close()


def test_an_unwritable_workdir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to --workdir"):
        train(tiny(2), str(blocker / "run"))


@pytest.mark.slow
def test_probe_reruns_resume_and_never_mix(tmp_path, capsys):
    workdir = pretrain_workdir("naraim")
    with pytest.raises(UserError, match="is the pre-training run"):
        run_probe(tiny_probe_config(workdir), workdir)
    with pytest.raises(UserError, match="no checkpoint at step 999"):
        run_probe(tiny_probe_config(os.path.join(workdir, "checkpoints", "999")), str(tmp_path / "p"))
    cfg = tiny_probe_config(workdir)
    cfg.checkpoint_every = 2
    first = run_probe(cfg, str(tmp_path / "p"))
    rows = records(tmp_path / "p")
    same = tiny_probe_config(workdir)
    same.checkpoint_every = 2
    again = run_probe(same, str(tmp_path / "p"))
    assert "probe already complete" in capsys.readouterr().err
    assert again == first and records(tmp_path / "p") == rows  # nothing deleted, nothing appended
    other = tiny_probe_config(workdir)
    other.update(checkpoint_every=2, batch_size=16)
    with pytest.raises(UserError, match="batch_size: 8 -> 16"):
        run_probe(other, str(tmp_path / "p"))


@pytest.mark.slow
def test_a_stopped_probe_resumes_from_its_checkpoint_to_the_same_heads(tmp_path, monkeypatch, capsys):
    workdir = pretrain_workdir("naraim")
    cfg = tiny_probe_config(workdir)
    cfg.update(checkpoint_every=2, total_steps=6)
    run_probe(cfg, str(tmp_path / "reference"))
    checks = []

    def stop_before_step_5():  # the loop checks for Ctrl-C before each step
        checks.append(1)
        if len(checks) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(probe_step, "raise_if_stopped", stop_before_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_probe(cfg, str(tmp_path / "resumed"))  # the same command, stopped after its step-4 checkpoint
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["2", "4"]
    checks.clear()
    monkeypatch.setattr(probe_step, "raise_if_stopped", lambda: checks.append(1))
    capsys.readouterr()
    run_probe(cfg, str(tmp_path / "resumed"))
    assert "resuming the probe from step 4" in capsys.readouterr().err and len(checks) == 2  # steps 5, 6
    heads, _, step = restore_params(str(tmp_path / "reference"))
    resumed, _, resumed_step = restore_params(str(tmp_path / "resumed"))
    assert step == resumed_step == 6
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(heads), jax.tree.leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _peak_wrapper() -> str:
    """scripts/stress_workdir.py's PEAK_WRAPPER: runs a script, writes its VmHWM line to $NARAIM_PEAK_FILE."""
    spec = importlib.util.spec_from_file_location(
        "stress_workdir", os.path.join(ROOT, "scripts", "stress_workdir.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PEAK_WRAPPER


def _command(workdir, *extra):
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "pretrain.py"),
        "--config=configs/demo.py:naraim",
        f"--workdir={workdir}",
        "--config.total_steps=100000",
        "--config.batch_size=8",
        "--config.data.image_size=32",
        "--config.data.max_tokens=16",
        "--config.log_every=1",
        "--config.checkpoint_every=1000",
        "--config.eval.num_examples=0",
        *extra,
    ]


def _wait_for_steps(proc, workdir, deadline=240):
    end = time.time() + deadline
    while time.time() < end and proc.poll() is None:
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path) and len(open(path).read().splitlines()) >= 3:
            return
        time.sleep(0.1)
    raise AssertionError("the run did not start training")


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_and_ends_with_one_line(tmp_path):
    proc = subprocess.Popen(
        _command(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_steps(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    step = int(errors[0].split("interrupted at step ")[1].split(";")[0])
    assert f"the checkpoint at step {step} is kept" in errors[0] and "re-run the same command" in errors[0]
    assert (tmp_path / "checkpoints" / str(step)).is_dir()


@pytest.mark.slow
def test_worker_processes_die_with_a_killed_trainer(tmp_path):
    proc = subprocess.Popen(
        _command(tmp_path, "--config.data.num_workers=2"),
        cwd=ROOT,
        env=killable_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_steps(proc, tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [p.cmdline()[:3] for p in alive]


@pytest.mark.slow
def test_a_lost_input_worker_ends_the_run_with_one_line(tmp_path):
    proc = subprocess.Popen(
        _command(tmp_path, "--config.data.num_workers=2", "--config.checkpoint_every=5"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_steps(proc, tmp_path)
    workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[0].kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if not line.startswith(("train:", "compil", "starting"))]
    assert len(lines) == 1 and lines[0].startswith("error: the input pipeline failed before step "), err
    assert "re-run the same command to resume" in lines[0] and "is kept in" in lines[0]
