"""The FID Inception-v3: the 2048-d pool3 features that FID is defined on.

This is Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture") as pytorch-fid builds it
to match the 2015-12-05 TensorFlow graph that the original FID code (Heusel et al. 2017) used, so that the
weights file ``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True`` and FID numbers are
comparable with published ones. It differs from the ImageNet Inception-v3 of model zoos in three places:

- the average pools inside the A, C and first E blocks do NOT count the zero padding
  (``count_include_pad=False``), as TensorFlow's average pool does;
- the last block (Mixed_7c) max-pools in its pool branch instead of average-pooling;
- the classifier has 1008 outputs (``fc``). It is in the state dict but FID never uses it.

Layout (feature maps for a 299x299 input)::

    Conv2d_1a_3x3 s2 -> 149x149x32   Conv2d_2a_3x3 -> 147x147x32   Conv2d_2b_3x3 p1 -> 147x147x64
    maxpool 3 s2 -> 73x73x64         Conv2d_3b_1x1 -> 73x73x80     Conv2d_4a_3x3 -> 71x71x192
    maxpool 3 s2 -> 35x35x192
    Mixed_5b/5c/5d (A)  -> 35x35x256 / 288 / 288
    Mixed_6a (B, reduction) -> 17x17x768;  Mixed_6b..6e (C) -> 17x17x768
    Mixed_7a (D, reduction) -> 8x8x1280;   Mixed_7b (E, avg pool) -> 8x8x2048;  Mixed_7c (E, max pool) -> 8x8x2048
    global average pool -> 2048 ("pool3")

Every convolution is a ``BasicConv2d``: conv (no bias) -> BatchNorm(eps=0.001) -> ReLU.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"
FID_WEIGHTS_HASH_PREFIX = "6726825d"  # the SHA-256 prefix in the file name, checked on download
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048


class InceptionWeightsUnavailable(FileNotFoundError):
    """The FID Inception weights are neither at the given path, nor in the torch hub cache, nor downloadable."""


class InceptionWeightsMismatch(ValueError):
    """A weights file whose tensor names or shapes are not those of the FID Inception-v3."""


class BasicConv2d(nn.Module):
    """conv (bias=False) -> BatchNorm(eps=0.001, TensorFlow's value) -> ReLU. (N, in_ch, H, W) -> (N, out_ch, H', W')."""

    def __init__(self, *, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3_same(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool divides by the number of real (unpadded) pixels under the window;
    # torch's default would also count the zero padding and darken every border pixel.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1.

    (N, in_ch, H, W) -> (N, 64 + 64 + 96 + pool_ch, H, W).
    """

    def __init__(self, *, in_ch: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch=in_ch, out_ch=64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_ch=in_ch, out_ch=48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(in_ch=48, out_ch=64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch=in_ch, out_ch=64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(in_ch=64, out_ch=96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(in_ch=96, out_ch=96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_ch=in_ch, out_ch=pool_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3_same(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class ReductionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): 3x3 s2 | 1x1->3x3->3x3 s2 | maxpool 3 s2.

    (N, in_ch, 35, 35) -> (N, 384 + 96 + in_ch, 17, 17).
    """

    def __init__(self, *, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch=in_ch, out_ch=384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch=in_ch, out_ch=64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(in_ch=64, out_ch=96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(in_ch=96, out_ch=96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b..6e): 1x1 | 1x7->7x1 | (7x1->1x7)x2 | avgpool->1x1.

    ``mid_ch`` is the width inside the factorised 7x7 branches (128, 160, 160, 192).
    (N, in_ch, H, W) -> (N, 4 * 192, H, W).
    """

    def __init__(self, *, in_ch: int, mid_ch: int):
        super().__init__()
        c = mid_ch
        self.branch1x1 = BasicConv2d(in_ch=in_ch, out_ch=192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_ch=in_ch, out_ch=c, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(in_ch=c, out_ch=c, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(in_ch=c, out_ch=192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch=in_ch, out_ch=c, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(in_ch=c, out_ch=c, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(in_ch=c, out_ch=c, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(in_ch=c, out_ch=c, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(in_ch=c, out_ch=192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch=in_ch, out_ch=192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        bp = self.branch_pool(_avg_pool_3x3_same(x))
        return torch.cat([b1, b7, b7d, bp], dim=1)


class ReductionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 1x1->3x3 s2 | 1x1->1x7->7x1->3x3 s2 | maxpool 3 s2.

    (N, in_ch, 17, 17) -> (N, 320 + 192 + in_ch, 8, 8).
    """

    def __init__(self, *, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch=in_ch, out_ch=192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(in_ch=192, out_ch=320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch=in_ch, out_ch=192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(in_ch=192, out_ch=192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(in_ch=192, out_ch=192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(in_ch=192, out_ch=192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Mixed_7b, Mixed_7c).

    1x1 | 1x1 -> [1x3, 3x1] | 1x1 -> 3x3 -> [1x3, 3x1] | pool -> 1x1, where [a, b] means both convs read the
    same input and are concatenated. ``pool`` is "avg" (padding not counted) in Mixed_7b and "max" in Mixed_7c.
    (N, in_ch, H, W) -> (N, 320 + 768 + 768 + 192 = 2048, H, W).
    """

    def __init__(self, *, in_ch: int, pool: Literal["avg", "max"]):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"metrics/inception.py: InceptionE pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch=in_ch, out_ch=320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_ch=in_ch, out_ch=384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(in_ch=384, out_ch=384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(in_ch=384, out_ch=384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch=in_ch, out_ch=448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(in_ch=448, out_ch=384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(in_ch=384, out_ch=384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(in_ch=384, out_ch=384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch=in_ch, out_ch=192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        h = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(h), self.branch3x3_2b(h)], dim=1)
        h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], dim=1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3_same(x)
        else:
            # The TF graph's last block max-pools here (pytorch-fid's "FIDInceptionE_2"); a model-zoo
            # Inception-v3 average-pools, which changes every FID number.
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3d, bp], dim=1)


class FIDInceptionV3(nn.Module):
    """Images in [0, 1] -> 2048-d pool3 features, exactly as FID defines them.

    Attribute names and registration order equal the state-dict layout of the pytorch-fid weights file
    (``tests/data/reference/fid_inception_layout.txt``), so ``load_state_dict(..., strict=True)`` works.
    Build with ``load_fid_inception`` to get the real weights and eval mode.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(in_ch=3, out_ch=32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(in_ch=32, out_ch=32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(in_ch=32, out_ch=64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(in_ch=64, out_ch=80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(in_ch=80, out_ch=192, kernel_size=3)
        self.Mixed_5b = InceptionA(in_ch=192, pool_ch=32)
        self.Mixed_5c = InceptionA(in_ch=256, pool_ch=64)
        self.Mixed_5d = InceptionA(in_ch=288, pool_ch=64)
        self.Mixed_6a = ReductionB(in_ch=288)
        self.Mixed_6b = InceptionC(in_ch=768, mid_ch=128)
        self.Mixed_6c = InceptionC(in_ch=768, mid_ch=160)
        self.Mixed_6d = InceptionC(in_ch=768, mid_ch=160)
        self.Mixed_6e = InceptionC(in_ch=768, mid_ch=192)
        self.Mixed_7a = ReductionD(in_ch=768)
        self.Mixed_7b = InceptionE(in_ch=1280, pool="avg")
        self.Mixed_7c = InceptionE(in_ch=2048, pool="max")
        # Only here so that the weights file loads strictly; FID reads the features before it.
        self.fc = nn.Linear(FID_FEATURE_DIM, 1008)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """images01: (N, 3, H, W) float in [0, 1], any H, W. Returns (N, 2048) pool3 features."""
        if images01.ndim != 4 or images01.shape[1] != 3 or not images01.is_floating_point():
            raise ValueError(f"metrics/inception.py: FIDInceptionV3 expects float images (N, 3, H, W) in [0, 1], "
                             f"got dtype {images01.dtype} shape {tuple(images01.shape)}")
        lo, hi = float(images01.min()), float(images01.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            # The usual mistake is passing [-1, 1] model samples or 0..255 pixels; both give silently wrong FID.
            raise ValueError(f"metrics/inception.py: FIDInceptionV3 expects images in [0, 1], got values in "
                             f"[{lo:.4g}, {hi:.4g}]; map [-1, 1] samples with (x + 1) / 2 and uint8 with x / 255")
        # pytorch-fid's input handling: plain bilinear resize (no antialiasing, even when shrinking), then [-1, 1].
        x = F.interpolate(images01, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear",
                          align_corners=False, antialias=False)
        x = 2 * x - 1  # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048): adaptive average pool to 1x1, flattened


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise InceptionWeightsMismatch listing missing, unexpected and mis-shaped tensors (names and shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = "; ".join(items[:10]) + (f"; ... ({len(items) - 10} more)" if len(items) > 10 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise InceptionWeightsMismatch(f"metrics/inception.py: {source} is not a FID Inception-v3 state dict "
                                       f"(expected {FID_WEIGHTS_FILENAME}): " + " | ".join(problems))


def fid_weights_cache_path() -> Path:
    """Where the weights file is looked for (and downloaded to): <torch hub dir>/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def _find_or_download_weights(weights_path: str | os.PathLike | None, *, download: bool) -> Path:
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise InceptionWeightsUnavailable(f"metrics/inception.py: FID Inception weights file {path} does not exist")
        return path
    cached = fid_weights_cache_path()
    if cached.is_file():
        return cached
    how = (f"Download {FID_WEIGHTS_URL} on a machine with network access and either pass its path "
           f"as weights_path or copy it to {cached}")
    if not download:
        raise InceptionWeightsUnavailable(f"metrics/inception.py: no FID Inception weights at {cached} and "
                                          f"download=False. {how}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(cached), hash_prefix=FID_WEIGHTS_HASH_PREFIX)
    except Exception as err:  # offline, proxy, HTTP error or a hash mismatch: all end the same way
        raise InceptionWeightsUnavailable(f"metrics/inception.py: could not download the FID Inception weights "
                                          f"({type(err).__name__}: {err}). {how}") from err
    return cached


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_fid_release(sha256: str) -> bool:
    """Whether a weights file's SHA-256 is the FID release's (its file name carries the hash prefix)."""
    return sha256.startswith(FID_WEIGHTS_HASH_PREFIX)


def load_fid_inception(weights_path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                       download: bool = True) -> FIDInceptionV3:
    """Build the FID Inception-v3 with the pytorch-fid weights, in eval mode, on ``device``.

    Looks for the weights at ``weights_path`` if given, else in the torch hub cache
    (``fid_weights_cache_path()``), else downloads them there (``download=True``). Raises
    InceptionWeightsUnavailable with instructions when none of these works, and InceptionWeightsMismatch
    naming the offending tensors when the file is not this network's state dict.

    The model carries ``weights_path``, ``weights_sha256`` and ``is_fid_release``: a distance computed with
    weights that are not the release file is not FID (callers name it "FD with custom Inception weights").
    """
    path = _find_or_download_weights(weights_path, download=download)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InceptionWeightsMismatch(f"metrics/inception.py: cannot read {path} as a torch state dict "
                                       f"({type(err).__name__}: {err})") from err
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InceptionWeightsMismatch(f"metrics/inception.py: {path} does not hold a flat dict of tensors "
                                       f"(got {type(state_dict).__name__})")
    model = FIDInceptionV3()
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict, strict=True)
    model.weights_path = str(path)
    model.weights_sha256 = file_sha256(path)
    model.is_fid_release = is_fid_release(model.weights_sha256)
    return model.to(device).eval()
