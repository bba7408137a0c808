"""Datasets. Every dataset returns unaugmented float tensors (C, H, W) in [-1, 1]; train.py applies the
random horizontal flip itself: one mask per GLOBAL batch from its saved generator, sliced by rank like
the batch, so resumed and data-parallel runs draw exactly the same flips."""
from __future__ import annotations

from torch.utils.data import Dataset

DATASETS = ("shapes", "cifar10", "folder", "celeba")


def build_dataset(name: str, *, root: str | None = None, image_size: int = 32, split: str = "train",
                  size: int = 50_000, seed: int = 0) -> Dataset:
    """The dataset ``name``: "shapes" (procedural, no files), "cifar10" (python pickle batches under
    ``root``), "folder" (any image folder under ``root``, resized and center-cropped) or "celeba" (a folder of
    aligned CelebA images, ``img_align_celeba``: the DDIM codebase's 128 x 128 face box, then resized)."""
    if name == "shapes":
        from data.procedural import ProceduralShapes
        return ProceduralShapes(image_size=image_size, size=size, seed=seed, split=split)
    if name in ("cifar10", "folder", "celeba") and not root:
        raise ValueError(f"dataset {name!r} needs a folder: pass --data-root")
    if name == "cifar10":
        from data.cifar10 import CIFAR10
        return CIFAR10(root, train=(split == "train"))
    if name == "folder":
        from data.image_folder import ImageFolder
        return ImageFolder(root, image_size=image_size, crop="center")
    if name == "celeba":
        from data.image_folder import ImageFolder
        return ImageFolder(root, image_size=image_size, crop="celeba")
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def check_dataset(dataset: Dataset) -> int:
    """Decode every file of a file-backed dataset once, before any training step: a truncated or unreadable
    image fails now in one error naming every such file (``ImageFolder.verify``), not at the step that
    first draws it. Procedural and in-memory datasets have nothing to check. Returns the images checked."""
    verify = getattr(dataset, "verify", None)
    return verify() if callable(verify) else 0
