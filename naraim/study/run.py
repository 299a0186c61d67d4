"""A real-data study on one machine: pre-train NARAIM and AIM, make the random-init control, probe each
(attentive sweep, kNN, linear sweep), for every seed; then write DIR/study.json and DIR/report.md. With
native=True a fourth arm pre-trains the recipe's naraim_native variant (token budgets, packed rows), and every
arm's attentive probe is also evaluated at that variant's budgets (the report's budget x aspect-ratio table).

Layout of DIR: data/ (the source as pre-resized ArrayRecord shards, when it is a folder or a TFDS dataset),
plan.json (the pre-training steps and how they were chosen: re-runs reuse it; the first seed's random-init
arm runs first, so its probe time is measured before the plan divides what is left), <arm>_s<seed>/ (a
pre-training workdir; random_init_s<seed> holds the initialisation as checkpoint 0) with probe_attentive/,
probe_knn/, probe_linear/ inside and arm.json (wall times). Re-running the same command skips what is done.
"""

import ast
import datetime
import json
import math
import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.console import say
from naraim.data.config import source_kind, token_budget
from naraim.data.prepare import write_arrayrecord
from naraim.errors import UserError
from naraim.infra.flags import load_config_file
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.optimizer import make_optimizer
from naraim.infra.workdir import atomic_write, read_json
from naraim.model.model import make_model
from naraim.model.sizes import patch_size
from naraim.probe.runner import run_probe
from naraim.study.report import write_report
from naraim.train.config import fit_schedule, validate_pretrain_config
from naraim.train.step import init_state, make_train_step
from naraim.train.trainer import train

ARMS = ("naraim", "aim", "random_init")
NATIVE_ARMS = ("naraim", "aim", "naraim_native", "random_init")
PROBES = {"attentive": "small", "knn": "small,knn", "linear": "small,linear"}
SAFETY = 0.95  # of the budget left after data preparation and the measured probe time, for pre-training


def parse_assignment(text: str) -> tuple[str, object]:
    """'a.b=VALUE' -> ('a.b', VALUE as a Python literal, else the string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"{text!r} is not KEY=VALUE (e.g. model.variant=Pico/8)")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def apply_assignments(cfg: ConfigDict, assignments: list[tuple[str, object]]) -> ConfigDict:
    for key, value in assignments:
        section = cfg
        *parents, leaf = key.split(".")
        try:
            for part in parents:
                section = section[part]
            section[leaf] = type(section[leaf])(value) if isinstance(section[leaf], float) else value
        except (KeyError, AttributeError, TypeError):
            raise UserError(
                f"{key!r} is not a key of the study's configs (or {value!r} does not fit it)"
            ) from None
    return cfg


class Study:
    def __init__(
        self,
        data: str,
        workdir: str,
        seeds: list[int],
        budget_minutes: float,
        steps: int | None,
        recipe: str,
        overrides: list[str],
        probe_overrides: list[str],
        probe_config: str,
        native: bool = False,
    ):
        self.data, self.workdir, self.seeds = data, os.path.abspath(workdir), seeds
        self.budget, self.steps, self.recipe, self.probe_config = budget_minutes, steps, recipe, probe_config
        self.overrides = [parse_assignment(o) for o in overrides]
        self.probe_overrides = [parse_assignment(o) for o in probe_overrides]
        self.arms = NATIVE_ARMS if native else ARMS
        native_cfg = load_config_file(f"{recipe}:naraim_native") if native else None
        self.eval_budgets = tuple(native_cfg.data.token_budgets) if native else ()
        self.start = time.time()

    def pretrain_config(self, arm: str, seed: int, source: str, steps: int) -> ConfigDict:
        cfg = load_config_file(f"{self.recipe}:{'naraim' if arm == 'random_init' else arm}")
        cfg.data.source = source
        cfg = apply_assignments(cfg, self.overrides)
        cfg.seed = seed
        cfg.total_steps = 0 if arm == "random_init" else steps
        return cfg

    def prepare_data(self) -> str:
        """The data.source the arms read: pre-resized ArrayRecord shards of a folder or TFDS source (made
        once, keeping every random_crop_native crop exact: at most S*S / crop_scale[0] pixels)."""
        kind, _ = source_kind(self.data)
        if kind not in ("folder", "tfds"):
            return self.data
        folder = os.path.join(self.workdir, "data")
        pattern = f"arrayrecord:{folder}/{{split}}-*.array_record"
        if os.path.exists(os.path.join(folder, "dataset.json")):
            return pattern
        cfg = self.pretrain_config("naraim", self.seeds[0], self.data, 1)
        max_area = math.ceil(cfg.data.image_size**2 / cfg.data.crop_scale[0])
        say(f"preparing {self.data} as ArrayRecord shards of at most {max_area} pixels in {folder} ...")
        start = time.time()
        counts = write_arrayrecord(
            self.data,
            [cfg.data.train_split, cfg.data.val_split],
            folder,
            max_area=max_area,
            workers=os.cpu_count() or 1,
            data_cfg=cfg.data,
        )
        say(f"prepared {counts} in {time.time() - start:.0f} s")
        return pattern

    def plan(self, source: str) -> dict:
        """plan.json: the pre-training steps; measured once from the budget (or --steps), then reused."""
        path = os.path.join(self.workdir, "plan.json")
        if os.path.exists(path):
            plan = read_json(path, "the study's plan")
            if self.steps is not None and self.steps != plan["steps"]:
                raise UserError(
                    f"{path} plans {plan['steps']} steps, not {self.steps}: use another --workdir"
                )
            return plan
        cfg = self.pretrain_config("naraim", self.seeds[0], source, 1)
        recipe_steps = load_config_file(f"{self.recipe}:naraim").total_steps
        plan = {
            "recipe": self.recipe,
            "recipe_steps": recipe_steps,
            "budget_minutes": self.budget,
            "seeds": self.seeds,
        }
        if self.steps is not None:
            plan.update(steps=self.steps, chosen_by="--steps")
        else:
            seconds = measure_step_seconds(cfg)
            probe_seconds = self.probe_seconds(self.seeds[0])
            runs = (len(self.arms) - 1) * len(self.seeds)
            arms_left = len(self.arms) * len(self.seeds) - 1
            left = self.budget * 60 - (time.time() - self.start) - arms_left * probe_seconds
            budget_steps = int(SAFETY * left / (runs * seconds * 1.15))
            plan.update(
                steps=max(1, min(recipe_steps, budget_steps)),
                step_seconds=seconds,
                probe_seconds=probe_seconds,
                chosen_by=(
                    f"min(recipe steps, {SAFETY} x (budget - time so far - {arms_left} x probe time) / "
                    f"({runs} runs x 1.15 x step time))"
                ),
            )
        os.makedirs(self.workdir, exist_ok=True)
        atomic_write(path, json.dumps(plan, indent=2))
        say(f"plan: {plan['steps']} pre-training steps per arm ({plan['chosen_by']}) in {path}")
        return plan

    def round_steps(self, plan: dict, seed: int) -> int:
        """The pre-training steps of `seed`'s arms (one number per seed, so its arms compare): the plan's
        for the first seed (or --steps); for a later seed, re-planned from what the finished arms took
        (their pre-training seconds per step, evaluations and checkpoints included, and their slowest
        probes) and the budget left, never more than the plan's. Recorded in plan.json (steps_by_seed)."""
        rounds = plan.setdefault("steps_by_seed", {})
        if str(seed) in rounds:
            return int(rounds[str(seed)])
        steps = plan["steps"]
        if seed != self.seeds[0] and self.steps is None:
            done = [s for s in self.seeds if str(s) in rounds]
            records = {
                (arm, s): read_json(os.path.join(self.workdir, f"{arm}_s{s}", "arm.json"), "the arm's record")
                for arm in self.arms
                for s in done
            }
            per_step = max(
                r["pretrain_seconds"] / max(int(rounds[str(s)]), 1)
                for (arm, s), r in records.items()
                if arm != "random_init"
            )
            probe = max(sum(r[f"probe_{p}_seconds"] for p in PROBES) for r in records.values())
            seeds_left = len(self.seeds) - len(done)
            left = self.budget * 60 - (time.time() - self.start) - seeds_left * len(self.arms) * probe
            fit = int(SAFETY * left / (seeds_left * (len(self.arms) - 1) * per_step))
            steps = max(1, min(steps, fit))
            if steps != plan["steps"]:
                say(
                    f"re-plan: seed {seed}'s arms pre-train {steps} steps (finished arms: {per_step:.2f} s "
                    f"per step, up to {probe:.0f} s of probes; {left / 60:.1f} min left for pre-training)"
                )
        rounds[str(seed)] = steps
        atomic_write(os.path.join(self.workdir, "plan.json"), json.dumps(plan, indent=2))
        return steps

    def probe_seconds(self, seed: int) -> float:
        """Wall seconds of one arm's probes (all of PROBES), read from the random-init arm's record."""
        times = read_json(os.path.join(self.workdir, f"random_init_s{seed}", "arm.json"), "the arm's record")
        return sum(times[f"probe_{probe}_seconds"] for probe in PROBES)

    def run_arm(self, arm: str, seed: int, source: str, steps: int) -> None:
        folder = os.path.join(self.workdir, f"{arm}_s{seed}")
        record_path = os.path.join(folder, "arm.json")
        times = read_json(record_path, "the arm's record") if os.path.exists(record_path) else {}
        cfg = self.pretrain_config(arm, seed, source, steps)
        if "pretrain_seconds" not in times:
            say(f"[{arm}, seed {seed}] pre-training {cfg.total_steps} steps in {folder}")
            start = time.time()
            train(cfg, folder)
            times["pretrain_seconds"] = time.time() - start
            atomic_write(record_path, json.dumps(times))
        for probe, variants in PROBES.items():
            key = f"probe_{probe}_seconds"
            if key in times:
                continue
            say(f"[{arm}, seed {seed}] probe: {probe}")
            pcfg = load_config_file(f"{self.probe_config}:{variants}")
            pcfg.init_from = folder
            pcfg.seed = seed
            if probe == "attentive":
                pcfg.probe.eval_token_budgets = self.eval_budgets
            pcfg = apply_assignments(pcfg, self.probe_overrides)
            start = time.time()
            run_probe(pcfg, os.path.join(folder, f"probe_{probe}"))
            times[key] = time.time() - start
            atomic_write(record_path, json.dumps(times))

    def run(self, commands: list[str]) -> dict:
        os.makedirs(self.workdir, exist_ok=True)
        source = self.prepare_data()
        self.run_arm("random_init", self.seeds[0], source, 0)
        plan = self.plan(source)
        for seed in self.seeds:
            steps = self.round_steps(plan, seed)
            for arm in self.arms:
                self.run_arm(arm, seed, source, steps)
        meta = {
            "date": datetime.date.today().isoformat(),
            "data": self.data,
            "commands": commands,
            "plan": plan,
            "session_seconds": time.time() - self.start,
        }
        study = write_report(self.workdir, self.arms, self.seeds, meta)
        say(f"study: {os.path.join(self.workdir, 'study.json')}, {os.path.join(self.workdir, 'report.md')}")
        return study


def measure_step_seconds(cfg: ConfigDict, steps: int = 3) -> float:
    """Seconds per pre-training step of `cfg` on random full-length batches: the best of 4 rounds after
    compilation."""
    fit_schedule(cfg)
    validate_pretrain_config(cfg)
    mesh = make_mesh()
    model = make_model(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, max(cfg.total_steps, 1))
    state, shardings = init_state(model, optimizer, cfg, mesh)
    step = make_train_step(model, optimizer, schedule, cfg, mesh, shardings)
    p, n = patch_size(cfg.model.variant), token_budget(cfg.data, patch_size(cfg.model.variant))
    rng = np.random.default_rng(0)
    b = cfg.batch_size // jax.process_count()
    cols = int(math.sqrt(n))
    coords = np.stack(np.divmod(np.arange(n), cols), -1).astype(np.int32)
    batch = global_batch(
        {
            "patches": rng.integers(0, 256, (b, n, p * p * 3), dtype=np.uint8),
            "coords": np.broadcast_to(coords, (b, n, 2)).copy(),
            "grid": np.tile(np.array([n // cols, cols], np.int32), (b, 1)),
            "length": np.full((b,), n, np.int32),
        },
        mesh,
    )
    best = float("inf")
    for _ in range(4):  # the first rounds also map the host memory the steps keep (naraim/host_memory.py)
        start = time.perf_counter()
        for _ in range(steps):
            state, _ = step(state, batch)
        jax.block_until_ready(state)
        best = min(best, (time.perf_counter() - start) / steps)
    return best
