"""Attribute accuracy: does a generated image show what its prompt asked for?

Text-to-image models are judged by how well the images follow the prompt (CLIP score, PickScore; LAPTOP-Diff,
arXiv 2404.11098, section 4, reports PickScore). For the captioned shapes (data/captions.py) the prompt's
content is known exactly, so it can be checked attribute by attribute: ShapesNet (metrics/shapes_net.py, the
weights with the background-name head, checkpoints/shapes_net_t2i.pt) reads each image, and the reading is
compared with what ``parse_caption`` says the caption asks for:

    count       number of shapes (ShapesNet's 3-way count head)        == the caption's shape count
    kinds       set of shape kinds present (4 flags, logit > 0)        == the caption's kinds
    colours     set of shape colours present (8 flags)                 == the caption's colours
    background  set of background colour names present (7 flags)      == the caption's one or two names
    pairs       set of (kind, colour) pairs present (32 flags)         == the caption's pairs ("a red square")
    all         count, kinds and colours all right together

``all`` holds count, kinds and colours and leaves out two attributes that
are reported beside it: ``pairs``, the binding of colours to kinds, and ``background``. The reader gets whole
pair sets right on 45% of held-out real images and both background names on 70% (the names cut a continuous
colour range into hue sectors, and colours near a border are ambiguous), against 87% for the kind sets, 95% for
the count and 97% for the colour sets (checkpoints/shapes_net_t2i.json); including them would cap real images'
``all`` far below 1. Each score is the fraction of images whose reading equals the
caption's value; the reader is fixed, so a prompt whose caption another model follows perfectly scores what real
images with that caption score (the ceiling, benchmarks/results/attribute_accuracy_validation.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from data.captions import CaptionAttributes, parse_caption
from metrics.shapes_net import TARGET_SLICES, ShapesNet, load_shapes_net

ATTRIBUTES = ("count", "kinds", "colours", "background", "pairs", "all")
ATTRIBUTE_READER_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_net_t2i.pt"


@dataclass(frozen=True)
class Reading:
    """What ShapesNet reads in one image (indices as in data/captions.py: SHAPES, COLOURS, BACKGROUND_NAMES)."""

    count: int
    kinds: frozenset[int]
    colours: frozenset[int]
    pairs: frozenset[tuple[int, int]]
    background: frozenset[int]


def load_attribute_reader(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> ShapesNet:
    """The ShapesNet that reads attributes (default checkpoints/shapes_net_t2i.pt); it needs the background head."""
    path = Path(path) if path is not None else ATTRIBUTE_READER_CHECKPOINT
    net = load_shapes_net(path, device=device)
    if not net.config.background_names:
        raise ValueError(f"metrics/attributes.py: ShapesNet {path} has no background-name head; train one with "
                         "benchmarks/train_shapes_net.py --background-names")
    return net


@torch.no_grad()
def read_attributes(net: ShapesNet, images01: torch.Tensor, *, batch_size: int = 256) -> list[Reading]:
    """images01: (N, 3, S, S) in [0, 1] -> one Reading per image (flags at logit > 0, count by argmax)."""
    if not net.config.background_names:
        raise ValueError("metrics/attributes.py: this ShapesNet has no background-name head "
                         "(config.background_names=0)")
    net.eval()
    device = next(net.parameters()).device
    s = TARGET_SLICES
    out = []
    for batch in images01.split(batch_size):
        pred = net.heads(net(batch.to(device).float())).cpu()  # (B, NUM_TARGETS + 7)
        count = pred[:, s["count"]].argmax(1) + 1
        flags = {key: pred[:, s[key]] > 0 for key in ("kinds", "colours", "pairs", "background_names")}
        n_colours = flags["colours"].shape[1]
        for i in range(len(batch)):
            on = {key: frozenset(torch.nonzero(f[i]).flatten().tolist()) for key, f in flags.items()}
            out.append(Reading(count=int(count[i]), kinds=on["kinds"], colours=on["colours"],
                               pairs=frozenset(divmod(p, n_colours) for p in on["pairs"]),
                               background=on["background_names"]))
    return out


def compare(reading: Reading, wanted: CaptionAttributes) -> dict[str, bool]:
    """Which attributes of one image match its caption (keys: ATTRIBUTES)."""
    ok = {"count": reading.count == wanted.count, "kinds": reading.kinds == wanted.kinds,
          "colours": reading.colours == wanted.colours, "background": reading.background == wanted.background_set,
          "pairs": reading.pairs == wanted.pairs}
    ok["all"] = ok["count"] and ok["kinds"] and ok["colours"]
    return ok


def _wanted(captions) -> list[CaptionAttributes]:
    """Captions (strings or CaptionAttributes) -> CaptionAttributes; every string parsed before any image is read."""
    wanted = []
    for i, c in enumerate(captions):
        if isinstance(c, CaptionAttributes):
            wanted.append(c)
            continue
        try:
            wanted.append(parse_caption(c))
        except ValueError as e:
            raise ValueError(f"metrics/attributes.py: caption {i} is not in the shapes grammar: {e}") from None
    return wanted


def attribute_accuracy(net: ShapesNet, images01: torch.Tensor, captions, *, batch_size: int = 256) -> dict:
    """Fraction of images whose read attributes match their caption, per attribute and all together.

    images01: (N, 3, S, S) in [0, 1]; captions: N strings of data/captions.py's grammar, or CaptionAttributes.
    Returns {"count", "kinds", "colours", "background", "pairs", "all": fraction in [0, 1], "n": N}.
    """
    wanted = _wanted(captions)
    if images01.ndim != 4 or len(images01) != len(wanted) or len(wanted) == 0:
        raise ValueError(f"metrics/attributes.py: need (N, 3, S, S) images and N >= 1 captions, got images "
                         f"{tuple(images01.shape)} and {len(wanted)} captions")
    readings = read_attributes(net, images01, batch_size=batch_size)
    matches = [compare(r, w) for r, w in zip(readings, wanted)]
    result = {key: sum(m[key] for m in matches) / len(matches) for key in ATTRIBUTES}
    result["n"] = len(matches)
    return result
