"""The codebase's layout rules, checked on the source: no import cycles, no file over 400 lines, one
objective interface (no objective-name comparisons where the objective is used), configs that compose."""

import ast
import os

import pytest
from probe_helpers import ROOT, load_config

from naraim.errors import UserError
from naraim.infra.options import Option, helps, overlay, section
from naraim.probe.config import PROBE_OPTIONS
from naraim.train.config import PRETRAIN_OPTIONS

PACKAGE = os.path.join(ROOT, "naraim")


def _modules() -> dict[str, str]:
    """module name -> path of every naraim module."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The naraim modules `path` imports at module level or in functions."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("naraim"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("naraim"))
    return {m for m in found if m in modules}


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_file_over_400_lines():
    long = {m: n for m, p in _modules().items() if (n := len(open(p).readlines())) > 400}
    assert not long, long


@pytest.mark.parametrize("path", ["naraim/train/step.py", "naraim/train/evaluation.py", "naraim/generate.py"])
def test_the_objective_is_used_through_its_interface(path):
    """No comparison with an objective's name where the objective is used (naraim/objectives/objective.py
    chooses it once)."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    names = {"mse", "diffusion"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            constants = [c for c in ast.walk(node) if isinstance(c, ast.Constant)]
            assert not any(c.value in names for c in constants), f"{path}:{node.lineno} compares objectives"


def test_every_config_key_has_its_meaning_and_default_in_one_definition():
    for definition in (PRETRAIN_OPTIONS, PROBE_OPTIONS):
        meanings = helps(definition)
        assert meanings and all(text.strip() for text in meanings.values())
        assert sorted(meanings) == sorted(_leaves(section(definition)))


def _leaves(cfg, prefix=""):
    out = []
    for key, value in cfg.items():
        out += _leaves(value, f"{prefix}{key}.") if hasattr(value, "items") else [prefix + key]
    return out


def test_section_defaults_placeholders_and_overlay():
    definition = {"a": Option(1, "x"), "b": Option(None, "y", kind=int), "c": {"d": Option((1, 2), "z")}}
    cfg = section(definition)
    assert cfg.a == 1 and cfg.b is None and cfg.c.d == (1, 2)
    cfg.b = 3  # a placeholder takes a value of its kind
    with pytest.raises(TypeError):
        cfg.b = "three"
    with pytest.raises(KeyError):
        section(definition, nope=1)
    merged = overlay(section(definition), {"a": 5, "b": None, "c": {"d": [3, 4]}, "new": "kept"})
    assert (merged.a, merged.b, merged.c.d, merged.new) == (5, None, (3, 4), "kept")


def test_variants_apply_in_the_files_order_whatever_the_command_lines():
    one, other = (load_config("probe", v).to_dict() for v in ("sweep,linear", "linear,sweep"))
    assert one.pop("variant") == "sweep,linear" and other.pop("variant") == "linear,sweep"
    assert one == other
    assert load_config("probe", "small,knn").protocol == "knn"
    with pytest.raises(UserError, match="unknown config variant"):
        load_config("naraim_b14", "fractional,bogus")
