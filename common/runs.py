"""Numbered run folders that are never overwritten (runs/<kind>/00003-<desc>/), config files and seeding."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


def new_run_dir(root: str | os.PathLike, desc: str) -> Path:
    """Create root/NNNNN-desc with NNNNN one more than the largest existing number."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
    run = root / f"{max(numbers, default=0) + 1:05d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', desc)}"
    run.mkdir()  # fails rather than overwrite, should two processes race
    return run


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
