"""CIFAR-10 from the official "python version" pickle batches, plus a checked download and a PNG export.

On-disk format (https://www.cs.toronto.edu/~kriz/cifar.html), folder ``cifar-10-batches-py/``:

    data_batch_1 .. data_batch_5   50,000 training images, 10,000 per file
    test_batch                     10,000 test images
    each file: a Python 2 pickle of a dict with bytes keys
        b"data"    uint8 array (N, 3072): each row is the R plane, then G, then B, each 32 x 32 row-major,
                   so row.reshape(3, 32, 32)[c, y, x] is channel c at row y, column x
        b"labels"  list of N ints in 0..9 (index into CLASSES)
        b"batch_label", b"filenames"   unused here

Python 2 wrote the strings in these files, so Python 3 must load them with ``encoding="bytes"``. They are
unpickled with an allow-list of the few numpy constructors an array needs: a pickle from the internet
must not be able to run arbitrary code.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.transforms import to_minus_one_one, to_uint8

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ----------------------------------------------------------------------------------------------------
# Reading the batches
# ----------------------------------------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a dict of numpy arrays, lists and strings needs."""

    # numpy 1.x pickles name numpy.core.multiarray; numpy 2.x renamed it numpy._core (the old name still
    # resolves). _codecs.encode is how Python 3 protocol-2 pickles spell a bytes object.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,)); errors name ``path``."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError) as e:
        raise ValueError(f"CIFAR-10 batch {path} is corrupt or unreadable ({type(e).__name__}: {e}); "
                         f"delete the folder and download it again with download_cifar10") from e
    if not isinstance(entry, dict) or b"data" not in entry or b"labels" not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"CIFAR-10 batch {path} is not a dict with b'data' and b'labels' (found {keys})")
    data = np.asarray(entry[b"data"])
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR-10 batch {path}: b'data' should be uint8 (N, 3072), "
                         f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"CIFAR-10 batch {path}: b'labels' should be {data.shape[0]} ints in 0..9, "
                         f"got shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels  # planes R, G, B -> (N, C, H, W) directly


def _resolve_folder(root: str | os.PathLike) -> Path:
    """Accept either the folder that contains ``cifar-10-batches-py`` or that folder itself."""
    root = Path(root)
    if (root / FOLDER_NAME).is_dir():
        return root / FOLDER_NAME
    if root.is_dir():
        return root
    raise FileNotFoundError(f"CIFAR-10 folder {root} does not exist. Download it with "
                            f"`from data.cifar10 import download_cifar10; download_cifar10({str(root)!r})` "
                            f"(fetches {CIFAR10_URL}), or point root at a folder containing {FOLDER_NAME}/")


class CIFAR10(Dataset):
    """The CIFAR-10 train (50,000) or test (10,000) split, held in memory as uint8.

    ``dataset[i]`` is a float32 (3, 32, 32) tensor in [-1, 1], without augmentation (the training loop
    flips batches, see data/transforms.py). ``.labels`` is an int64 array (N,), ``.images`` the raw uint8
    (N, 3, 32, 32) array.

    :param root: the folder containing ``cifar-10-batches-py/``, or that folder itself.
    :param train: the five training batches if True, else ``test_batch``.
    """

    def __init__(self, root: str | os.PathLike, *, train: bool = True):
        self.folder = _resolve_folder(root)
        names = TRAIN_FILES if train else TEST_FILES
        missing = [n for n in names if not (self.folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 folder {self.folder} lacks the batch files {missing}; "
                                    f"expected the extracted {FOLDER_NAME}/ from {CIFAR10_URL} "
                                    f"(see download_cifar10)")
        batches = [_load_batch(self.folder / n) for n in names]
        self.train = train
        self.images = np.concatenate([b[0] for b in batches])  # (N, 3, 32, 32) uint8
        self.labels = np.concatenate([b[1] for b in batches])  # (N,) int64

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_minus_one_one(self.images[index], layout="CHW")  # (3, 32, 32)


# ----------------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------------

def _check_member(member: tarfile.TarInfo, source: str) -> None:
    """Reject a tar member that could write outside the target folder (absolute path, '..', link, device)."""
    name = PurePosixPath(member.name.replace("\\", "/"))
    # A leading "/" or a drive ("C:") makes the member absolute; ".." anywhere can climb out of root.
    if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
        raise ValueError(f"refusing to extract {source}: member {member.name!r} would land outside the target folder")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"refusing to extract {source}: member {member.name!r} is a link or special file")


def download_cifar10(root: str | os.PathLike, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Download, md5-check and extract CIFAR-10 into ``root``; return ``root/cifar-10-batches-py``.

    Does nothing if the six batch files are already there. The archive is streamed to a temp file in
    ``root`` and deleted afterwards; on an md5 mismatch it is deleted and a ValueError names both sums.
    ``url``/``md5`` exist so tests (or a mirror) can substitute a local ``file://`` archive.
    """
    root = Path(root)
    folder = root / FOLDER_NAME
    if all((folder / n).is_file() for n in TRAIN_FILES + TEST_FILES):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".cifar-10-python.", suffix=".tar.gz.part", dir=root)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # an integrity check, so FIPS builds allow it
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            # 1 MiB chunks: the 163 MB archive never sits in memory whole.
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != md5:
            raise ValueError(f"md5 mismatch for {url}: expected {md5}, got {actual}; the download was deleted")
        with tarfile.open(tmp, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, source=url)
            # The "data" filter (Python >= 3.11.4) repeats these checks in the standard library.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **extra)
    finally:
        tmp.unlink(missing_ok=True)
    if not folder.is_dir():
        raise FileNotFoundError(f"extracted {url} into {root} but found no {FOLDER_NAME}/ folder in it")
    return folder


# ----------------------------------------------------------------------------------------------------
# Export (FID reference statistics are computed from PNG folders)
# ----------------------------------------------------------------------------------------------------

def export_png(dataset: Dataset, out_dir: str | os.PathLike) -> int:
    """Write every item of a [-1, 1] image dataset as ``out_dir/{index:05d}.png``; return the count.

    Works for any dataset following the project convention (one (C, H, W) tensor per item). For CIFAR-10
    the PNGs hold the original pixels exactly, since to_uint8 inverts to_minus_one_one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    width = max(5, len(str(n - 1)))
    for i in range(n):
        x = dataset[i]
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"export_png: item {i} should be a (1 or 3, H, W) tensor, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        u = to_uint8(x).permute(1, 2, 0).numpy()  # (H, W, C)
        Image.fromarray(u[:, :, 0] if u.shape[2] == 1 else u).save(out_dir / f"{i:0{width}d}.png")
    return n
