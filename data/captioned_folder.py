"""A folder of captioned images for text-to-image training: square [-1, 1] images and one caption each.

The images are data/image_folder.py's (found recursively, sorted by relative path, RGB, shorter side resized to
``image_size`` then the central square: the DDIM/LSUN "center" crop, which is also diffusers'
train_text_to_image.py's Resize + CenterCrop). Each image's caption comes from, in this order:

    metadata.jsonl   one JSON object per line, {"file_name": "0001.jpg", "text": "a caption"}: the Hugging Face
                     ``imagefolder`` convention; file_name is relative to the folder holding metadata.jsonl
    metadata.csv     a header row with the columns file_name,text (the same convention; BK-SDM's laion_aes
                     preprocessed_11k / preprocessed_212k folders are laid out this way)
    name.txt         a sidecar file beside name.jpg (img2dataset's 00000.jpg + 00000.txt layout)

SDXL's micro-conditioning reads, per image, its size before the resize and the crop's top-left corner after it
(``micro_conditions``; Podell et al. 2023, Sec. 2.2), from the file headers without decoding the pixels.

Metadata files are found anywhere under the root (one per subfolder is allowed). Every image needs a caption;
a metadata row naming a file that is not there, an image named by two rows, and an image without a caption are
one-line errors (ValueError / FileNotFoundError, naming the file), raised when the folder is opened, before any
image is decoded. A caption may be "" (an unconditional example). Unreadable images are found by ``verify``
(or by the first pass that decodes them), again naming the file.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from data.image_folder import IMAGE_EXTENSIONS, ImageFolder
from data.transforms import center_crop_offsets, shorter_side_size

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while it decodes and resizes


def _rows(path: Path) -> list[tuple[str, str, str]]:
    """(file_name, text, where) of every row of a metadata file; ``where`` names the line for errors."""
    rows = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{i}: not a JSON object ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) \
                    or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{i}: needs the string keys \"file_name\" and \"text\", "
                                 f"got {line.strip()[:80]}")
            rows.append((row["file_name"], row["text"], f"{path}:{i}"))
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"file_name", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: needs the columns file_name,text, has {','.join(reader.fieldnames or ())}")
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            rows.append((row["file_name"] or "", row["text"] or "", f"{path}:{i}"))
    return rows


def read_metadata(root: Path) -> dict[str, str]:
    """{image path relative to ``root`` (POSIX): caption} of every metadata file under ``root``."""
    captions: dict[str, str] = {}
    for meta in sorted(p for name in METADATA_FILES for p in root.rglob(name)):
        for file_name, text, where in _rows(meta):
            image = Path(os.path.normpath(meta.parent / file_name))
            if not image.is_file():
                raise FileNotFoundError(f"{where}: names {file_name!r}, but {image} does not exist")
            if image.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(f"{where}: names {file_name!r}, which is not an image file "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            key = image.relative_to(root).as_posix()
            if key in captions:
                raise ValueError(f"{where}: {key} already has a caption from another metadata row")
            captions[key] = text
    return captions


def folder_captions(root: str | os.PathLike, files: Sequence[Path]) -> list[str]:
    """The caption of each of ``files`` (images under ``root``), from the module docstring's sources in order."""
    root = Path(root)
    named = read_metadata(root)
    captions = []
    for path in files:
        key = path.relative_to(root).as_posix()
        sidecar = path.with_suffix(".txt")
        if key in named:
            captions.append(named[key])
        elif sidecar.is_file():
            captions.append(sidecar.read_text(encoding="utf-8").strip())
        else:
            raise ValueError(f"{path}: no caption (no {' / '.join(METADATA_FILES)} row names it, and no caption "
                             f"file {sidecar.name} beside it)")
    return captions


class CaptionedFolder:
    """Every image under ``root`` (float32 (3, image_size, image_size) in [-1, 1]) and its caption.

    :param root: the folder (module docstring for the caption layouts).
    :param image_size: output height and width in pixels (a latent U-Net's: latent size x the VAE's factor).
    """

    def __init__(self, root: str | os.PathLike, *, image_size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"captioned image folder {self.root} does not exist (or is not a folder)")
        self.images = ImageFolder(self.root, image_size=image_size, crop="center")  # no images: FileNotFoundError
        self.captions: list[str] = folder_captions(self.root, self.images.files)
        self._micro: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """The images at ``indices``: (N, 3, image_size, image_size) float32 in [-1, 1]. A file that cannot be
        decoded raises OSError naming it (the first one, in ``indices`` order)."""
        if len(indices) <= 1:
            return torch.stack([self.images[i] for i in indices])
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            return torch.stack(list(pool.map(self.images.__getitem__, indices)))

    def verify(self, chunk: int = 256) -> int:
        """Decode every image once (a truncated file fails now, naming it); returns the count checked."""
        for start in range(0, len(self), chunk):
            self.load(range(start, min(start + chunk, len(self))))
        return len(self)

    def micro_conditions(self) -> torch.Tensor:
        """(N, 4) long: each image's (original height, original width, crop top, crop left) as SDXL's
        micro-conditioning counts them: the size of the file, and the corner of the central square in the image
        resized so its shorter side is image_size (data/transforms.py). Read once from the file headers."""
        if self._micro is None:
            rows = []
            for path in self.images.files:
                try:
                    with Image.open(path) as img:
                        w, h = img.size  # the header only: no pixels are decoded
                except OSError as e:
                    raise OSError(f"{path}: cannot read the image size ({e})") from None
                size = self.images.image_size
                left, top = center_crop_offsets(*shorter_side_size(w, h, size), size)
                rows.append((h, w, top, left))
            self._micro = torch.tensor(rows, dtype=torch.long)
        return self._micro

    def checksum(self) -> str:
        """sha256 (16 hex) of every image's relative path, byte size and caption: what a resume compares (the
        pixels are not read; a file rewritten with the same size and name goes unnoticed)."""
        h = hashlib.sha256()
        for path, text in zip(self.images.files, self.captions):
            h.update(f"{path.relative_to(self.root).as_posix()}|{path.stat().st_size}|{text}\n".encode())
        return h.hexdigest()[:16]
