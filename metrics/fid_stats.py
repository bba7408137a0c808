"""``python evaluate.py fid-stats IMAGE_DIR --out stats.npz``: FID's reference statistics of an image folder.

The Inception pool features' mean and covariance (mu, sigma) of every PNG/JPEG under IMAGE_DIR, saved as the
pytorch-fid .npz (metrics/fid.py ``save_stats``, with the weights' sha256 so that statistics made with other
Inception weights are never compared as FID). evaluate.py parses the command line and calls ``fid_stats``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import cli
from common.cli import UserError


@dataclass(frozen=True)
class FidStatsConfig:
    """``evaluate.py fid-stats``: Inception statistics of an image folder, written to an .npz."""
    image_dir: str
    out: str
    inception_weights: str | None = None
    batch_size: int = 50
    device: str = "cpu"


def fid_stats(cfg: FidStatsConfig) -> Path:
    """``evaluate.py fid-stats IMAGE_DIR --out stats.npz``: Inception statistics of an image folder."""
    from metrics.fid import list_images, save_stats, stats_for_folder
    from metrics.inception import load_fid_inception

    if not Path(cfg.image_dir).is_dir():
        raise UserError(f"fid-stats {cfg.image_dir}: no such image folder")
    if len(list_images(cfg.image_dir)) < 2:
        raise UserError(f"fid-stats {cfg.image_dir}: fewer than 2 PNG/JPEG images (a covariance needs two)")
    if cfg.inception_weights and not Path(cfg.inception_weights).is_file():
        raise UserError(f"--inception-weights {cfg.inception_weights}: no such file")
    cli.check_writable_dir(Path(cfg.out).parent, "--out")
    if Path(cfg.out).exists():  # statistics already computed are never overwritten
        raise UserError(f"--out {cfg.out} exists; remove it first or write to another file")
    inception = load_fid_inception(cfg.inception_weights, device=cfg.device)
    if not inception.is_fid_release:
        print(f"[evaluate] warning: {inception.weights_path} is not the FID Inception release; these statistics "
              "only compare with others computed with the same weights")
    mu, sigma = stats_for_folder(cfg.image_dir, inception, batch_size=cfg.batch_size, device=cfg.device)
    save_stats(cfg.out, mu, sigma, inception_sha256=inception.weights_sha256)
    print(f"[evaluate] wrote {cfg.out}: mu {mu.shape}, sigma {sigma.shape} (Inception weights sha256 "
          f"{inception.weights_sha256[:12]}...)")
    return Path(cfg.out)
