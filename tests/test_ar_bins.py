"""Aspect-ratio bins, top-k correctness and the results.json summary."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from naraim.errors import UserError
from naraim.probe.results import (
    DEFAULT_EDGES,
    Accumulator,
    assign_bins,
    read_results,
    summarize,
    topk_correct,
    write_results,
)


def test_bins_are_half_open_and_cover_wide_images():
    ar = np.array([0.0, 0.3, 0.5, 0.74, 0.75, 1.0, 1.329, 1.33, 1.99, 2.0, 7.5, 1e9])
    assert assign_bins(ar, DEFAULT_EDGES).tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4]


def test_values_outside_custom_edges_get_no_bin():
    assert assign_bins(np.array([0.2, 0.6, 1.5, 3.0]), (0.5, 1.0, 2.0)).tolist() == [-1, 0, 1, -1]


@pytest.mark.parametrize("edges", [(1.0,), (0.0, 1.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_edges_are_a_user_error(edges):
    with pytest.raises(UserError, match="aspect_ratio_bins"):
        assign_bins(np.array([1.0]), edges)


def test_topk_correct():
    logits = jnp.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    label = jnp.array([1, 2, 0])
    assert topk_correct(logits, label, 1).tolist() == [True, False, False]
    assert topk_correct(logits, label, 2).tolist() == [True, True, False]
    assert topk_correct(logits, label, 5).tolist() == [True, True, True]


def test_accumulator_drops_padding_examples_and_summary_counts_per_bin():
    acc = Accumulator()
    acc.add(
        np.array([1, 0, 1, 1], bool),
        np.array([1, 1, 1, 1], bool),
        np.array([0.4, 1.0, 1.0, 3.0]),
        np.array([1, 1, 1, 0], bool),
    )
    acc.add(np.array([0, 1], bool), np.array([0, 1], bool), np.array([2.5, 1.2]), np.array([1, 1], bool))
    res = summarize(*acc.arrays(), DEFAULT_EDGES)
    assert res["num_examples"] == 5
    assert res["top1"] == pytest.approx(3 / 5) and res["top5"] == pytest.approx(4 / 5)
    per = {tuple(b["bin"]): (b["count"], b["top1"]) for b in res["per_aspect_ratio_bin"]}
    assert per[(0.0, 0.5)] == (1, 1.0)
    assert per[(0.5, 0.75)] == (0, None)
    assert per[(0.75, 1.33)] == (3, pytest.approx(2 / 3))
    assert per[(2.0, math.inf)] == (1, 0.0)


def test_results_json_is_strict_json_and_round_trips_infinity(tmp_path):
    res = summarize(np.array([True, False]), np.array([True, True]), np.array([0.9, 5.0]), DEFAULT_EDGES)
    write_results(str(tmp_path), res)
    text = (tmp_path / "results.json").read_text()
    raw = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert raw["per_aspect_ratio_bin"][-1]["bin"] == [2.0, None]
    assert read_results(str(tmp_path)) == res


def test_reading_a_run_without_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="results.json"):
        read_results(str(tmp_path))
