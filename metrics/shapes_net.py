"""ShapesNet: a small CNN trained on the procedural shapes' latent attributes; its pooled features define FD-shapes.

FID (Heusel et al. 2017) measures a distance between image distributions in the feature space of a network
trained to recognise what the images contain (Inception-v3 on ImageNet). The embedded default's images are
not ImageNet photographs and the Inception weights cannot always be downloaded, so FD-shapes uses a network
trained to recognise what THIS data contains: the attributes each procedural image was drawn from
(data/procedural.py, ``ProceduralShapes.attributes``). Trained multi-label on

    number of shapes (1, 2, 3)         3-way softmax
    kinds present (disc/square/...)    4 sigmoids
    colours present (8 palette)        8 sigmoids
    (kind, colour) pairs present       32 sigmoids: "a red square", the content damage diffusion samples show
    background colours (RGB)           6 regressed values: (c0 + c1) / 2 and |c0 - c1| (an image with
                                       (c0, c1, theta) equals the one with (c1, c0, theta + pi), so the order
                                       of the two colours cannot be learned)
    background names (optional)        7 sigmoids: which of data/captions.py's BACKGROUND_NAMES name an end
                                       of the gradient (config.background_names = 7; 0 in the first weights),
                                       what a caption says about the background (metrics/attributes.py)

so its features are meant to respond to what a broken sample gets wrong: blobs instead of squares and
triangles, muddy colours, the wrong number of shapes, wrong backgrounds. The shipped weights are briefly
trained (their held-out accuracies are in checkpoints/shapes_net.json: well above chance, far from perfect).

Layout for a 32x32 input (every conv 3x3, then BatchNorm and SiLU)::

    conv 3 -> w0 (32x32) -> conv s2 w0 -> w1 (16x16) -> conv w1 -> w1 -> conv s2 w1 -> w2 (8x8) -> conv w2 -> w2
    -> conv s2 w2 -> feature_dim / 2 (4x4) -> [global average pool, global max pool] -> features (B, feature_dim)
    -> linear heads

BatchNorm, not GroupNorm: GroupNorm normalises each image by its own statistics and so removes the absolute
colours this network has to see (with it, colour presence and the background stayed at chance). In eval mode
BatchNorm uses its running statistics, so an image's features do not depend on the batch it is in.
The features concatenate an average and a max pool: FID's pool3 is an average, but "is there a red square
anywhere" is a max over positions, which an average only approximates.

``forward(images01)`` returns the features (the FID convention: images in [0, 1], (B, 3, H, W)), so the
network plugs into metrics/fid.py's ``compute_stats`` as the Inception does. A checkpoint is
``{"format": "diffprune-shapes-net", "format_version": 1, "config", "state_dict", "meta"}``, read with
``weights_only=True``; ``checkpoints/shapes_net.pt`` was written by benchmarks/train_shapes_net.py, with its
command and config in ``checkpoints/shapes_net.json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.captions import BACKGROUND_NAMES, caption_attributes
from data.procedural import PALETTE, SHAPES, ImageAttributes

FORMAT = "diffprune-shapes-net"
FORMAT_VERSION = 1
SHAPES_NET_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_net.pt"

# The target vector's layout. The background colours are drawn uniformly in [0.15, 0.55] (data/procedural.py);
# their mean is regressed as (mean - 0.35) / 0.2 and their distance as |c0 - c1| / 0.2, targets of order 1.
MAX_SHAPES = 3
NUM_KINDS, NUM_COLOURS = len(SHAPES), len(PALETTE)
NUM_BACKGROUND_NAMES = len(BACKGROUND_NAMES)
TARGET_SLICES = {
    "count": slice(0, MAX_SHAPES),
    "kinds": slice(3, 3 + NUM_KINDS),
    "colours": slice(7, 7 + NUM_COLOURS),
    "pairs": slice(15, 15 + NUM_KINDS * NUM_COLOURS),
    "background": slice(47, 53),  # (c0 + c1) / 2 (3), then |c0 - c1| (3)
    "background_names": slice(53, 53 + NUM_BACKGROUND_NAMES),  # only when config.background_names > 0
}
NUM_TARGETS = 53  # without the optional background names
BACKGROUND_CENTRE, BACKGROUND_HALF_RANGE = 0.35, 0.2


def attribute_targets(attrs: ImageAttributes, *, background_names: bool = False) -> np.ndarray:
    """The (NUM_TARGETS,) float32 training target of one image (layout: TARGET_SLICES); with
    background_names, (NUM_TARGETS + NUM_BACKGROUND_NAMES,): the caption's background-name flags appended.

    count is one-hot (the index is num_shapes - 1); kinds, colours and (kind, colour) pairs are 0/1 presence
    flags; background is the two gradient colours' mean and absolute difference, rescaled. A shape entirely covered by a later one still
    counts: the generator drew it, and such cases are rare (a few percent) label noise.
    """
    y = np.zeros(NUM_TARGETS + (NUM_BACKGROUND_NAMES if background_names else 0), dtype=np.float32)
    y[TARGET_SLICES["count"].start + attrs.num_shapes - 1] = 1.0
    for s in attrs.shapes:
        y[TARGET_SLICES["kinds"].start + s.kind] = 1.0
        y[TARGET_SLICES["colours"].start + s.colour] = 1.0
        y[TARGET_SLICES["pairs"].start + s.kind * NUM_COLOURS + s.colour] = 1.0
    c0, c1 = np.asarray(attrs.background, dtype=np.float64)
    y[TARGET_SLICES["background"]] = np.concatenate([((c0 + c1) / 2 - BACKGROUND_CENTRE), np.abs(c0 - c1)]) \
        / BACKGROUND_HALF_RANGE
    if background_names:
        for name in caption_attributes(attrs).background:
            y[TARGET_SLICES["background_names"].start + name] = 1.0
    return y


@dataclass(frozen=True)
class ShapesNetConfig:
    image_size: int = 32
    widths: tuple[int, int, int] = (16, 32, 48)
    feature_dim: int = 64     # D of the features FD-shapes and KID are computed on (half average-, half max-pooled)
    background_names: int = 0  # NUM_BACKGROUND_NAMES to read the background's colour names, 0 for no such head

    def __post_init__(self):
        if self.feature_dim < 2 or self.feature_dim % 2:
            raise ValueError(f"metrics/shapes_net.py: feature_dim must be even and >= 2, got {self.feature_dim}")
        if self.background_names not in (0, NUM_BACKGROUND_NAMES):
            raise ValueError(f"metrics/shapes_net.py: background_names must be 0 or {NUM_BACKGROUND_NAMES}, "
                             f"got {self.background_names}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ShapesNetConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"metrics/shapes_net.py: unknown ShapesNetConfig keys {sorted(unknown)}")
        return cls(**{**d, "widths": tuple(d.get("widths", cls.widths))})


class ConvNormAct(nn.Module):
    """conv 3x3 (stride 1 or 2, padding 1) -> BatchNorm -> SiLU. (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)."""

    def __init__(self, *, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class ShapesNet(nn.Module):
    """images in [0, 1] (B, 3, S, S) -> features (B, feature_dim); ``heads(features)`` -> (B, NUM_TARGETS)."""

    def __init__(self, config: ShapesNetConfig):
        super().__init__()
        self.config = config
        w0, w1, w2 = config.widths
        self.body = nn.Sequential(
            ConvNormAct(in_ch=3, out_ch=w0, stride=1),
            ConvNormAct(in_ch=w0, out_ch=w1, stride=2),
            ConvNormAct(in_ch=w1, out_ch=w1, stride=1),
            ConvNormAct(in_ch=w1, out_ch=w2, stride=2),
            ConvNormAct(in_ch=w2, out_ch=w2, stride=1),
            ConvNormAct(in_ch=w2, out_ch=config.feature_dim // 2, stride=2),
        )
        self.head = nn.Linear(config.feature_dim, NUM_TARGETS + config.background_names)
        self.weights_sha256: str | None = None  # set by load_shapes_net: which weights the features came from

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        if images01.ndim != 4 or tuple(images01.shape[1:]) != (3, s, s):
            raise ValueError(f"metrics/shapes_net.py: ShapesNet takes (B, 3, {s}, {s}) images in [0, 1], "
                             f"got {tuple(images01.shape)}")
        h = self.body(images01 * 2 - 1)  # the diffusion models' [-1, 1] range
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, feature_dim)

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        """(B, NUM_TARGETS [+ background_names]) attribute predictions: logits for count, kinds, colours, pairs
        and background names, values for the background colours (layout: TARGET_SLICES)."""
        return self.head(features)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor (the identity of a feature space)."""
    h = hashlib.sha256()
    for name, value in sorted(state_dict.items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_shapes_net(path: str | os.PathLike, net: ShapesNet, meta: dict) -> None:
    from models.checkpoint import atomic_torch_save

    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": net.config.to_dict(),
                       "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                       "meta": meta}, path)


def load_shapes_net(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> ShapesNet:
    """The ShapesNet of a checkpoint (default: the shipped checkpoints/shapes_net.pt), in eval mode."""
    path = Path(path) if path is not None else SHAPES_NET_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"metrics/shapes_net.py: ShapesNet checkpoint {path} does not exist "
                                "(train one with benchmarks/train_shapes_net.py)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"metrics/shapes_net.py: {path} is not a ShapesNet checkpoint (format "
                         f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}, "
                         f"expected {FORMAT!r})")
    net = ShapesNet(ShapesNetConfig.from_dict(ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"], strict=True)
    net.weights_sha256 = state_dict_sha256(ckpt["state_dict"])
    return net.to(device).eval()
