"""Every script: --help lists its flags (and the config's keys) with exit status 0; a bad flag or value ends
with one line and a non-zero status; misspelt config keys get a suggestion."""

import os
import re
import subprocess

import pytest
from script_runner import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    "pretrain.py": ["--workdir"],
    "probe.py": ["--workdir"],
    "benchmark_train.py": ["--steps"],
    "generate.py": ["--init_from"],
    "compare.py": ["--plot"],
    "prepare_data.py": ["--max_area"],
    "benchmark_input.py": ["--num_workers"],
    "study.py": ["--budget_minutes"],
    "make_benchmark_jpegs.py": ["--count"],
    "stress_workdir.py": ["--kills"],
    "config_docs.py": ["--check"],
    "inspect_data.py": ["--split", "--num", "--out", "--train"],
    "record_reference.py": [],
    "compare_reference_training.py": ["--reference_repo", "--reference_python", "--steps"],
    "export.py": ["--workdir", "--out", "--step", "--grid"],
    "timm_check.py": [],
    "import_weights.py": ["--format", "--checkpoint", "--variant", "--out", "--image_size"],
}
CLI_DOC = open(os.path.join(ROOT, "docs", "cli.md")).read()


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_script(f"scripts/{script}", *args)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if not line.startswith("WARNING")]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_the_flags_and_exits_0(script):
    r = run(script, "--help")
    assert r.returncode == 0, r.stderr
    for flag in SCRIPTS[script]:
        assert flag in r.stdout, r.stdout
    if script in ("pretrain.py", "probe.py", "benchmark_train.py"):
        assert "config keys" in r.stdout and "batch_size = " in r.stdout
        flags_part = r.stdout.split("config keys")[0]
    else:
        flags_part = r.stdout
    # docs/cli.md names the script and every flag its --help lists
    assert f"scripts/{script}" in CLI_DOC
    listed = {
        m
        for m in re.findall(r"--(?:\[no\])?([a-z][a-z_]+)", flags_part)
        if m not in ("help", "helpfull", "config")
    }
    missing = sorted(f for f in listed if f"--{f}" not in CLI_DOC)
    assert not missing, f"docs/cli.md does not name {missing} of scripts/{script}"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_an_unknown_flag_is_one_line(script):
    r = run(script, "--no_such_flag=1")
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr


@pytest.mark.slow
def test_helpfull_and_a_config_given_to_help():
    r = run("pretrain.py", "--helpfull")
    assert r.returncode == 0 and "--workdir" in r.stdout
    r = run("pretrain.py", "--config=configs/demo.py:aim", "--help")
    assert r.returncode == 0 and "configs/demo.py:aim" in r.stdout and "model.variant = 'Pico/8'" in r.stdout


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.optim.lrr=1e-3", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("--config.total_step=10", "unknown config key 'total_step'; did you mean 'total_steps'?"),
        (
            "--config.data.imagesize=64",
            "unknown config key 'data.imagesize'; did you mean 'data.image_size'?",
        ),
        ("--config.model.varaint=B/16", "unknown config key 'model.varaint'; did you mean 'model.variant'?"),
        ("--config.zzz=1", "unknown config key 'zzz': check the spelling of --config.zzz"),
    ],
)
@pytest.mark.slow
def test_misspelt_keys_get_one_line_with_a_suggestion(override, expected):
    r = run("pretrain.py", "--config=configs/demo.py", "--workdir=/tmp/naraim_unused", override)
    assert r.returncode == 1
    assert error_lines(r.stderr) == [f"error: {expected}"]


@pytest.mark.slow
def test_probe_says_which_model_keys_may_be_overridden():
    r = run(
        "probe.py", "--config=configs/probe.py", "--workdir=/tmp/naraim_unused", "--config.model.variant=B/16"
    )
    assert r.returncode == 1
    (line,) = error_lines(r.stderr)
    assert "'model.variant' may not be overridden here" in line and "model.dtype" in line


@pytest.mark.slow
def test_a_missing_config_file_is_named_without_the_variant():
    r = run("pretrain.py", "--config=configs/dmeo.py:naraim", "--workdir=/tmp/naraim_unused")
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        "error: config file 'configs/dmeo.py' not found: pass --config=configs/<file>.py[:variant]"
    ]
