"""Structural similarity (Wang et al. 2004, "Image Quality Assessment: From Error Visibility to Structural
Similarity"), computed the way pytorch_msssim's ``ssim`` does, which is what the Diff-Pruning paper's
consistency numbers (SSIM between images sampled by the dense and the pruned model from the same noise) use.

For local statistics under a Gaussian window w (11 taps, sigma 1.5):

    mu_x = w * x,   sigma_x^2 = w * x^2 - mu_x^2,   sigma_xy = w * (x y) - mu_x mu_y
    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    C1 = (K1 R)^2, C2 = (K2 R)^2, K1 = 0.01, K2 = 0.03, R = data range

The window is applied separably (along H, then along W) with no padding ("valid"), so an HxW image gives an
(H-10)x(W-10) SSIM map; its mean over pixels, then over channels, is the image's SSIM. Without padding the
border pixels weigh less than with scikit-image's or the original MATLAB code's filtering, so numbers
differ slightly from those tools; we match pytorch_msssim because the paper does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(*, size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian, (size,), sampled at integer offsets centred on the middle tap (-5..5 for 11)."""
    coords = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of every channel. x: (N, C, H, W) -> (N, C, H - k + 1, W - k + 1)."""
    channels, k = x.shape[1], window.shape[0]
    w_h = window.view(1, 1, k, 1).expand(channels, 1, k, 1)  # one (k, 1) kernel per channel, along H
    w_w = window.view(1, 1, 1, k).expand(channels, 1, 1, k)  # then (1, k), along W
    x = F.conv2d(x, w_h, groups=channels)
    return F.conv2d(x, w_w, groups=channels)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"metrics/ssim.py: SSIM needs two batches of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"metrics/ssim.py: SSIM expects (N, C, H, W) images, got shape {tuple(a.shape)}")
    if min(a.shape[2:]) < WINDOW_SIZE:
        raise ValueError(f"metrics/ssim.py: images must be at least {WINDOW_SIZE}x{WINDOW_SIZE} for the "
                         f"{WINDOW_SIZE}-tap window, got {a.shape[2]}x{a.shape[3]}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"metrics/ssim.py: SSIM expects float images, got {a.dtype} and {b.dtype}")


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of two image batches a, b: (N, C, H, W) float, H, W >= 11. Returns (N,) float64.

    ``data_range`` is R, the span of pixel values (1.0 for images in [0, 1], 255 for 0..255, 2 for [-1, 1]).
    Computed in float64: sigma^2 = E[x^2] - mu^2 cancels almost everything in flat regions, and float32
    leaves errors of ~1e-6 there.
    """
    _check_pair(a, b)
    if data_range <= 0:
        raise ValueError(f"metrics/ssim.py: data_range must be positive, got {data_range}")
    x, y = a.to(torch.float64), b.to(torch.float64)
    window = gaussian_window(dtype=torch.float64).to(x.device)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2

    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)  # (N, C, H', W')
    sigma_xx = _filter_valid(x * x, window) - mu_x * mu_x
    sigma_yy = _filter_valid(y * y, window) - mu_y * mu_y
    sigma_xy = _filter_valid(x * y, window) - mu_x * mu_y

    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    contrast_structure = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    ssim_map = luminance * contrast_structure  # (N, C, H', W')
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)  # (N,): pixels first, then channels


def consistency(images_a: torch.Tensor, images_b: torch.Tensor, *, data_range: float = 1.0,
                batch_size: int = 256) -> float:
    """Mean SSIM over pairs (images_a[i], images_b[i]); both (N, C, H, W) float. Returns a float in [-1, 1].

    Used to measure how closely a pruned model reproduces its dense teacher's samples from the same noise.
    Pairs are processed ``batch_size`` at a time to bound the float64 working memory.
    """
    _check_pair(images_a, images_b)
    if len(images_a) == 0:
        raise ValueError("metrics/ssim.py: consistency needs at least one image pair, got 0")
    total = 0.0
    for start in range(0, len(images_a), batch_size):
        stop = start + batch_size
        total += float(ssim(images_a[start:stop], images_b[start:stop], data_range=data_range).sum())
    return total / len(images_a)
