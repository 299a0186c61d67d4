"""docs/reproducing.md is checked against the configs: every documented value is what the config resolves
to, and every test it names exists."""

import ast
import os
import re

import pytest
from probe_helpers import ROOT, load_config

DOC = os.path.join(ROOT, "docs", "reproducing.md")
HEADING = re.compile(r"^## .*`configs/(\w+)\.py(?::(\w+))?`")
ROW = re.compile(
    r"^\| (?P<setting>[^|]+) \| (?P<ref>[^|]+) \| `(?P<key>[^`]+)` \| `(?P<value>[^`]+)` \| "
    r"`(?P<test>[^`]+)` \|$"
)


def documented_rows() -> list[tuple[str, str, str, object, str]]:
    """(config file, variant, key, value, test) of every table row."""
    rows, current = [], None
    for line in open(DOC):
        line = line.rstrip("\n")
        if m := HEADING.match(line):
            current = (m.group(1), m.group(2) or "")
        elif line.startswith("## "):
            current = None
        elif current and (m := ROW.match(line)):
            config, variant = current
            key = m.group("key")
            if key.startswith("configs/"):  # a row about another config: `configs/probe.py:variant key`
                spec, key = key.split(" ")
                config, _, variant = spec.removeprefix("configs/").removesuffix(".py").partition(":")
                config = config.split(".py")[0]
            rows.append((config, variant, key, ast.literal_eval(m.group("value")), m.group("test")))
    return rows


ROWS = documented_rows()


def test_the_tables_document_every_paper_config():
    configs = {(c, v) for c, v, *_ in ROWS}
    assert {("naraim_b14", ""), ("naraim_b14", "no_norm"), ("aim_b14", ""), ("aim_600m", "")} <= configs
    assert {
        ("darl_l16", ""),
        ("probe", "naraim"),
        ("probe", "darl_linear"),
        ("probe", "darl_finetune"),
    } <= configs
    assert len(ROWS) > 60


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return tuple(cfg) if isinstance(cfg, list | tuple) else cfg


@pytest.mark.parametrize(
    "config, variant, key, value, test", ROWS, ids=[f"{c}:{v}:{k}" for c, v, k, *_ in ROWS]
)
def test_paper_configs_resolve_to_the_documented_values(config, variant, key, value, test):
    cfg = load_config(config, variant)
    assert _get(cfg, key) == value
    path, _, name = test.partition("::")
    assert f"def {name}(" in open(os.path.join(ROOT, path)).read(), f"{test} does not exist"
