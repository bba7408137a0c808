"""train.py --resume: find the run folder and checkpoint to continue, check them, and lock the folder.

A run continues in its own folder with the config it saved; only the total ``--steps`` and ``--device`` are
taken from the command line. The checkpoint must carry the run id of the folder's ``run.json`` marker, so a
checkpoint copied elsewhere is never resumed into whatever folder happens to sit two levels above it.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from common.cli import UserError
from common.distributed import Distributed
from common.runs import RUN_MARKER, RunLock, read_run_marker, remove_stale_tmp
from models.checkpoint import read_checkpoint
from training.recipe import TrainConfig


def resolve_resume(resume: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint) of ``--resume``: a run folder, or a checkpoint in its ``checkpoints/``.

    The run folder is the one whose ``run.json`` marker carries the checkpoint's run id. A checkpoint that
    was copied out of its run folder has no such folder and is refused: resuming it would write
    ``model.pt`` and ``config.json`` into whatever folder happens to sit two levels above it.
    """
    path = Path(resume)
    if path.is_dir():
        run_dir, ckpt = path, path / "checkpoints" / "latest.pt"
        if read_run_marker(run_dir) is None:
            raise UserError(f"--resume {path}: not a train.py run folder (no {RUN_MARKER})")
        if not ckpt.is_file():
            raise UserError(f"--resume {path}: the run has no checkpoint yet ({ckpt} does not exist); start it again")
        return run_dir, ckpt
    if not path.is_file():
        raise UserError(f"--resume {path}: no such run folder or checkpoint")
    run_dir = path.resolve().parent.parent
    if path.resolve().parent.name != "checkpoints" or read_run_marker(run_dir) is None:
        raise UserError(f"--resume {path}: this checkpoint is not inside the run folder that wrote it (no "
                        f"{RUN_MARKER} two levels up); resume the run folder itself, or fine-tune the file as a "
                        f"new run with --model {path}")
    return run_dir, path


def open_resume(cfg: TrainConfig, resume: str, ctx: Distributed, locks: list) -> tuple[TrainConfig, dict, Path]:
    """The run's saved config (with ``cfg``'s total steps and device), its checkpoint and its folder,
    checked and locked (rank 0) before anything is built."""
    run_dir, ckpt_path = resolve_resume(resume)
    if ctx.is_main:  # one writer per run folder; a kill leaves no stale lock (flock)
        locks.append(RunLock(run_dir, "resuming or training this run").acquire())
        for stale in remove_stale_tmp(run_dir / "checkpoints"):
            print(f"[train] removed {stale}, left by an interrupted checkpoint write")
    ckpt = read_checkpoint(ckpt_path)
    marker, meta = read_run_marker(run_dir), ckpt.get("meta", {})
    if meta.get("run_id") != marker["run_id"]:
        raise UserError(f"--resume {resume}: {ckpt_path} was written by another run than {run_dir} "
                        f"(run id {meta.get('run_id')!r} vs {marker['run_id']!r})")
    # A run saved before ``ema_warmup`` existed was started without the warm-up: it continues without it.
    saved = TrainConfig(**{"ema_warmup": False, **meta["train_config"]})
    cfg = dataclasses.replace(saved, steps=cfg.steps if cfg.steps is not None else saved.steps, device=cfg.device)
    from training.families import is_latent_config
    from training.latent import is_latent_model

    if is_latent_config(ckpt.get("model_config")):  # a latent U-Net: its frozen parts live in --model
        if not is_latent_model(cfg.model):
            raise UserError(f"--resume {resume}: the run's pipeline {cfg.model} (its --model) is no longer there; "
                            "its frozen VAE and text encoder are read from it: restore that folder first")
    if cfg.steps < int(ckpt["train_state"]["step"]):
        raise UserError(f"--steps {cfg.steps} is the TOTAL number of steps, but {run_dir} is already at step "
                        f"{ckpt['train_state']['step']}; pass a larger total to continue it")
    return cfg, ckpt, run_dir


