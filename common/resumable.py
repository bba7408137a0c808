"""Small pieces shared by the resumable background trainers (benchmarks/train_t2i_clip.py, train_t2i_vae.py).

``train`` runs the loop of both; ``add_run_args`` / ``parse_run_args`` hold their common flags and checks;
``write_record`` writes the shipped run's results JSON. A run folder holds ``state.pt``: the model, the
optimizer, the step, the batch generator's state, the wall seconds spent so far and the curve, and
``args.json``: the settings the run was started with. Re-running the same command continues from
``state.pt``; a different setting is refused (the run continues with its own).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from common.runs import atomic_torch_save, environment, write_text

STATE, ARGS = "state.pt", "args.json"


def open_run(run: str | os.PathLike, settings: dict[str, Any]) -> tuple[Path, dict | None]:
    """Create ``run`` with its settings, or reopen it: returns (folder, saved state or None).

    Raises ValueError naming the differing settings when ``run`` was started with others.
    """
    folder = Path(run)
    saved_args = folder / ARGS
    if saved_args.is_file():
        before = json.loads(saved_args.read_text())
        diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if diff:
            was = ", ".join(f"{k}={before.get(k)!r}" for k in diff)
            raise ValueError(f"{folder}: started with other settings ({was}); rerun with those or choose a new "
                             "--run folder")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(saved_args, json.dumps(settings, indent=2) + "\n")
    state_path = folder / STATE
    state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else None
    return folder, state


def save_state(folder: Path, state: dict) -> None:
    atomic_torch_save(state, folder / STATE)


def warmup_cosine(step: int, *, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def machine() -> dict[str, Any]:
    """Where a number was measured: CPU, core count, torch threads, library versions."""
    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1m": round(os.getloadavg()[0], 2), **environment()}


# --- The training session every resumable trainer runs (the loop, its log, its state and its shipped record) ---

SESSION_ONLY = ("argv", "ship", "results", "threads", "stop_after", "cache")  # may change between sessions


def add_run_args(p: argparse.ArgumentParser, *, repo: Path, name: str, ship_help: str) -> None:
    """The flags every trainer has: the run folder, what to ship, the schedule's length, the session's knobs;
    --results defaults to ``repo``/benchmarks/results/``name``.json, --cache to ``repo``/runs/t2i_cache."""
    results = f"benchmarks/results/{name}.json"
    p.add_argument("--run", required=True, help="run folder (state.pt, args.json); rerun to resume")
    p.add_argument("--ship", default=None, help=ship_help)
    p.add_argument("--results", default=str(repo / results), help=f"results JSON written with --ship [{results}]")
    p.add_argument("--steps", type=int, default=3000, help="[3000]")
    p.add_argument("--warmup", type=int, default=100, help="[100]")
    p.add_argument("--train-images", type=int, default=20000, help="[20000]")
    p.add_argument("--log-every", type=int, default=50, help="[50]")
    p.add_argument("--eval-every", type=int, default=500, help="[500]")
    p.add_argument("--stop-after", type=int, default=None, help="end this session at that step (resume later)")
    p.add_argument("--cache", default=str(repo / "runs" / "t2i_cache"), help="rendered-images cache folder")
    p.add_argument("--threads", type=int, default=1, help="[1]")
    p.add_argument("--seed", type=int, default=0, help="[0]")


def parse_run_args(p: argparse.ArgumentParser, argv: list[str] | None, *, positive: tuple[str, ...]
                   ) -> argparse.Namespace:
    """Parse, refuse a non-positive ``positive`` flag or an --eval-every off the log grid; keeps ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv)
    for name in ("steps", *positive, "train_images", "log_every", "eval_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.eval_every % a.log_every:
        p.error("--eval-every must be a multiple of --log-every")
    a.argv = argv
    return a


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings saved in args.json and compared on resume (session-only flags left out)."""
    return {k: v for k, v in vars(args).items() if k not in SESSION_ONLY}


@dataclass
class Session:
    """One run's moving parts; ``start`` is a perf_counter origin that already counts earlier sessions' wall."""
    folder: Path
    tag: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    curve: list = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        save_state(self.folder, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                 "generator": self.generator.get_state(), "step": self.step,
                                 "wall_seconds": self.seconds(), "curve": json.dumps(self.curve)})


def resume(folder: Path, state: dict | None, *, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           generator: torch.Generator) -> Session:
    """A Session at step 0, or at the saved step with the saved model, optimizer, generator, wall and curve."""
    step, wall, curve = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, wall, curve = int(state["step"]), float(state["wall_seconds"]), json.loads(state["curve"])
        print(f"[{tag}] resumed {folder} at step {step}", flush=True)
    return Session(folder, tag, model, optimizer, generator, step, curve, time.perf_counter() - wall)


def train(s: Session, args: argparse.Namespace, step_fn: Callable[[], dict], evaluate: Callable[[], dict], *,
          evaluate_last: bool) -> bool:
    """Run ``step_fn`` (one optimizer step; returns the numbers to log) under warmup_cosine until --steps or
    --stop-after; every --log-every steps (and at the stop) log, add ``evaluate()`` every --eval-every steps
    (and at the last step when ``evaluate_last``) and save state.pt. Returns whether the run is complete."""
    stop = min(args.steps, args.stop_after or args.steps)
    while s.step < stop:
        lr = warmup_cosine(s.step, total=args.steps, peak=args.lr, warmup=args.warmup)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        numbers = step_fn()
        s.step += 1
        if s.step % args.log_every == 0 or s.step == stop:
            entry = {"step": s.step, **numbers, "seconds": round(s.seconds(), 1)}
            if s.step % args.eval_every == 0 or (evaluate_last and s.step == args.steps):
                entry.update(evaluate())
            s.curve.append(entry)
            print(f"[{s.tag}] " + json.dumps(entry), flush=True)
            s.save()
    if s.step < args.steps:
        print(f"[{s.tag}] stopped at step {s.step} of {args.steps} (--stop-after); rerun to continue", flush=True)
        return False
    return True


def may_ship(out: Path, tag: str) -> bool:
    """False (and says so) when ``out`` exists: a shipped folder is never overwritten."""
    if out.exists():
        print(f"[{tag}] {out} exists; not overwritten (remove it to ship this run)", flush=True)
        return False
    return True


def write_record(s: Session, args: argparse.Namespace, *, script: str, out: Path, wall: float,
                 results: dict[str, Any]) -> None:
    """Write --results atomically: the command, the shipped folder, ``results``, size, wall, machine, settings
    and the curve."""
    record = {"command": f"OMP_NUM_THREADS=1 python -m benchmarks.{script} " + shlex.join(args.argv),
              "folder": str(out), **results, "parameters": sum(p.numel() for p in s.model.parameters()),
              "wall_seconds": round(wall, 1),
              "wall_note": "summed over resumed sessions, on a CPU shared with other jobs (see load_average_1m)",
              "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "argv"},
              "curve": s.curve}
    write_text(args.results, json.dumps(record, indent=2) + "\n")
    print(f"[{s.tag}] shipped {out} and {args.results}", flush=True)
