"""Replay every fault naraim has handled and print one line per fault: "held" or "broken", with the peak
resident memory of the processes it ran.

  python scripts/stress_workdir.py [--workdir /tmp/naraim_stress] [--kills 6]

Each fault runs the demo config (a tiny ViT on synthetic images) through the real scripts in subprocesses:
concurrent runs, SIGKILLs during checkpoint saves (resumed bitwise), changed configs on resume, damaged
checkpoints (set aside with one line and nothing else on the console), metrics and config files, a kill
between a save and its evaluation, probe re-runs and probes of a run that is still training, bad data (a
folder link loop, file links pointing at each other, dangling links, a link out of the folder, a pipe, a
socket, a device, a 3 GiB non-image, a malformed ArrayRecord record, a 1 x 3,000,000 PNG), an unwritable
workdir and orphaned worker processes. About 9 minutes on a 2-core CPU. docs/training.md lists what the user
sees for each; the tests in tests/test_workdir.py and tests/test_data_decode.py check the same faults.
"""

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from naraim.cli import ArgumentParser, run_main
from naraim.data.sources.arrayrecord import encode_record
from naraim.infra.checkpoint import restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config=configs/demo.py:naraim",
    "--config.batch_size=8",
    "--config.data.image_size=32",
    "--config.data.max_tokens=16",
    "--config.log_every=1",
    "--config.eval.num_examples=8",
    "--config.eval.batch_size=8",
    "--config.eval.num_images=0",
    "--config.progress_bar=False",
]


PEAK_BYTES = [0]  # the largest peak resident memory of a waited-for script in the current fault
# Runs the script given as its first argument and writes its /proc VmHWM line (peak resident memory since
# exec) to $NARAIM_PEAK_FILE at exit.
PEAK_WRAPPER = (
    "import atexit, os, runpy, sys\n"
    "def peak():\n"
    "    line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM'))\n"
    "    open(os.environ['NARAIM_PEAK_FILE'], 'w').write(line)\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def script(name: str, *args: str, wait: bool = True, timeout: int = 300):
    """Runs scripts/NAME; with `wait`, a CompletedProcess (text output) and its peak memory in PEAK_BYTES."""
    path = os.path.join(ROOT, "scripts", name)
    if not wait:
        cmd = [sys.executable, path, *args]
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with tempfile.NamedTemporaryFile("r") as peak:
        env = dict(os.environ, NARAIM_PEAK_FILE=peak.name)
        cmd = [sys.executable, "-c", PEAK_WRAPPER, path, *args]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        line = peak.read().split()
    if line:
        PEAK_BYTES[0] = max(PEAK_BYTES[0], int(line[1]) * 1024)
    return result


def pretrain(workdir: str, steps: int, *extra: str, wait: bool = True):
    args = [f"--workdir={workdir}", f"--config.total_steps={steps}", "--config.checkpoint_every=2"]
    return script("pretrain.py", *TINY, *args, "--config.eval_every=4", *extra, wait=wait)


def one_line(result, needle: str) -> bool:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return (
        result.returncode != 0
        and len(errors) == 1
        and needle in errors[0]
        and "Traceback" not in result.stderr
    )


def steps_saved(workdir: str) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def attack_concurrent(root: str) -> bool:
    first = pretrain(f"{root}/concurrent", 400, wait=False)
    time.sleep(15)
    second = pretrain(f"{root}/concurrent", 400)
    first.kill()
    first.wait()
    return one_line(second, "is in use by process")


def attack_kills(root: str, kills: int) -> bool:
    reference, killed = f"{root}/reference", f"{root}/killed"
    pretrain(reference, 12, "--config.checkpoint_every=1")
    for k in range(kills):
        proc = pretrain(killed, 12, "--config.checkpoint_every=1", wait=False)
        end = time.time() + 120
        target = min(11, 2 * (k + 1))
        while time.time() < end and proc.poll() is None and max(steps_saved(killed), default=0) < target:
            time.sleep(0.002)
        proc.kill()
        proc.wait()
    pretrain(killed, 12, "--config.checkpoint_every=1")
    a, _, sa = restore_params(reference)
    b, _, sb = restore_params(killed)
    same = all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))
    return sa == sb == 12 and same


def _leaves(tree):
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from _leaves(tree[key])
    else:
        yield tree


def attack_changed_config(root: str) -> bool:
    workdir = f"{root}/changed"
    pretrain(workdir, 4)
    held = one_line(pretrain(workdir, 6, "--config.batch_size=16"), "batch_size: 8 -> 16")
    held &= one_line(pretrain(workdir, 6, "--config.seed=3"), "seed: 0 -> 3")
    held &= one_line(pretrain(workdir, 6, "--config.data.num_workers=2"), "data.num_workers: 0 -> 2")
    ok = pretrain(workdir, 6)
    return held and ok.returncode == 0 and os.path.exists(f"{workdir}/config_history.jsonl")


QUIET_RESUME = (
    "note:",
    "checkpoint at step 4 is damaged",
    "resuming from",
    "compiling",
    "compiled in",
    "step ",
)


def attack_damaged_checkpoints(root: str) -> bool:
    held = True
    for damage in ("truncate", "delete", "manifest", "metadata", "every array file"):
        workdir = f"{root}/damaged_{damage}"
        pretrain(workdir, 4)
        state = os.path.join(workdir, "checkpoints", "4", "state")
        files = sorted((os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs), key=os.path.getsize)
        if damage == "truncate":
            with open(files[-1], "r+b") as f:
                f.truncate(10)
        elif damage == "delete":
            os.remove(files[-1])
        elif damage == "manifest":
            for path in files:
                if "manifest" in os.path.basename(path):
                    open(path, "wb").write(b"garbage")
        elif damage == "metadata":
            for path in files:
                if os.path.basename(path) == "_METADATA":
                    os.remove(path)
        else:
            for path in files:
                if os.sep + "d" + os.sep in path:
                    with open(path, "r+b") as f:
                        f.truncate(20)
        result = pretrain(workdir, 6, "--config.progress_bar=False")
        held &= result.returncode == 0 and "resuming from step 2" in result.stderr
        lines = [line for line in result.stderr.splitlines() if not line.startswith("train:")]
        held &= sum("is damaged" in line for line in lines) == 1
        held &= all(line.startswith((*QUIET_RESUME, "done:")) for line in lines)  # nothing else
    return held


def attack_metrics_and_config(root: str) -> bool:
    workdir = f"{root}/files"
    pretrain(workdir, 4)
    with open(f"{workdir}/metrics.jsonl", "ab") as f:
        f.write(b'{"step": 9, "spl\xff\xfe\n')
    held = pretrain(workdir, 6).returncode == 0
    open(f"{workdir}/config.json", "w").write("{ not json")
    held &= one_line(pretrain(workdir, 8), "damaged or unreadable")
    return held


def attack_lost_evaluation(root: str) -> bool:
    workdir = f"{root}/lost_eval"
    pretrain(workdir, 4)
    rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    kept = [r for r in rows if not (r["step"] == 4 and r["split"] == "val")]
    open(f"{workdir}/metrics.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in kept))
    result = pretrain(workdir, 4)
    rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    return result.returncode == 0 and any(r["step"] == 4 and r["split"] == "val" for r in rows)


def probe(init_from: str, workdir: str, *extra: str, wait: bool = True):
    args = [
        "--config=configs/probe.py",
        f"--workdir={workdir}",
        f"--config.init_from={init_from}",
        "--config.total_steps=4",
        "--config.batch_size=8",
        "--config.checkpoint_every=2",
        "--config.probe.last_k=2",
        "--config.progress_bar=False",
    ]
    return script("probe.py", *args, *extra, wait=wait)


def attack_probes(root: str) -> bool:
    run = f"{root}/files_probe_source"
    pretrain(run, 4)
    held = probe(run, f"{root}/p").returncode == 0
    rows = open(f"{root}/p/metrics.jsonl").read()
    again = probe(run, f"{root}/p")
    held &= again.returncode == 0 and "already complete" in again.stderr
    held &= open(f"{root}/p/metrics.jsonl").read() == rows
    held &= one_line(probe(run, run), "is the pre-training run")
    held &= one_line(probe(f"{run}/checkpoints/999", f"{root}/p999"), "no checkpoint at step 999")
    broken = f"{root}/cut_config"
    shutil.copytree(run, broken)
    text = open(f"{broken}/config.json").read()
    open(f"{broken}/config.json", "w").write(text[: len(text) // 2])
    held &= one_line(probe(broken, f"{root}/pcut"), "damaged or unreadable")
    return held


def attack_probe_while_training(root: str) -> bool:
    run = f"{root}/training"
    trainer = pretrain(run, 3000, "--config.keep_checkpoints=1", "--config.checkpoint_every=1", wait=False)
    end = time.time() + 120
    while time.time() < end and not steps_saved(run):
        time.sleep(0.2)
    results = [probe(run, f"{root}/race_{i}") for i in range(3)]
    trainer.kill()
    trainer.wait()
    return all(r.returncode == 0 and "Traceback" not in r.stderr for r in results)


def _image_folder(data: str) -> None:
    for c in ("a", "b"):
        os.makedirs(f"{data}/{c}", exist_ok=True)
        for i in range(6):
            Image.new("RGB", (60 + 10 * i, 40), (40 * i, 90, 10)).save(f"{data}/{c}/{i}.png")


def attack_odd_entries(root: str) -> bool:
    data = f"{root}/odd_entries"
    _image_folder(data)
    os.symlink(f"{data}/a", f"{data}/a/loop")
    os.symlink(f"{data}/a/loop2", f"{data}/a/loop1")
    os.symlink(f"{data}/a/loop1", f"{data}/a/loop2")
    os.symlink(f"{data}/a/nowhere.png", f"{data}/a/dangling.png")
    os.symlink("/", f"{data}/b/root")
    os.symlink("/dev/zero", f"{data}/b/zero.jpg")
    os.mkfifo(f"{data}/b/pipe.jpg")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(f"{data}/b/sock.jpg")
        result = pretrain(f"{root}/odd_run", 4, f"--config.data.source=folder:{data}")
    err = result.stderr
    counts = ("2 looping links", "1 dangling links", "1 links to folders", "1 device", "1 pipes", "1 sockets")
    return result.returncode == 0 and "Traceback" not in err and all(f"skipped {c}" in err for c in counts)


def attack_huge_file(root: str) -> bool:
    data = f"{root}/huge"
    _image_folder(data)
    with open(f"{data}/b/huge.jpg", "wb") as f:
        f.truncate(3 * 2**30)  # sparse: no disk space used
    result = pretrain(f"{root}/huge_run", 4, f"--config.data.source=folder:{data}")
    return result.returncode == 0 and "exceed data.max_file_bytes" in result.stderr and PEAK_BYTES[0] < 2**31


def attack_bad_data(root: str) -> bool:
    data = f"{root}/baddata"
    _image_folder(data)
    Image.new("RGB", (3_000_000, 1), (200, 10, 10)).save(f"{data}/b/long.png")
    result = pretrain(f"{root}/bad_run", 4, f"--config.data.source=folder:{data}")
    held = result.returncode == 0
    shards = f"{root}/shards"
    os.makedirs(shards)
    writer = ArrayRecordWriter(f"{shards}/train-0.array_record", "group_size:1")
    for i in range(16):
        buf = io.BytesIO()
        Image.new("RGB", (48, 40), (10 * i, 50, 90)).save(buf, "PNG")
        writer.write(encode_record(buf.getvalue(), i % 2, f"img{i}") if i != 3 else struct.pack("<hb", 1, 2))
    writer.close()
    open(f"{shards}/dataset.json", "w").write('{"classes": ["x", "y"], "record_format": 2}')
    source = f"--config.data.source=arrayrecord:{shards}/train-*.array_record"
    held &= pretrain(f"{root}/bad_records", 4, source, "--config.eval.num_examples=0").returncode == 0
    return held


def attack_unwritable(root: str) -> bool:
    open(f"{root}/a_file", "w").write("x")
    return one_line(pretrain(f"{root}/a_file/run", 4), "cannot write to --workdir")


def attack_orphans(root: str) -> bool:
    workdir = f"{root}/orphans"
    proc = pretrain(
        workdir, 100000, "--config.data.num_workers=2", "--config.checkpoint_every=1000", wait=False
    )
    end = time.time() + 120
    while time.time() < end and not os.path.exists(f"{workdir}/metrics.jsonl"):
        time.sleep(0.2)
    time.sleep(3)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    return len(children) >= 2 and not alive


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/naraim_stress", help="scratch folder (emptied first)")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs during checkpoint saves")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    attacks = [
        ("two runs on one workdir", attack_concurrent),
        (f"{args.kills} SIGKILLs during saves, resumed bitwise", lambda r: attack_kills(r, args.kills)),
        ("resume with another batch size, seed or workers", attack_changed_config),
        ("damaged newest checkpoint (5 kinds): one line, nothing else", attack_damaged_checkpoints),
        ("undecodable metrics.jsonl, garbage config.json", attack_metrics_and_config),
        ("kill between a save and its evaluation", attack_lost_evaluation),
        ("probe re-runs, probe into init_from, missing step, cut config", attack_probes),
        ("probes of a run deleting its checkpoints", attack_probe_while_training),
        ("links looping, dangling, to /; a pipe, a socket, a device", attack_odd_entries),
        ("a 3 GiB non-image in an image folder", attack_huge_file),
        ("1 x 3,000,000 PNG, malformed record", attack_bad_data),
        ("unwritable workdir", attack_unwritable),
        ("workers of a SIGKILLed trainer", attack_orphans),
    ]
    start = time.time()
    failed = 0
    for name, attack in attacks:
        t0 = time.time()
        PEAK_BYTES[0] = 0
        try:
            held = attack(args.workdir)
        except Exception as e:  # an attack that crashes the harness counts as broken
            held, name = False, f"{name} ({type(e).__name__}: {e})"
        failed += not held
        peak = f"peak {PEAK_BYTES[0] / 2**30:.2f} GiB"
        print(f"{'held  ' if held else 'BROKEN'}  {name}  ({time.time() - t0:.0f} s, {peak})", flush=True)
    print(f"{len(attacks) - failed} held, {failed} broken in {time.time() - start:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run_main(main)
