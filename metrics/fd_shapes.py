"""FD-shapes and KID-shapes: FID's and KID's recipes in the feature space of ShapesNet, for the embedded default.

FID (Heusel et al. 2017) fits a Gaussian to a network's features of generated and of real images and reports
the Frechet distance between the two Gaussians (metrics/fid.py, ``frechet_distance``). FD-shapes is the same
distance, computed with the same code, on the D = 64 pooled features of ShapesNet (metrics/shapes_net.py: a
small CNN trained on the procedural shapes' latent attributes) instead of Inception-v3's 2048 pool3 features.
The real side is held-out data: the first ``REFERENCE_IMAGES`` images of the shapes test split (seed 0), which
neither the shipped teacher nor ShapesNet was trained on. KID-shapes (metrics/kid.py; Binkowski et al. 2018)
is reported with it: the Frechet distance's plug-in estimate is biased upwards at small sample sizes, KID's is
not, so KID is the number to compare across different sample counts.

FD-shapes values are only comparable with each other for the same ShapesNet weights (``weights_sha256``),
the same reference set and the same number of generated samples; benchmarks/fd_shapes_validation.py records
the noise floor (two disjoint real sets) at the sample sizes used, README "FD-shapes" lists it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.procedural import ProceduralShapes
from metrics.fid import frechet_distance, stats_from_features
from metrics.kid import kid
from metrics.shapes_net import ShapesNet, load_shapes_net

REFERENCE_IMAGES = 2048  # test-split images of the real side: shapes test split [0, 2048)
KID_SUBSET_SIZE, KID_SUBSETS = 1000, 100  # Binkowski et al.'s subset size; min(1000, N) for fewer samples


@torch.no_grad()
def shapes_features(images01: torch.Tensor, net: ShapesNet, *, batch_size: int = 256,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """ShapesNet features (N, D), float64, of images (N, 3, H, W) in [0, 1]."""
    net.eval()
    feats = [net(b.to(device=device, dtype=torch.float32)).double().cpu() for b in images01.split(batch_size)]
    return torch.cat(feats).numpy()


def real_images(count: int, *, image_size: int = 32, start: int = 0, split: str = "test") -> torch.Tensor:
    """Images start..start+count-1 of the shapes ``split`` (seed 0) as (N, 3, S, S) floats in [0, 1], quantised
    to uint8 first exactly as generated samples are (evaluate.py reads them back from PNGs)."""
    ds = ProceduralShapes(image_size=image_size, size=start + count, split=split)
    pixels = np.stack([ds.image_uint8(i) for i in range(start, start + count)])  # (N, S, S, 3) uint8
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def fd_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*stats_from_features(feats_a), *stats_from_features(feats_b))


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) with this module's subset settings."""
    return kid(feats_a, feats_b, subset_size=KID_SUBSET_SIZE, num_subsets=KID_SUBSETS, seed=seed)


@dataclass
class FDShapesReference:
    """The real side of FD-shapes: the network, its features of the reference images and their Gaussian."""

    net: ShapesNet
    features: np.ndarray  # (REFERENCE_IMAGES, D)
    mu: np.ndarray
    sigma: np.ndarray
    description: str

    @classmethod
    def build(cls, *, image_size: int, net: ShapesNet | None = None, num_images: int = REFERENCE_IMAGES,
              device: str | torch.device = "cpu") -> "FDShapesReference":
        """Load ShapesNet (the shipped checkpoint unless ``net`` is given) and embed the reference images.
        Raises ValueError when the network was trained at another resolution than ``image_size``."""
        net = net if net is not None else load_shapes_net(device=device)
        if net.config.image_size != image_size:
            raise ValueError(f"metrics/fd_shapes.py: ShapesNet was trained on {net.config.image_size}x"
                             f"{net.config.image_size} images, the samples are {image_size}x{image_size}")
        feats = shapes_features(real_images(num_images, image_size=image_size), net, device=device)
        mu, sigma = stats_from_features(feats)
        return cls(net=net, features=feats, mu=mu, sigma=sigma,
                   description=f"shapes test split (seed 0) [0, {num_images}), {image_size}x{image_size}")

    def measure(self, images01: torch.Tensor, *, device: str | torch.device = "cpu") -> dict:
        """FD-shapes and KID-shapes of images (N, 3, S, S) in [0, 1] against this reference."""
        feats = shapes_features(images01, self.net, device=device)
        kid_mean, kid_std = kid_from_features(feats, self.features)
        return {"fd_shapes": frechet_distance(*stats_from_features(feats), self.mu, self.sigma),
                "kid_shapes": kid_mean, "kid_shapes_std": kid_std, "fd_shapes_num_samples": len(feats),
                "fd_shapes_reference": self.description, "shapes_net_sha256": self.net.weights_sha256}
