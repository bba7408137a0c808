"""The embedded default dataset: procedurally generated "shapes" images, deterministic from (seed, index).

Each image is a smooth two-colour gradient background with one to three flat-coloured shapes (disc,
square, triangle, ring) drawn from an 8-colour palette, rendered at 4x resolution and box-filtered
down (anti-aliased edges). Sharp edges, flat colour regions and a small palette make two kinds of
damage easy to see in samples: blurred or ragged edges (lost detail) and wrong or muddy colours and
broken shapes (lost content).

Image i of a split is a pure function of (seed, split, i, image_size): no files, no downloads, any
resolution. The train and test splits use disjoint random streams, so the test split serves as
held-out data for the held-out denoising loss. ``ProceduralShapes.attributes(i)`` returns the latent
attributes image i was drawn from (background colours, number, kinds and colours of the shapes): the labels
of the feature network behind FD-shapes (metrics/shapes_net.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

# Saturated, well-separated colours (RGB in [0, 1]).
PALETTE = np.array([
    [0.90, 0.10, 0.10],  # red
    [0.10, 0.60, 0.15],  # green
    [0.15, 0.30, 0.90],  # blue
    [0.95, 0.80, 0.10],  # yellow
    [0.60, 0.15, 0.75],  # purple
    [0.95, 0.50, 0.05],  # orange
    [0.05, 0.75, 0.80],  # cyan
    [0.95, 0.95, 0.95],  # white
], dtype=np.float64)
SHAPES = ("disc", "square", "triangle", "ring")
SPLIT_STREAM = {"train": 0, "test": 1}
SUPERSAMPLE = 4


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask of one shape centred at (cy, cx) with 'radius' r (image coordinates in [0, 1])."""
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    # Rotate the frame for squares and triangles so edges are not all axis-aligned.
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if kind == "square":
        half = r / np.sqrt(2.0)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Equilateral triangle inscribed in the circle of radius r: inside all three half-planes.
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = angle + np.pi / 2 + 2 * np.pi * k / 3
        inside &= (np.cos(a) * dx + np.sin(a) * dy) >= -r / 2
    return inside


@dataclass(frozen=True)
class ShapeAttributes:
    """The latent attributes of one painted shape. kind indexes SHAPES, colour indexes PALETTE; the centre
    (cy, cx) and radius r are in image coordinates [0, 1]; angle is the rotation in radians."""

    kind: int
    colour: int
    r: float
    cy: float
    cx: float
    angle: float


@dataclass(frozen=True)
class ImageAttributes:
    """The latent attributes one image was rendered from: the gradient background (its two colours, RGB in
    [0, 1], and the direction theta) and the shapes in painting order (later ones cover earlier ones)."""

    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    theta: float
    shapes: tuple[ShapeAttributes, ...]

    @property
    def num_shapes(self) -> int:
        return len(self.shapes)


def render_shapes_with_attributes(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, ImageAttributes]:
    """Render one image from the random stream ``rng``. Returns (uint8 (H, W, 3), its ImageAttributes).

    The order of the draws from ``rng`` is the dataset's definition: reordering them changes every image
    (tests/test_procedural_attributes.py compares against images saved before the attributes were exposed).
    """
    n = image_size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    # Background: muted gradient between two random colours along a random direction.
    c0, c1 = rng.uniform(0.15, 0.55, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)), 0, 1)[..., None]
    img = (1 - ramp) * c0 + ramp * c1  # (n, n, 3)

    shapes = []
    for _ in range(rng.integers(1, 4)):  # one to three shapes, painted in order (later ones on top)
        kind = int(rng.integers(len(SHAPES)))
        colour = int(rng.integers(len(PALETTE)))
        r = rng.uniform(0.12, 0.28)
        cy, cx = rng.uniform(r * 0.7, 1 - r * 0.7, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        img[_shape_mask(SHAPES[kind], yy, xx, cy, cx, r, angle)] = PALETTE[colour]
        shapes.append(ShapeAttributes(kind=kind, colour=colour, r=float(r), cy=float(cy), cx=float(cx),
                                      angle=float(angle)))

    # Box filter SUPERSAMPLE x SUPERSAMPLE blocks: anti-aliased edges at the target resolution.
    img = img.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    attrs = ImageAttributes(background=(tuple(map(float, c0)), tuple(map(float, c1))), theta=float(theta),
                            shapes=tuple(shapes))
    return np.round(img * 255).astype(np.uint8), attrs


def render_shapes(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Render one image from the random stream ``rng``. Returns uint8 (H, W, 3)."""
    return render_shapes_with_attributes(rng, image_size)[0]


class ProceduralShapes(Dataset):
    """``len`` images of the shapes dataset as float tensors (3, H, W) in [-1, 1], unaugmented.

    seed:  the dataset's seed; split: "train" or "test" (disjoint streams); size: number of images.
    """

    def __init__(self, *, image_size: int = 32, size: int = 50_000, seed: int = 0, split: str = "train"):
        if split not in SPLIT_STREAM:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_STREAM)}")
        if image_size < 4 or size < 1:
            raise ValueError(f"need image_size >= 4 and size >= 1, got image_size={image_size}, size={size}")
        self.image_size, self.size, self.seed, self.split = image_size, size, seed, split

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} images")
        return np.random.default_rng([self.seed, SPLIT_STREAM[self.split], index])

    def image_uint8(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (H, W, 3)."""
        return render_shapes(self._rng(index), self.image_size)

    def image_and_attributes(self, index: int) -> tuple[np.ndarray, ImageAttributes]:
        """Image ``index`` as uint8 (H, W, 3) and the latent attributes it was rendered from."""
        return render_shapes_with_attributes(self._rng(index), self.image_size)

    def attributes(self, index: int) -> ImageAttributes:
        """The latent attributes of image ``index`` (number of shapes, kinds, colours, background)."""
        return self.image_and_attributes(index)[1]

    def __getitem__(self, index: int) -> torch.Tensor:
        img = torch.from_numpy(self.image_uint8(index)).permute(2, 0, 1).float()  # (3, H, W) in [0, 255]
        return img / 127.5 - 1.0
