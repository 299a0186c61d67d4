"""scripts/compare.py: table of several probe runs and one chart."""

from pathlib import Path

import numpy as np
import pytest
from script_runner import run_script

from naraim.errors import UserError
from naraim.probe.results import format_table, load_runs, summarize, write_results

SCRIPT = str(Path(__file__).resolve().parents[1] / "scripts" / "compare.py")


def _run(tmp_path, name, top1, ar, edges=(0.0, 1.0, float("inf"))):
    d = tmp_path / name
    d.mkdir()
    write_results(str(d), summarize(np.array(top1, bool), np.ones(len(top1), bool), np.array(ar), edges))
    return str(d)


def test_table_lists_runs_side_by_side(tmp_path):
    a = _run(tmp_path, "naraim", [1, 1, 0, 1], [0.5, 1.5, 2.0, 3.0])
    b = _run(tmp_path, "aim", [1, 0, 0, 0], [0.5, 1.5, 2.0, 3.0])
    lines = format_table(load_runs([a, b])).splitlines()
    assert lines[0].split() == ["naraim", "aim"]
    assert lines[2].split() == ["top-1", "(%)", "75.0", "25.0"]
    assert lines[-2].split() == ["AR", "[0,", "1)", "100.0", "(1)", "100.0", "(1)"]
    assert lines[-1].split() == ["AR", "[1,", "inf)", "66.7", "(3)", "0.0", "(3)"]


def test_runs_with_different_bins_are_a_user_error(tmp_path):
    a = _run(tmp_path, "a", [1], [0.5])
    b = _run(tmp_path, "b", [1], [0.5], edges=(0.0, 2.0))
    with pytest.raises(UserError, match="different aspect-ratio bins"):
        load_runs([a, b])


@pytest.mark.slow
def test_script_prints_table_and_draws_chart(tmp_path):
    a = _run(tmp_path, "a", [1, 0], [0.5, 2.0])
    b = _run(tmp_path, "b", [1, 1], [0.5, 2.0])
    png = tmp_path / "cmp.png"
    r = run_script(SCRIPT, a, b, "--plot", str(png))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "top-1 (%)" in out and "50.0" in out and "100.0" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_script_missing_run_exits_with_one_line(tmp_path):
    proc = run_script(SCRIPT, str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "results.json" in proc.stderr
