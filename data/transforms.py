"""Pixel conversions and PIL crops/resizes shared by every dataset.

Conventions (fixed for the whole project):

* A dataset item is ONE float32 tensor (C, H, W) in [-1, 1]:  x = 2 * (u / 255) - 1  for uint8 pixels u.
  This equals torchvision's ``ToTensor()`` + ``Normalize(0.5, 0.5)`` bit for bit: (u/255 - 0.5) / 0.5 rounds
  once, like 2 * (u/255) - 1, because multiplying by 2 is exact in floating point.
* Datasets never augment. train.py flips whole batches itself with its own ``torch.Generator``, so a
  resumed run draws exactly the flips the uninterrupted run would have drawn (a DataLoader worker's
  private RNG would not be saved in the checkpoint).

Resizing follows torchvision's ``Resize(size)`` default on PIL images, i.e. ``PIL.Image.resize`` with
``BILINEAR``, because that is what the pipelines we compare against use (the DDIM codebase's CelebA and
LSUN transforms, Diff-Pruning's and diffusers' training scripts). PIL widens its bilinear kernel when
downscaling, so this is antialiased, unlike ``F.interpolate(mode="bilinear")``. ADM (guided-diffusion)
uses repeated BOX halving followed by BICUBIC instead; FID numbers are not comparable across the two.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image

# The DDIM codebase's CelebA crop: with cx, cy = 89, 121 (the face centre in the 178 x 218 aligned images)
# it builds Crop(x1=cy-64, x2=cy+64, y1=cx-64, y2=cx+64) and calls F.crop(img, top=x1, left=y1,
# height=x2-x1, width=y2-y1). Its "x" is therefore the ROW axis. As a PIL box (left, top, right, bottom):
CELEBA_CROP_BOX = (25, 57, 153, 185)


# ----------------------------------------------------------------------------------------------------
# uint8 <-> [-1, 1]
# ----------------------------------------------------------------------------------------------------

def to_minus_one_one(image: np.ndarray | torch.Tensor, *, layout: Literal["HWC", "CHW"] = "HWC") -> torch.Tensor:
    """Convert uint8 pixels to a float32 (C, H, W) tensor in [-1, 1].

    :param image: uint8 array or tensor, (H, W, C) or (C, H, W) as named by ``layout``, or (H, W) grayscale
        (returned as (1, H, W)). ``np.asarray(pil_image)`` is HWC, hence the default.
    :param layout: the axis order of a 3-D ``image``; required because (3, 32, 3) is ambiguous.
    :return: float32 tensor (C, H, W), x = 2 * (u / 255) - 1.
    """
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"to_minus_one_one: layout must be 'HWC' or 'CHW', got {layout!r}")
    # np.array copies: arrays from PIL or memmaps can be read-only, which torch refuses to wrap silently.
    u = torch.from_numpy(np.array(image)) if isinstance(image, np.ndarray) else image
    if u.dtype != torch.uint8:
        raise TypeError(f"to_minus_one_one: expected uint8 pixels, got dtype {u.dtype} (shape {tuple(u.shape)})")
    if u.ndim == 2:
        u = u.unsqueeze(0)  # (1, H, W)
    elif u.ndim == 3:
        if layout == "HWC":
            u = u.permute(2, 0, 1)  # (C, H, W)
    else:
        raise ValueError(f"to_minus_one_one: expected a 2-D or 3-D image, got shape {tuple(u.shape)}")
    return u.to(torch.float32).div(255).mul(2).sub(1).contiguous()  # (C, H, W)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_minus_one_one`: clamp to [-1, 1], map to [0, 255], round to nearest, cast to uint8.

    Works on any shape (e.g. (C, H, W) or (B, C, H, W)); the layout is unchanged. Rounding (not the
    truncation of ``.to(uint8)``) makes the round trip uint8 -> [-1, 1] -> uint8 exact for all 256 values.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"to_uint8: expected a floating-point tensor in [-1, 1], got dtype {x.dtype}")
    return x.clamp(-1, 1).add(1).div(2).mul(255).round().to(torch.uint8)


# ----------------------------------------------------------------------------------------------------
# PIL crops and resizes (applied once per image, deterministic)
# ----------------------------------------------------------------------------------------------------

def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (torchvision ``Resize(size)``).

    The longer side is ``int(size * long / short)`` (truncated, as torchvision computes it). Bilinear;
    see the module docstring for why. Images already at the target size are returned unchanged.
    """
    if size <= 0:
        raise ValueError(f"resize_shorter_side: size must be positive, got {size}")
    new_w, new_h = shorter_side_size(*img.size, size)
    if (new_w, new_h) == img.size:
        return img
    return img.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)


def shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(W, H) of a w x h image after :func:`resize_shorter_side` to ``size``."""
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def center_crop_offsets(w: int, h: int, size: int) -> tuple[int, int]:
    """(left, top) of :func:`center_crop`'s ``size`` square in a w x h image."""
    return int(round((w - size) / 2.0)), int(round((h - size) / 2.0))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square (torchvision ``CenterCrop``: offsets round((W - size) / 2))."""
    w, h = img.size
    if w < size or h < size:
        # torchvision would zero-pad here; a silently padded training image is never what we want.
        raise ValueError(f"center_crop: image of size {w}x{h} (WxH) is smaller than the {size}x{size} crop")
    left, top = center_crop_offsets(w, h, size)
    return img.crop((left, top, left + size, top + size))


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size``, then take the central square: the LSUN/DDIM pipeline.

    :return: a ``size`` x ``size`` PIL image with the mode of ``img``.
    """
    return center_crop(resize_shorter_side(img, size), size)


def celeba_crop(img: Image.Image) -> Image.Image:
    """Cut the DDIM codebase's 128 x 128 CelebA face box: rows 57:185, columns 25:153 (see CELEBA_CROP_BOX).

    Meant for the 178 x 218 "img_align_celeba" images; resize the result to the model's resolution
    afterwards (``celeba_crop`` then :func:`resize_shorter_side`, as DDIM does with ``Resize``).
    """
    left, top, right, bottom = CELEBA_CROP_BOX
    w, h = img.size
    if w < right or h < bottom:
        # PIL would fill the part of the box outside the image with black without complaint.
        raise ValueError(f"celeba_crop: image of size {w}x{h} (WxH) does not contain the box {CELEBA_CROP_BOX} "
                         f"(left, top, right, bottom); expected an aligned CelebA image (178x218)")
    return img.crop(CELEBA_CROP_BOX)
