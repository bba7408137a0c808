"""diffprune's own checkpoint format: a plain dict of named entries, loadable with ``weights_only=True``.

    {
      "format": "diffprune",
      "format_version": 1,
      "model_config": ModelConfig.to_dict()   # architecture + the per-layer width table
      "state_dict": {...},                    # raw (trained) weights
      "ema_state_dict": {...},                # EMA weights, where the run kept them
      "train_state": {...},                   # optimizer, step, RNG states: only in training checkpoints
      "meta": {...},                          # free-form, JSON-like: run config, versions, pruning report
    }

A pruned model is exactly this with the pruned width table: no pickled module, so loading needs no code
from the run that wrote it and ``weights_only=True`` can refuse anything else.
Writes are atomic (temp file + rename in the same folder), so an interrupted save never corrupts the
previous checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from common.runs import atomic_torch_save, environment  # noqa: F401 (re-exported: the checkpoint writer's tools)
from models.ddpm.config import ModelConfig

FORMAT = "diffprune"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, *, config: ModelConfig, state_dict: Mapping[str, torch.Tensor],
                    ema_state_dict: Mapping[str, torch.Tensor] | None = None,
                    train_state: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> None:
    """Write a diffprune checkpoint atomically (see the module docstring for the layout)."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "meta": {"environment": environment(), **dict(meta or {})},
    }
    if ema_state_dict is not None:
        ckpt["ema_state_dict"] = {k: v.detach().cpu().clone() for k, v in ema_state_dict.items()}
    if train_state is not None:
        ckpt["train_state"] = dict(train_state)
    atomic_torch_save(ckpt, path)


def sniff_not_torch_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a torch.save file, judged from its first bytes, or None when it may be one.

    torch.save writes a zip archive (``PK\x03\x04``) or, in the legacy format, a pickle (``\x80``); an
    empty file, a text file or any other header is named here so the error says what the file is.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it is not a torch.save file (it starts with bytes {head[:8]!r})"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is a text file, not a torch.save file (it starts with {text.strip()[:40]!r})"
    return f"it is not a torch.save file (it starts with bytes {head[:8]!r})"


def is_project_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a diffprune checkpoint dict (``weights_only=True``); errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    why = sniff_not_torch_file(path)
    if why:
        raise ValueError(f"cannot read checkpoint {path}: {why}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or a pickle that is not plain tensors/containers
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    validate_checkpoint(ckpt, path)
    return ckpt


def training_steps(path: str | os.PathLike) -> int:
    """Total training steps behind a checkpoint, from its meta: ``total_steps`` where a run continued an
    earlier one (benchmarks/teacher_curve.py), else ``steps``; 0 when the meta records neither."""
    meta = read_checkpoint(path).get("meta", {})
    return int(meta.get("total_steps") or meta.get("steps") or 0)


def validate_checkpoint(ckpt: Any, path: str | os.PathLike) -> None:
    """Check a loaded object is a diffprune checkpoint of this format version with its required keys."""
    if not is_project_checkpoint(ckpt):
        raise ValueError(f"{path} is not a diffprune checkpoint (no 'format': '{FORMAT}' key)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {ckpt.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("model_config", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{path}: missing key {key!r}")


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped tensor (none are loaded then)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        lines = [f"{source} does not fit the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = items[:10] + ([f"... and {len(items) - 10} more"] if len(items) > 10 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise ValueError("\n".join(lines))
