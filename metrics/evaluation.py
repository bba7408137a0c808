"""Evaluation of a diffusion model the way the Diff-Pruning paper judges it (Fang et al. 2023, arXiv 2305.10924,
Table 1: FID of 50K DDIM samples, SSIM to the dense model's samples from the same noise, #params and MACs).

For each model: #params and MACs (both conventions), sampling latency, FID of its samples against
dataset statistics, SSIM "consistency" to a reference model's samples from the same initial noise, and
the held-out denoising loss (no external weights needed).

Samples are written as PNGs named by their global index (``000017.png``). Sample i's noise comes from
its own stream (``diffusion.samplers.IndexedNoise``), so a folder can be filled by any number of
processes (index i goes to rank i % world), resumed after an interruption (existing PNGs are kept),
and two models' folders are paired by file name for SSIM, as the paper's protocol needs.

A sample folder holds ``sampling.json``: the SHA-256 of the model's weights and every sampling setting. A
folder is only ever completed by the same model with the same settings (``claim_sample_folder``);
anything else is an error naming what differs, never a silent mix of two models' samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from common.images import to_uint8_hwc
from common.runs import write_text
from diffusion.samplers import ddim_timesteps, sample
from diffusion.schedule import Schedule


@dataclass(frozen=True)
class SamplerConfig:
    """How samples are drawn: DDIM with ``steps`` steps, ``skip_type`` uniform|quad and ``eta``, or
    ancestral DDPM over all T steps. ``seed`` fixes every sample's noise by its index."""

    sampler: str = "ddim"
    steps: int = 100
    skip_type: str = "uniform"
    eta: float = 0.0
    seed: int = 0
    clip_x0: bool = False  # clamp each step's x0 prediction to [-1, 1] (off in the DDIM codebase / the paper)

    def num_model_calls(self, num_timesteps: int) -> int:
        """Network evaluations per image (the 'steps' of latency per step)."""
        if self.sampler == "ddpm":
            return num_timesteps
        return len(ddim_timesteps(self.steps, num_timesteps, self.skip_type))


class SampleFolderMismatch(ValueError):
    """A sample folder written by another model or with other sampling settings than the ones asked for."""


SAMPLING_MANIFEST = "sampling.json"


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor of the model's state dict."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sampling_key(model: nn.Module, schedule: Schedule, cfg: SamplerConfig) -> dict:
    """What determines a folder's samples: the weights, the image shape, the schedule length and every
    sampling setting (sampler, steps, skip type, eta, seed, clip_x0)."""
    c = model.config
    return {"weights_sha256": weights_sha256(model), "image_shape": [c.in_channels, c.image_size, c.image_size],
            "num_timesteps": schedule.num_timesteps, "sampler": dataclasses.asdict(cfg)}


def claim_sample_folder(folder: Path, key: dict, *, write: bool = True) -> None:
    """Make ``folder`` the sample folder of ``key``: record it in a new folder, check it in an old one.

    Raises SampleFolderMismatch naming every difference when the folder holds samples of another model or
    of other settings, or PNGs without a record of how they were drawn.
    """
    manifest = folder / SAMPLING_MANIFEST
    if not manifest.is_file():
        if any(folder.glob("*.png")):
            raise SampleFolderMismatch(f"{folder} holds samples but no {SAMPLING_MANIFEST}, so which model and "
                                       "settings drew them is unknown; evaluate into a new folder (no --resume)")
        if write:
            folder.mkdir(parents=True, exist_ok=True)
            write_text(manifest, json.dumps(key, indent=2, sort_keys=True) + "\n")
        return
    try:
        saved = json.loads(manifest.read_text())
    except ValueError as e:
        raise SampleFolderMismatch(f"{manifest}: unreadable ({e})") from None
    diffs = []
    if saved.get("weights_sha256") != key["weights_sha256"]:
        diffs.append("the model's weights (a different model with the same name, or retrained weights)")
    for field in ("image_shape", "num_timesteps"):
        if saved.get(field) != key[field]:
            diffs.append(f"{field} {saved.get(field)} vs {key[field]}")
    old, new = saved.get("sampler", {}), key["sampler"]
    for field in sorted(set(old) | set(new)):
        if old.get(field) != new.get(field):
            diffs.append(f"--{field.replace('_', '-')} {old.get(field)} vs {new.get(field)}")
    if diffs:
        raise SampleFolderMismatch(f"{folder} was sampled with other settings than this run's; differs: "
                                   + "; ".join(diffs) + ". Evaluate into a new folder (no --resume)")


def remove_partial_samples(folder: Path) -> None:
    """Delete the ``*.tmp.png`` files a killed run left behind (a final name is only ever a whole PNG)."""
    for p in folder.glob("*.tmp.png"):
        p.unlink()


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def generate_samples(model: nn.Module, schedule: Schedule, folder: Path, *, num_samples: int, cfg: SamplerConfig,
                     batch_size: int, device: str, rank: int = 0, world: int = 1, progress: bool = True) -> dict:
    """Write PNGs for the indices of ``range(num_samples)`` owned by this rank (i % world == rank) that
    do not exist yet. Returns timing: images generated, seconds, seconds per image and per model call."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(rank, num_samples, world) if not png_path(folder, i).exists()]
    c = model.config
    shape = (c.in_channels, c.image_size, c.image_size)
    start = time.perf_counter()
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    for idx in tqdm(batches, desc=f"sampling {folder.parent.name}", disable=not progress or not batches):
        x0 = sample(model, schedule, indices=idx, seed=cfg.seed, image_shape=shape, sampler=cfg.sampler,
                    steps=cfg.steps if cfg.sampler == "ddim" else None, skip_type=cfg.skip_type, eta=cfg.eta,
                    batch_size=len(idx), device=device, clip_x0=cfg.clip_x0)
        if not bool(torch.isfinite(x0).all()):  # would be saved as black PNGs and scored as if real
            raise FloatingPointError(f"{folder.parent.name}: the model drew non-finite samples (indices {idx[0]}.."
                                     f"{idx[-1]}); none of them is saved or scored")
        for i, img in zip(idx, to_uint8_hwc(x0)):
            tmp = png_path(folder, i).with_suffix(".tmp.png")
            Image.fromarray(img).save(tmp)
            tmp.replace(png_path(folder, i))  # a killed run never leaves a half-written PNG under a final name
    seconds = time.perf_counter() - start
    calls = cfg.num_model_calls(schedule.num_timesteps)
    per_image = seconds / len(todo) if todo else None
    return {"generated": len(todo), "seconds": seconds, "seconds_per_image": per_image,
            "seconds_per_step": per_image / calls if todo else None, "model_calls_per_image": calls}


def load_samples(folder: Path, num_samples: int) -> torch.Tensor:
    """The first ``num_samples`` PNGs of a sample folder as floats (N, C, H, W) in [0, 1]."""
    missing = [png_path(folder, i).name for i in range(num_samples) if not png_path(folder, i).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {len(missing)} of {num_samples} samples (first: {missing[:3]})")
    arrays = [read_png(png_path(folder, i)) for i in range(num_samples)]
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x[:, None]


def read_png(path: Path) -> np.ndarray:
    """The pixels of one PNG; a truncated or unreadable file is an error naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB") if img.mode not in ("RGB", "L") else img).copy()
    except (OSError, SyntaxError) as e:  # PIL raises OSError for truncated data, SyntaxError for bad headers
        raise ValueError(f"cannot read image {path}: {e} (a truncated or corrupt file: delete it and resume "
                         "to draw it again)") from None


@torch.inference_mode()
def measure_latency(model: nn.Module, schedule: Schedule, *, cfg: SamplerConfig, batch: int, device: str) -> dict:
    """Time one batch of sampling (used when every sample was already on disk). Returns seconds per image/step."""
    c = model.config
    start = time.perf_counter()
    sample(model, schedule, indices=list(range(batch)), seed=cfg.seed, image_shape=(c.in_channels, c.image_size, c.image_size),
           sampler=cfg.sampler, steps=cfg.steps if cfg.sampler == "ddim" else None, skip_type=cfg.skip_type,
           eta=cfg.eta, batch_size=batch, device=device, clip_x0=cfg.clip_x0)
    per_image = (time.perf_counter() - start) / batch
    calls = cfg.num_model_calls(schedule.num_timesteps)
    return {"seconds_per_image": per_image, "seconds_per_step": per_image / calls, "model_calls_per_image": calls,
            "timed_batch": batch}


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the headline numbers of each evaluated model."""
    cols = [("model", "name", "{}"), ("params", "params_M", "{:.3f}M"), ("MACs", "macs_paper_G", "{:.3f}G"),
            ("MACs+attn", "macs_full_G", "{:.3f}G"), ("s/img", "seconds_per_image", "{:.3f}"),
            ("FID", "fid", "{:.2f}"), ("FD custom Inception", "fd_custom_inception", "{:.2f}"), ("FD-shapes", "fd_shapes", "{:.3f}"), ("KID-shapes", "kid_shapes", "{:.4f}"),
            ("SSIM", "ssim_consistency", "{:.4f}"), ("held-out", "heldout_loss", "{:.5f}")]
    cols = [c for c in cols if c[1] != "fd_custom_inception" or any(r.get(c[1]) is not None for r in rows)]
    cells = [[title for title, _, _ in cols]]
    for r in rows:
        r = {**r, "name": r.get("label") or r["name"]}  # the lineage label (models/lineage.py) where known
        cells.append([fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
