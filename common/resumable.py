"""Small pieces shared by the resumable background trainers (benchmarks/train_t2i_clip.py, train_t2i_vae.py).

A run folder holds ``state.pt``: the model, the optimizer, the step, the batch generator's state, the wall
seconds spent so far and the curve, and ``args.json``: the settings the run was started with. Re-running the
same command continues from ``state.pt``; a different setting is refused (the run continues with its own).
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from common.runs import atomic_torch_save, environment

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
        saved_args.write_text(json.dumps(settings, indent=2) + "\n")
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
