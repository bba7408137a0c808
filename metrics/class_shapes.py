"""Shapes metrics of a class-conditional evaluation: kind accuracy and FD-shapes of samples of shape-kind labels.

The class-conditional shapes model (training/class_conditioning.py) is asked for a shape kind y (data/procedural.py
SHAPES: 0 disc, 1 square, 2 triangle, 3 ring) and trained on the images whose shapes are all of kind y. Its
samples are measured as the text teacher's are (metrics/t2i_shapes.py), with the label in place of the caption:

    kind accuracy   the attribute reader (metrics/attributes.py, checkpoints/shapes_net_t2i.pt) reads the set of
                    kinds in each sample; a sample is right when that set is exactly {y}; overall and per class
    FD-shapes, KID  ShapesNet features (metrics/fd_shapes.py) of the N samples against N real test-split images
                    drawn to the same labels: for each sample of label y, the next single-kind test image of kind
                    y (seed 0, in index order), so the real side has the samples' class mix and the floor at N
                    is that of two matched real sets

``evaluate.py --model FOLDER --class-labels 4 --shapes-metrics on`` turns them on (``auto`` leaves them off for
class labels: nothing in a label says the model draws shapes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from common.cli import UserError
from data.captions import caption_attributes
from data.procedural import SHAPES, ProceduralShapes
from metrics.attributes import ATTRIBUTE_READER_CHECKPOINT, load_attribute_reader, read_attributes
from metrics.fd_shapes import FDShapesReference, shapes_features, stats_from_features
from metrics.shapes_net import ShapesNet, load_shapes_net

REAL_SPLIT, REAL_SEED = "test", 0
SEARCH_LIMIT = 50_000  # test images scanned for single-kind ones (about 44% are; 32 per class needs ~300)


def check_labels(labels: Sequence[int]) -> None:
    """Every label is a shape kind, or a one-line error naming the first that is not."""
    for i, y in enumerate(labels):
        if not 0 <= int(y) < len(SHAPES):
            raise UserError(f"--shapes-metrics on: class label {y} (sample {i}) is not a shape kind "
                            f"(0..{len(SHAPES) - 1}: {', '.join(SHAPES)})")


def matched_real_images(labels: Sequence[int], *, image_size: int = 32) -> tuple[torch.Tensor, list[int]]:
    """(N, 3, S, S) 8-bit-valued real images in [0, 1], image i single-kind of kind labels[i], and their indices
    in the test split: for each label in order, the next unused single-kind test image of that kind."""
    check_labels(labels)
    ds = ProceduralShapes(image_size=image_size, size=SEARCH_LIMIT, seed=REAL_SEED, split=REAL_SPLIT)
    need = {y: sum(1 for v in labels if v == y) for y in set(int(v) for v in labels)}
    found: dict[int, list[int]] = {y: [] for y in need}
    for i in range(SEARCH_LIMIT):
        kinds = caption_attributes(ds.attributes(i)).kinds
        if len(kinds) == 1:
            y = next(iter(kinds))
            if y in need and len(found[y]) < need[y]:
                found[y].append(i)
        if all(len(found[y]) == need[y] for y in need):
            break
    else:
        short = {SHAPES[y]: need[y] - len(found[y]) for y in need if len(found[y]) < need[y]}
        raise UserError(f"shapes metrics: the first {SEARCH_LIMIT:,} test images hold too few single-kind images "
                        f"for these labels (short by {short}); ask for fewer images per label")
    taken = {y: iter(found[y]) for y in found}
    indices = [next(taken[int(y)]) for y in labels]
    pixels = np.stack([ds.image_uint8(i) for i in indices])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0, indices


def kind_accuracy(reader: ShapesNet, images01: torch.Tensor, labels: Sequence[int]) -> dict:
    """{"all": fraction of samples whose read kinds are exactly {label}, "per_class": {kind name: fraction},
    "n": N}."""
    readings = read_attributes(reader, images01)
    right = [r.kinds == frozenset({int(y)}) for r, y in zip(readings, labels)]
    per = {SHAPES[y]: float(np.mean([ok for ok, v in zip(right, labels) if int(v) == y]))
           for y in sorted(set(int(v) for v in labels))}
    return {"all": float(np.mean(right)), "per_class": per, "n": len(right)}


@dataclass
class ClassShapesMetrics:
    """The attribute reader and FD-shapes' matched real side for one list of labels, built before sampling."""

    reader: ShapesNet
    fd_reference: FDShapesReference | None  # None below 2 samples
    labels: tuple[int, ...]

    @classmethod
    def build(cls, labels: Sequence[int], *, device: str | torch.device = "cpu") -> "ClassShapesMetrics":
        check_labels(labels)
        if not ATTRIBUTE_READER_CHECKPOINT.is_file():
            raise UserError(f"shapes metrics: the attribute reader {ATTRIBUTE_READER_CHECKPOINT} is missing; "
                            "or --shapes-metrics off")
        reader = load_attribute_reader(device=device)
        size = reader.config.image_size
        fd = None
        if len(labels) >= 2:
            net = load_shapes_net(device=device)
            real, idx = matched_real_images(labels, image_size=size)
            feats = shapes_features(real, net, device=device)
            mu, sigma = stats_from_features(feats)
            fd = FDShapesReference(net=net, features=feats, mu=mu, sigma=sigma,
                                   description=f"single-kind shapes test images (seed 0) matched to the labels, "
                                               f"indices {min(idx)}..{max(idx)}, {size}x{size}")
        return cls(reader=reader, fd_reference=fd, labels=tuple(int(y) for y in labels))

    def measure(self, images01: torch.Tensor, *, device: str | torch.device = "cpu") -> dict:
        """Kind accuracy and FD-shapes / KID-shapes of samples (N, 3, S, S) in [0, 1] of ``self.labels``."""
        if len(images01) != len(self.labels):
            raise ValueError(f"metrics/class_shapes.py: built for {len(self.labels)} samples, got {len(images01)}")
        from metrics.t2i_shapes import at_size

        x = at_size(images01, self.reader.config.image_size)
        out = {"kind_accuracy": kind_accuracy(self.reader, x, self.labels),
               "attribute_reader_sha256": self.reader.weights_sha256}
        if self.fd_reference is None:
            return {**out, "fd_shapes": None, "fd_shapes_skipped": "FD-shapes needs at least 2 samples"}
        return {**out, **self.fd_reference.measure(x, device=device)}
