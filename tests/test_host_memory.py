import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from script_runner import starts_a_backend_when_imported

# A thread allocates and frees 64 MB four times; prints whether the setting was applied and the most
# page faults one of the last three allocations took (64 MB is 16384 pages of 4 KiB).
PROBE = """
import resource, sys, threading
from naraim.host_memory import keep_freed_host_memory
applied = keep_freed_host_memory() if sys.argv[1] == "on" else False
faults = []
def work():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(64 << 20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del block
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(applied, max(faults[1:]))
"""


def _probe(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    out = out.stdout.split()
    return out[0], int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_freed_blocks_stay_mapped_on_the_cpu_backend():
    applied, faults = _probe("on")
    assert applied == "True"
    assert faults < 1000  # the freed block was reused
    applied, faults = _probe("off")
    assert applied == "False" and faults > 10000  # without it every allocation maps fresh pages


@pytest.mark.slow
def test_not_applied_when_an_accelerator_is_asked_for():
    check = "from naraim.host_memory import runs_on_cpu_only; print(runs_on_cpu_only())"
    for platforms, expected in (("cuda", "False"), ("cpu", "True")):
        env = {**os.environ, "JAX_PLATFORMS": platforms}
        out = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True
        )
        assert out.stdout.strip() == expected


SCRIPTS = sorted(
    p.name for p in (Path(__file__).parent.parent / "scripts").glob("*.py") if "run_main(" in p.read_text()
)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_leave_the_backend_to_run_main(script):
    """Importing a script starts no JAX backend, so run_main's allocator setting comes first."""
    assert not starts_a_backend_when_imported(f"scripts/{script}")
