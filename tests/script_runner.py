"""Runs a script as `python SCRIPT ARGS` would in the repository root, in a child forked from a server that
has already imported every module the scripts import (multiprocessing's forkserver, started once per test
process): a script starts in a fraction of a second instead of the ~4 s a fresh interpreter spends
importing jax, orbax and matplotlib. For tests of a script's flags, output and one-line errors.

The child ends with os._exit, without the interpreter's shutdown. What only a fresh interpreter shows (what
a run prints as it ends, signals, the allocator setting, killed runs, several processes) is tested with
real subprocesses."""

import ast
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from jax._src import xla_bridge

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _imported_modules() -> list[str]:
    """The modules the scripts import at their top level."""
    names = set()
    for script in SCRIPTS.glob("*.py"):
        for node in ast.parse(script.read_text()).body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return sorted(names)


_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(_imported_modules())


def _run_script(path: str, args: list[str], env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: stdout and stderr to files, then the script as __main__; exits with the status a
    Python process running it would have."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(ROOT)
    sys.argv = [path, *args]
    sys.path[0] = str(ROOT / os.path.dirname(path))
    with open(out, "w") as o, open(err, "w") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter would print and exit with
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _import_script(path: str, out: str) -> None:
    """In the forked child: imports the script (not as __main__) and writes whether a JAX backend started."""
    os.chdir(ROOT)
    sys.argv = [path]
    runpy.run_path(path, run_name="imported")
    Path(out).write_text(str(xla_bridge.backends_are_initialized()))


def _in_child(target, args: tuple, timeout: float) -> int:
    child = _CONTEXT.Process(target=target, args=args)
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
        raise TimeoutError(f"{args[0]} ran for more than {timeout} s")
    return child.exitcode


def run_script(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` in the repository root (SCRIPT relative to it) -> exit status, stdout, stderr.

    `env` is the script's os.environ; JAX's own settings (JAX_*, XLA_FLAGS) were read when the server
    imported jax, from the test process's environment, so `env` does not change them."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        code = _in_child(_run_script, (script, list(args), env or dict(os.environ), out, err), timeout)
        return subprocess.CompletedProcess([sys.executable, script, *args], code, *map(_read, (out, err)))


def killable_env() -> dict[str, str]:
    """The environment for a real subprocess a test SIGKILLs: it reads JAX's compilation cache
    (tests/conftest.py) but writes no entry, which a kill in mid-write would leave truncated."""
    return {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def starts_a_backend_when_imported(script: str) -> bool:
    """Whether importing SCRIPT (relative to the repository root) starts a JAX backend."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        code = _in_child(_import_script, (script, out), 120)
        assert code == 0, f"importing {script} failed"
        return _read(out) == "True"


def _read(path: str) -> str:
    return Path(path).read_text() if os.path.exists(path) else ""
