"""A folder of image files (LSUN exports, CelebA, FFHQ, ...) as square [-1, 1] tensors.

Files are found recursively and sorted by their path relative to ``root``, so index i is the same image on
every machine and every run. Each image is converted to RGB, then brought to ``image_size`` x
``image_size`` by one of three crops:

    "center"  resize the shorter side to image_size, then take the central square (DDIM's LSUN pipeline)
    "celeba"  cut the DDIM codebase's 128 x 128 face box from an aligned CelebA image, then resize
    "none"    the image must already be square; it is resized only if its size differs

Resizing is PIL bilinear, as torchvision's Resize does; data/transforms.py explains the choice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.transforms import celeba_crop, center_crop_resize, to_minus_one_one

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CROPS = ("center", "celeba", "none")


def list_images(root: str | os.PathLike) -> list[Path]:
    """All files under ``root`` (recursively) whose extension is in IMAGE_EXTENSIONS (any case), sorted.

    Sorting uses the POSIX form of the path relative to ``root``, so the order does not depend on the
    file system's listing order or on the absolute location of the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (or is not a folder)")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _square(img: Image.Image, *, image_size: int, crop: str) -> Image.Image:
    """Apply the ``crop`` mode of the module docstring; errors are re-raised with the path by the caller."""
    if crop == "center":
        return center_crop_resize(img, image_size)
    if crop == "celeba":
        # The face box is 128 x 128, so resizing it is a plain square -> square resize.
        return center_crop_resize(celeba_crop(img), image_size)
    w, h = img.size
    if w != h:
        raise ValueError(f"crop='none' needs square images, got {w}x{h} (WxH); use crop='center'")
    if w == image_size:
        return img
    return img.resize((image_size, image_size), resample=Image.Resampling.BILINEAR)


class ImageFolder(Dataset):
    """Every image under ``root`` as a float32 (3, image_size, image_size) tensor in [-1, 1].

    No augmentation (the training loop flips batches). Images are decoded lazily in ``__getitem__``;
    call :meth:`verify` to decode every file once up front and list the unreadable ones.

    :param root: folder searched recursively for IMAGE_EXTENSIONS.
    :param image_size: output height and width in pixels.
    :param crop: "center" | "celeba" | "none", see the module docstring.
    """

    def __init__(self, root: str | os.PathLike, *, image_size: int,
                 crop: Literal["center", "celeba", "none"] = "center"):
        if crop not in CROPS:
            raise ValueError(f"ImageFolder: crop must be one of {CROPS}, got {crop!r}")
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"ImageFolder: image_size must be a positive int, got {image_size!r}")
        self.root = Path(root)
        self.image_size = image_size
        self.crop = crop
        self.files = list_images(self.root)
        if not self.files:
            raise FileNotFoundError(f"image folder {self.root} contains no images "
                                    f"(searched recursively for {', '.join(IMAGE_EXTENSIONS)}, any case)")

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> Image.Image:
        """The cropped, resized RGB PIL image at ``index``; any failure is raised naming the file."""
        path = self.files[index]
        try:
            with Image.open(path) as img:
                # convert() decodes the whole file, so truncated images fail here rather than later.
                rgb = img.convert("RGB")
            return _square(rgb, image_size=self.image_size, crop=self.crop)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # PIL signals bad files with OSError (UnidentifiedImageError), ValueError or SyntaxError.
            raise OSError(f"cannot load image {path}: {type(e).__name__}: {e}") from e

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.load_image(index)
        return to_minus_one_one(np.asarray(img), layout="HWC")  # (3, image_size, image_size)

    def verify(self) -> int:
        """Decode and crop every file once; raise one OSError listing all failures. Returns the count checked."""
        failures = []
        for i in range(len(self.files)):
            try:
                self.load_image(i)
            except OSError as e:
                failures.append(str(e))
        if failures:
            shown = "\n  ".join(failures[:20])
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            raise OSError(f"{len(failures)} of {len(self.files)} images under {self.root} are unusable:\n  "
                          f"{shown}{more}")
        return len(self.files)
