"""Frechet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule").

FID compares two sets of images through the Gaussian fitted to their Inception pool3 features:

    FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1) + Tr(Sigma_2) - 2 Tr((Sigma_1 Sigma_2)^(1/2))

with mu the feature mean (D,) and Sigma the unbiased feature covariance (D, D) (np.cov, N - 1), D = 2048.
Statistics files are ``.npz`` archives with keys ``mu`` and ``sigma``, the same format as pytorch-fid's, so
reference statistics computed with either tool can be used by the other. Everything statistical is float64:
the trace term subtracts numbers of order 1e2 to get FIDs of order 1, and float32 covariances lose that.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import scipy.linalg
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from common.runs import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InvalidStatsFile(ValueError):
    """A statistics file that is unreadable, lacks ``mu``/``sigma``, or holds arrays of the wrong shape."""


# ----------------------------------------------------------------------------- statistics of features

def _as_float64_2d(feats: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"metrics/fid.py: features must be (N, D), got shape {feats.shape}")
    return feats


class FeatureStats:
    """Mean and covariance of a stream of (B, D) feature batches, without holding the features.

    Keeps float64 sums of (x - shift) and (x - shift)(x - shift)^T, where ``shift`` is the mean of the first
    batch: the covariance is then (S2 - s s^T / n) / (n - 1), and subtracting a rough mean first keeps that
    difference from cancelling catastrophically when |mu| is large compared with the spread.
    """

    def __init__(self):
        self.count = 0
        self._shift: np.ndarray | None = None  # (D,)
        self._sum: np.ndarray | None = None  # (D,)
        self._sum_outer: np.ndarray | None = None  # (D, D)

    def update(self, feats: torch.Tensor | np.ndarray) -> None:
        """Add a batch of features, (B, D) tensor or array."""
        x = _as_float64_2d(feats)
        if len(x) == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._sum_outer = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"metrics/fid.py: FeatureStats got a batch of dimension {x.shape[1]} after "
                             f"batches of dimension {self._shift.shape[0]}")
        d = x - self._shift  # (B, D)
        self._sum += d.sum(axis=0)
        self._sum_outer += d.T @ d
        self.count += len(x)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (mu (D,), sigma (D, D)) in float64; sigma is the unbiased (N - 1) covariance."""
        if self.count < 2:
            raise ValueError(f"metrics/fid.py: the covariance needs at least 2 feature vectors, got {self.count}")
        mean_d = self._sum / self.count
        mu = self._shift + mean_d
        sigma = (self._sum_outer - self.count * np.outer(mean_d, mean_d)) / (self.count - 1)
        return mu, sigma


def stats_from_features(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu (D,), sigma (D, D)), float64, sigma = np.cov(rowvar=False) (unbiased, N - 1)."""
    x = _as_float64_2d(feats)
    if len(x) < 2:
        raise ValueError(f"metrics/fid.py: the covariance needs at least 2 feature vectors, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


# ----------------------------------------------------------------------------- statistics files

def _check_stats(mu: np.ndarray, sigma: np.ndarray, *, source: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InvalidStatsFile(f"metrics/fid.py: {source}: 'mu' must be (D,) and 'sigma' (D, D), "
                               f"got mu {mu.shape} and sigma {sigma.shape}")
    for key, arr in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(arr).all():
            raise InvalidStatsFile(f"metrics/fid.py: {source}: key '{key}' holds non-finite values")


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, *,
               inception_sha256: str | None = None) -> None:
    """Write ``mu`` (D,) and ``sigma`` (D, D) as float64 to an .npz with keys 'mu' and 'sigma' (pytorch-fid's format).

    ``inception_sha256``, the SHA-256 of the Inception weights file the features came from, is stored as a
    third key; pytorch-fid reads only 'mu' and 'sigma', so the file stays compatible with it.
    """
    path = Path(path)
    if path.suffix != ".npz":
        # np.savez would silently append ".npz", and a later load_stats(path) would then miss the file.
        raise ValueError(f"metrics/fid.py: statistics file name must end in .npz, got {path}")
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    _check_stats(mu, sigma, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"inception_sha256": np.array(inception_sha256)} if inception_sha256 else {}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez appends no suffix to it
        np.savez(f, mu=mu, sigma=sigma, **extra)


def stats_inception_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 of the Inception weights a statistics file was computed with, where it records one."""
    with np.load(path, allow_pickle=False) as archive:
        return str(archive["inception_sha256"]) if "inception_sha256" in archive.files else None


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read (mu (D,), sigma (D, D)) as float64 from an .npz with keys 'mu' and 'sigma'.

    Raises FileNotFoundError for a missing file and InvalidStatsFile, naming the file and key, for an
    unreadable archive, a missing key, or wrongly shaped / non-finite arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics/fid.py: statistics file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise InvalidStatsFile(f"metrics/fid.py: cannot read {path} as an .npz archive "
                               f"({type(err).__name__}: {err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidStatsFile(f"metrics/fid.py: {path} is a single .npy array, not an .npz with keys 'mu' and 'sigma'")
    arrays = {}
    with archive:
        for key in ("mu", "sigma"):
            if key not in archive.files:
                raise InvalidStatsFile(f"metrics/fid.py: {path} has no key '{key}' (keys: {archive.files})")
            try:
                arrays[key] = np.asarray(archive[key], dtype=np.float64)
            except Exception as err:
                raise InvalidStatsFile(f"metrics/fid.py: {path}: cannot read key '{key}' "
                                       f"({type(err).__name__}: {err})") from err
    _check_stats(arrays["mu"], arrays["sigma"], source=str(path))
    return arrays["mu"], arrays["sigma"]


# ----------------------------------------------------------------------------- the distance

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D). Returns a float.

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrtm(sigma1 sigma2)).
    Numerics follow pytorch-fid's calculate_frechet_distance so numbers stay comparable: if sqrtm of the
    product is not finite, retry with eps * I added to both covariances (with a warning); a complex sqrtm
    is accepted as its real part when its diagonal imaginary parts are below 1e-3, else it raises.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"metrics/fid.py: frechet_distance got mismatched shapes mu1 {mu1.shape}, mu2 {mu2.shape}, "
                         f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"metrics/fid.py: sqrtm(sigma1 sigma2) is not finite (singular product); adding "
                      f"{eps:g} * I to both covariances", RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Round-off makes sqrtm of a (mathematically PSD-similar) product slightly complex; a large imaginary
        # part means the covariances are broken (too few samples, NaNs upstream), not round-off.
        max_imag = float(np.abs(np.diagonal(covmean).imag).max())
        if max_imag > 1e-3:
            raise ValueError(f"metrics/fid.py: sqrtm(sigma1 sigma2) has a diagonal imaginary component of "
                             f"{max_imag:.3g} (> 1e-3); the covariances are probably degenerate")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------- images -> statistics

def list_images(folder: str | os.PathLike) -> list[Path]:
    """All PNG/JPEG files under ``folder`` (recursive, case-insensitive suffix), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"metrics/fid.py: image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder(Dataset):
    """Images of a folder as (3, H, W) float32 tensors in [0, 1] (RGB; grayscale/alpha converted)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            with Image.open(self.paths[index]) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.float32)  # (H, W, 3), 0..255
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated / corrupt files
            raise OSError(f"metrics/fid.py: cannot read image {self.paths[index]}: {e}") from None
        return torch.from_numpy(pixels).permute(2, 0, 1) / 255.0  # (3, H, W)


def _batches(images: torch.Tensor | Dataset | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield (B, 3, H, W) batches from a tensor, a Dataset of images (or (image, label)), or an iterable of
    batches / single images."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"metrics/fid.py: an image tensor must be (N, 3, H, W), got {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    if isinstance(images, Dataset):
        dataset = images
        items: Iterable = (dataset[i] for i in range(len(dataset)))
    else:
        items = images
    pending: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, (tuple, list)):  # (image, label) pairs from labelled datasets
            item = item[0]
        if item.ndim == 4:
            yield item
        elif item.ndim == 3:
            pending.append(item)
            if len(pending) == batch_size:
                yield _stack(pending)
                pending = []
        else:
            raise ValueError(f"metrics/fid.py: expected (3, H, W) images or (B, 3, H, W) batches, got {tuple(item.shape)}")
    if pending:
        yield _stack(pending)


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise ValueError(f"metrics/fid.py: images in one batch have different shapes {sorted(sizes)}; "
                         f"resize them to one size first")
    return torch.stack(images)


@torch.no_grad()
def compute_stats(images: torch.Tensor | Dataset | Iterable, model: Callable[[torch.Tensor], torch.Tensor], *,
                  batch_size: int = 50, device: str | torch.device = "cpu",
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics (mu (D,), sigma (D, D)) of images in [0, 1] under ``model`` (e.g. FIDInceptionV3).

    ``images`` is an (N, 3, H, W) tensor, a Dataset returning (3, H, W) images (or (image, label) pairs), or
    an iterable of (B, 3, H, W) batches / single images (e.g. a sampler's output). ``model`` maps
    (B, 3, H, W) -> (B, D); nn.Modules are put in eval mode (FID is defined with frozen BatchNorm statistics).
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    total = len(images) if hasattr(images, "__len__") else None
    stats = FeatureStats()
    with tqdm(total=total, disable=not progress, desc="FID features", unit="img") as bar:
        for batch in _batches(images, batch_size):
            feats = model(batch.to(device=device, dtype=torch.float32))  # (B, D)
            stats.update(feats)
            bar.update(len(batch))
    return stats.mean_cov()


def stats_for_folder(folder: str | os.PathLike, model: Callable[[torch.Tensor], torch.Tensor], *,
                     batch_size: int = 50, device: str | torch.device = "cpu", min_images: int = 2,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of every PNG/JPEG under ``folder`` (sorted, recursive), read as [0, 1] RGB.

    Raises ValueError naming the folder and counts when it holds fewer than max(2, min_images) images
    (the covariance needs two; FID from a few hundred images is strongly biased upwards, so callers
    asking for a paper-comparable number should set min_images, e.g. 50_000).
    """
    paths = list_images(folder)
    needed = max(2, min_images)
    if len(paths) < needed:
        raise ValueError(f"metrics/fid.py: folder {folder} holds {len(paths)} PNG/JPEG images, "
                         f"need at least {needed} (min_images={min_images})")
    return compute_stats(ImageFolder(paths), model, batch_size=batch_size, device=device, progress=progress)


def cached_folder_stats(folder: str | os.PathLike, model, cache: str | os.PathLike, *,
                        device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``stats_for_folder`` of ``folder``, cached at ``cache`` (an .npz) beside a JSON key of the folder and of
    ``model.weights_sha256``: a rerun reads the cache, and a cache of other data or weights is an error."""
    import json

    from common.runs import write_json

    cache = Path(cache)
    key_file = cache.with_suffix(".json")
    key = {"fid_data": str(Path(folder).resolve()), "inception_sha256": model.weights_sha256}
    if cache.exists():
        saved = json.loads(key_file.read_text()) if key_file.is_file() else None
        if saved != key:
            raise ValueError(f"{cache} was computed from other data or Inception weights ({saved} vs {key}); "
                             "evaluate into a new folder")
        return load_stats(cache)
    stats = stats_for_folder(folder, model, device=device)
    save_stats(cache, *stats, inception_sha256=model.weights_sha256)
    write_json(key_file, key)
    return stats
