"""Shapes metrics of a text-to-image evaluation: attribute accuracy and FD-shapes of samples of shapes captions.

When every prompt of ``evaluate.py --prompts FILE`` is a caption of data/captions.py's grammar (``parse_caption``
reads it), what each prompt asks for is known exactly, and the embedded world's own measures apply
(``--shapes-metrics auto``, the default; ``on`` demands them, ``off`` skips them):

    attribute accuracy   metrics/attributes.py: the shapes attribute reader (checkpoints/shapes_net_t2i.pt)
                         reads count, kinds, colours, background names and kind-colour pairs in each sample and
                         compares them with its prompt; per attribute and ``all`` (count, kinds, colours)
    FD-shapes, KID       metrics/fd_shapes.py: ShapesNet features (checkpoints/shapes_net.pt) of the N samples
                         against the first N real images of the shapes test split (seed 0, 8-bit, 32 x 32),
                         the same count, so the real-data floor at that N is comparable (FD's plug-in
                         estimate is biased upwards at small N; benchmarks/t2i_quality.py measures the floor
                         with two disjoint real sets)
    CLIP-shapes score    metrics/clip_score.py with ``--clip shapes`` (the default CLIP when the shapes metrics
                         are on and no --clip is given)

With data/prompts/shapes_heldout.txt (captions of test images [0, 128)) and one image per prompt, the real
side of FD-shapes is exactly the set of images the prompts describe. Both readers take 32 x 32 images: the
8-bit evaluation images are read as they are when they have that size, else bicubic-resized to it (PIL).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from common.errors import UserError
from data.captions import WORDS, CaptionedShapes, caption, parse_caption, word_changed
from metrics.attributes import ATTRIBUTE_READER_CHECKPOINT, attribute_accuracy, load_attribute_reader
from metrics.fd_shapes import FDShapesReference
from metrics.shapes_net import ShapesNet

MODES = ("auto", "on", "off")
SHAPES_CLIP = "shapes"  # metrics/clip_score.py LOCAL_CLIPS
REAL_SPLIT, REAL_SEED = "test", 0  # the real side: held out from every shapes model's training


def first_unparsed(prompts) -> str | None:
    """Why the prompts are not all shapes captions ("prompt i ...: reason"), or None when they all are."""
    for i, p in enumerate(prompts):
        try:
            parse_caption(p)
        except ValueError:
            return f"prompt {i + 1} ({p!r}) is not a shapes caption (data/captions.py grammar)"
    return None


def resolve(mode: str, prompts) -> tuple[bool, str | None]:
    """(shapes metrics on?, why not). ``on`` with a prompt outside the grammar, or without prompts, is a
    UserError naming the prompt; ``auto`` turns them on exactly when every prompt parses."""
    if mode not in MODES:
        raise UserError(f"--shapes-metrics must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return False, "--shapes-metrics off"
    if prompts is None:  # class labels: on only when asked (metrics/class_shapes.py checks the labels)
        return mode == "on", (None if mode == "on" else
                              "class labels: --shapes-metrics on measures kind accuracy (metrics/class_shapes.py)")
    why = first_unparsed(prompts)
    if why is not None and mode == "on":
        raise UserError(f"--shapes-metrics on: {why}")
    return why is None, why


def real_images_and_captions(count: int, *, start: int = 0, image_size: int = 32,
                             split: str = REAL_SPLIT) -> tuple[torch.Tensor, list[str]]:
    """Images start..start+count-1 of the shapes ``split`` (seed 0) as (N, 3, S, S) in [0, 1], 8-bit values
    (as a PNG holds them), with their own captions (the paraphrase data/captions.py gives each image)."""
    ds = CaptionedShapes(image_size=image_size, size=start + count, seed=REAL_SEED, split=split)
    pixels = np.stack([ds.shapes.image_uint8(i) for i in range(start, start + count)])  # (N, S, S, 3) uint8
    captions = [ds.caption_and_attributes(i)[0] for i in range(start, start + count)]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0, captions


def at_size(images01: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) 8-bit-valued images in [0, 1] at size x size: unchanged when H = W = size, else each
    bicubic-resized with PIL on its 8-bit values (as evaluate.py's --eval-size resize)."""
    if tuple(images01.shape[-2:]) == (size, size):
        return images01
    arr = (images01.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    out = [np.asarray(Image.fromarray(a).resize((size, size), resample=Image.BICUBIC)) for a in arr]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class ShapesMetrics:
    """The two readers and FD-shapes' real side for ``num_samples`` samples, built before any sampling."""

    reader: ShapesNet
    fd_reference: FDShapesReference | None  # None below 2 samples (no covariance)
    num_samples: int

    @classmethod
    def build(cls, num_samples: int, *, device: str | torch.device = "cpu") -> "ShapesMetrics":
        """Load the attribute reader and ShapesNet, embed test images [0, num_samples). Missing checkpoints
        fail here, in seconds, not after generation."""
        if not ATTRIBUTE_READER_CHECKPOINT.is_file():
            raise UserError(f"shapes metrics: the attribute reader {ATTRIBUTE_READER_CHECKPOINT} is missing "
                            "(benchmarks/train_shapes_net.py --background-names trains it); or --shapes-metrics off")
        reader = load_attribute_reader(device=device)
        size = reader.config.image_size
        fd = FDShapesReference.build(image_size=size, num_images=num_samples, device=device) if num_samples >= 2 else None
        return cls(reader=reader, fd_reference=fd, num_samples=num_samples)

    @property
    def image_size(self) -> int:
        return self.reader.config.image_size

    def measure(self, images01: torch.Tensor, prompts, *, device: str | torch.device = "cpu") -> dict:
        """Attribute accuracy and FD-shapes / KID-shapes of samples (N, 3, H, W) in [0, 1] of ``prompts``."""
        if len(images01) != self.num_samples or len(prompts) != self.num_samples:
            raise ValueError(f"metrics/t2i_shapes.py: built for {self.num_samples} samples, got {len(images01)} "
                             f"images and {len(prompts)} prompts")
        x = at_size(images01, self.image_size)
        out = {"attribute_accuracy": attribute_accuracy(self.reader, x, list(prompts)),
               "attribute_reader_sha256": self.reader.weights_sha256, "shapes_image_size": self.image_size}
        if self.fd_reference is None:
            return {**out, "fd_shapes": None, "fd_shapes_skipped": "FD-shapes needs at least 2 samples"}
        return {**out, **self.fd_reference.measure(x, device=device)}


def flat(report: dict) -> dict:
    """The shapes entries of a report as flat rows for a table: attribute_accuracy.count, ..., fd_shapes."""
    rows = {f"attribute_accuracy.{k}": v for k, v in report.get("attribute_accuracy", {}).items() if k != "n"}
    kinds = report.get("kind_accuracy") or {}  # class labels (metrics/class_shapes.py)
    rows.update({f"kind_accuracy.{k}": v for k, v in (("all", kinds.get("all")), *kinds.get("per_class", {}).items())
                 if v is not None})
    rows.update({k: report[k] for k in ("fd_shapes", "kid_shapes", "fd_shapes_num_samples", "fd_shapes_reference")
                 if report.get(k) is not None})
    return rows


# ------------------------------------------------------------------------------- what the text side can see
def _changed_captions(ds: CaptionedShapes) -> tuple[list[str], dict[str, list[tuple[int, str]]]]:
    """The own captions of ``ds``'s images and, per word, [(index, caption with that word changed)], each changed
    caption in its image's own paraphrase (data/captions.py ``word_changed`` at its fixed shift). No pixels."""
    items = [ds.caption_and_attributes(i) for i in range(len(ds))]
    changed = {}
    for word in WORDS:
        rows = [(i, word_changed(ca, word)) for i, (_, ca) in enumerate(items)]
        changed[word] = [(i, caption(c, ds.variant(i))) for i, c in rows if c is not None]
    return [t for t, _ in items], changed


def _test_captions(count: int) -> CaptionedShapes:
    return CaptionedShapes(size=count, split=REAL_SPLIT, seed=REAL_SEED)


def word_sensitivity(model, tokenizer, count: int) -> dict:
    """Per word: the fraction of real test images [0, count) whose own caption scores a higher CLIP-shapes
    cosine than the caption with that word changed (0.5: the CLIP cannot see that word)."""
    from metrics.clip_score import pair_cosines
    ds = _test_captions(count)
    own_captions, changed = _changed_captions(ds)
    images01 = (torch.stack([ds[i][0] for i in range(count)]) + 1) / 2
    own = pair_cosines(model, tokenizer, images01, own_captions)
    out = {}
    for word, rows in changed.items():
        idx = [i for i, _ in rows]
        other = pair_cosines(model, tokenizer, images01[idx], [t for _, t in rows])
        out[word] = {"own_higher": float((own[idx] > other).double().mean()), "images": len(idx)}
    return out


@torch.no_grad()
def text_state_change(text_encoder, tokenizer, count: int) -> dict:
    """Per word: what a text-conditional U-Net can read of it. For the captions of test images [0, count) and
    the same captions with that word changed, the mean over captions of ||H - H'|| / ||H|| where H (L, D) is
    the text encoder's last hidden state over the caption's tokens (BOS to EOS; what cross-attention reads,
    as SD-1 reads CLIP's). Near 0: the encoder maps both captions to (almost) the same states, so no U-Net
    trained on them can follow that word, however long it trains."""
    from models.clip.text import eos_positions
    own_captions, changed = _changed_captions(_test_captions(count))
    out = {}
    for word, rows in changed.items():
        a = tokenizer([own_captions[i] for i, _ in rows])
        b = tokenizer([t for _, t in rows])
        ha, hb = text_encoder(a).last_hidden_state, text_encoder(b).last_hidden_state
        # The two captions may differ in length ("a red disc" / "two red discs"): compare up to the longer EOS
        # (CLIP pads with EOS, so the first one ends the caption).
        length = torch.maximum(eos_positions(a, tokenizer.eos_token_id), eos_positions(b, tokenizer.eos_token_id)) + 1
        mask = (torch.arange(a.shape[1])[None, :] < length[:, None]).to(ha.dtype)[..., None]
        rel = ((ha - hb) * mask).flatten(1).norm(dim=1) / (ha * mask).flatten(1).norm(dim=1)
        out[word] = {"relative_change": float(rel.mean()), "captions": len(rows)}
    return out


def word_checks(clip, tokenizer, count: int) -> dict:
    """Both measures for a CLIPModel: CLIP-shapes word sensitivity of its two towers and the hidden-state change
    of its text tower (models/clip/load.py ``text_encoder_of``), the text encoder an SD pipeline built on it
    would have."""
    from models.clip.load import text_encoder_of
    return {"word_sensitivity": word_sensitivity(clip, tokenizer, count),
            "text_state_change": text_state_change(text_encoder_of(clip), tokenizer, count)}
