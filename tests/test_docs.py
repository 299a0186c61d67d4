"""The docs state facts the code decides: config keys and defaults (docs/configs.md is regenerated), links
between pages, that every command in README.md parses, and that nothing points outside the repository."""

import os
import re
import shlex

import pytest
from script_runner import run_script

from naraim.config_docs import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [
    "README.md",
    "CONTRIBUTING.md",
    *(os.path.join("docs", p) for p in sorted(os.listdir(os.path.join(ROOT, "docs"))) if p.endswith(".md")),
]


def read(path: str) -> str:
    return open(os.path.join(ROOT, path), encoding="utf-8").read()


def test_configs_page_is_current():
    assert read("docs/configs.md") == render() + "\n", "run python scripts/config_docs.py"


@pytest.mark.parametrize("page", PAGES)
def test_links_between_pages_resolve(page):
    folder = os.path.dirname(os.path.join(ROOT, page))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
        if target.startswith(("http://", "https://")):
            continue
        assert os.path.exists(os.path.join(folder, target)), f"{page} links to a missing {target}"


def test_nothing_points_outside_the_repository():
    """A clone has no ../shared: only the clothing-small examples (which skip without it) may name it."""
    offenders = []
    for folder in ("naraim", "configs", "scripts", "docs"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".md", ".sh")):
                    path = os.path.join(dirpath, name)
                    for line in open(path, encoding="utf-8"):
                        if "../shared" in line and "../shared/datasets/clothing-small" not in line:
                            offenders.append(os.path.relpath(path, ROOT))
    for page in ("README.md", "CONTRIBUTING.md"):
        if re.search(r"\.\./shared(?!/datasets/clothing-small)", read(page)):
            offenders.append(page)
    assert not offenders, offenders


def readme_commands() -> list[list[str]]:
    """The `python scripts/...` commands of README.md's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", read("README.md"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part.split("#")[0])
                if len(words) > 1 and words[0] == "python" and words[1].startswith("scripts/"):
                    commands.append(words[1:])
    return commands


def test_readme_has_commands():
    scripts = {c[0] for c in readme_commands()}
    assert {
        "scripts/pretrain.py",
        "scripts/probe.py",
        "scripts/study.py",
        "scripts/benchmark_train.py",
    } <= scripts


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c)[:60])
def test_every_readme_command_parses(command):
    """Each command with --help: the script exists, its flags parse and its config (with the overrides)
    loads and validates its keys."""
    r = run_script(*command, "--help")
    assert r.returncode == 0, r.stderr[-1500:]
