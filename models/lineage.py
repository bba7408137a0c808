"""Lineage of a checkpoint: the chain of runs that made it, and the root teacher of a pruned model.

    lineage("runs/train/00007-x/model.pt")
    # [Step(path=runs/train/00007-x/model.pt, kind="train", source=runs/prune/00004-y/pruned.pt),
    #  Step(path=runs/prune/00004-y/pruned.pt, kind="prune", source=runs/prune/00002-z/pruned.pt),
    #  Step(path=runs/prune/00002-z/pruned.pt, kind="prune", source=checkpoints/tiny_shapes.pt),
    #  Step(path=checkpoints/tiny_shapes.pt, kind="train", source="tiny")]
    root_teacher("runs/train/00007-x/model.pt")   # -> "checkpoints/tiny_shapes.pt"

What the checkpoints record (nothing new is needed): prune.py's pruned.pt has ``meta.source_model``; train.py's
checkpoints have ``meta.train_config.model`` (the model it started from). A pruned model may also carry
``meta.root_teacher`` directly. The root teacher is the model the EARLIEST pruning in the chain started from:
channel pruning, then layer pruning, then fine-tuning all lead back to it. A chain without pruning has none.
Paths are as recorded (relative to the folder the run was started in); a source that is not a readable
diffprune checkpoint (a preset name, a hub id, a file moved away) ends the walk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 64  # a longer chain is a cycle in the records


@dataclass(frozen=True)
class Step:
    path: str
    kind: str           # "prune", "train" or "other" (a checkpoint without a recorded source)
    source: str | None  # the model this one was made from, as recorded


def _meta(path: str) -> dict | None:
    from models.checkpoint import is_project_checkpoint, read_checkpoint
    if not Path(path).is_file():
        return None
    try:
        ckpt = read_checkpoint(path)
    except (ValueError, OSError):
        return None  # not a diffprune checkpoint (DDIM file, safetensors, ...): no recorded lineage
    return ckpt.get("meta", {}) if is_project_checkpoint(ckpt) else None


def lineage(path: str | os.PathLike) -> list[Step]:
    """The chain from ``path`` back to the first model whose source is not a readable diffprune checkpoint."""
    steps: list[Step] = []
    current: str | None = str(path)
    seen = set()
    while current is not None and len(steps) < MAX_DEPTH:
        key = os.path.realpath(current)
        meta = None if key in seen else _meta(current)  # a model already visited: a cycle in the records
        if meta is None:
            break
        seen.add(key)
        if "root_teacher" in meta and not meta.get("source_model"):
            steps.append(Step(current, "prune", str(meta["root_teacher"])))
            break
        if meta.get("source_model"):
            step = Step(current, "prune", str(meta["source_model"]))
        elif isinstance(meta.get("train_config"), dict) and meta["train_config"].get("model"):
            step = Step(current, "train", str(meta["train_config"]["model"]))
        else:
            step = Step(current, "other", None)
        steps.append(step)
        current = step.source
    return steps


def root_teacher(path: str | os.PathLike) -> str | None:
    """The model the earliest pruning in ``path``'s chain started from, or None (no pruning in the chain)."""
    pruned = [s for s in lineage(path) if s.kind == "prune"]
    return pruned[-1].source if pruned else None


def label(path: str | os.PathLike) -> str:
    """A short label that carries the lineage: 'pruned.pt of 00004-y <- tiny_shapes' (file and run folder)."""
    p = Path(path)
    own = f"{p.parent.name}/{p.stem}" if p.parent.name not in ("", ".", "checkpoints") else p.stem
    root = root_teacher(path)
    return own if root is None else f"{own} (from {Path(root).stem})"


def default_reference(models) -> str | None:
    """evaluate.py's --reference when none is given: the root teacher of the first model that has one and whose
    file exists (a preset name or a moved file is no reference: it would be a different network)."""
    for m in models:
        root = root_teacher(m)
        if root is not None and Path(root).is_file():
            return root
    return None
