"""Kernel Inception Distance (Binkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs", ICLR).

KID is the squared Maximum Mean Discrepancy between two feature distributions under the cubic polynomial
kernel

    k(x, y) = (x . y / d + 1)^3,        d = the feature dimension,

estimated with the unbiased U-statistic of Gretton et al. 2012 ("A Kernel Two-Sample Test", JMLR, Lemma 6):

    MMD_u^2 = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)

Unlike the Frechet distance, whose plug-in estimate is biased upwards by an amount that depends on the sample
size, this estimate is unbiased at any size: two sets from one distribution give KID ~ 0 (and can give slightly
negative values) whether they hold 50 or 50,000 images. As Binkowski et al. do, the estimate is averaged over
``num_subsets`` random subsets of ``subset_size`` features of each set, and the spread over subsets is reported
with it. Everything is float64.
"""
from __future__ import annotations

import numpy as np
import torch

from metrics.fid import _as_float64_2d


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for every pair of rows: x (m, d), y (n, d) -> (m, n)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 (module docstring) between feature sets x (m, d) and y (n, d), m, n >= 2."""
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    # The U-statistic leaves out i == j: k(x_i, x_i) would pull every set towards itself.
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kid(feats_x: torch.Tensor | np.ndarray, feats_y: torch.Tensor | np.ndarray, *, subset_size: int = 1000,
        num_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID between two feature sets (N, D) and (M, D): (mean, standard deviation) of the unbiased MMD^2 over
    ``num_subsets`` subsets of min(subset_size, N, M) rows of each, drawn without replacement (seeded)."""
    x, y = _as_float64_2d(feats_x), _as_float64_2d(feats_y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"metrics/kid.py: feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"metrics/kid.py: KID needs at least 2 features in each set, got {len(x)} and {len(y)}")
    if num_subsets < 1:
        raise ValueError(f"metrics/kid.py: num_subsets must be >= 1, got {num_subsets}")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))
