"""Captions of the procedural shapes: a deterministic sentence per image, its grammar, and a parser back.

Each shapes image (data/procedural.py) was drawn from known attributes: one to three shapes, each a kind
(disc, square, triangle, ring) in a palette colour, on a gradient between two muted background colours.
``caption_attributes`` reduces those to what a caption says (``CaptionAttributes``): the multiset of
(kind, colour) shapes and the background's colour names; ``caption`` writes it as one of ``NUM_VARIANTS``
paraphrases; ``parse_caption`` reads any paraphrase back, so ``parse_caption(caption(a, v)) ==
caption_attributes(a)`` for every image and variant (tests/test_captions.py).

Grammar (every caption is lower case ASCII; ``variant`` = template + 4 * reversed group order)::

    caption    ::= shapes " on " bg-a                       (template 0)
                 | bg-a " with " shapes                     (template 1)
                 | shapes " in front of " bg-b              (template 2)
                 | "a picture of " shapes " on " bg-b       (template 3)
    shapes     ::= group | group " and " group | group ", " group " and " group
    group      ::= article " " colour " " kind | number " " colour " " kinds
    article    ::= "a" | "an"                               ("an" before a vowel: "an orange disc")
    number     ::= "two" | "three"
    colour     ::= "red" | "green" | "blue" | "yellow" | "purple" | "orange" | "cyan" | "white"
    kind       ::= "disc" | "square" | "triangle" | "ring"
    kinds      ::= kind "s"
    bg-a       ::= article " " bgname "-to-" bgname " background" | article " " bgname " background"
    bg-b       ::= "a background fading from " bgname " to " bgname | "a plain " bgname " background"
    bgname     ::= "red" | "yellow" | "green" | "cyan" | "blue" | "purple" | "grey"

Groups gather equal (kind, colour) shapes ("two red discs"); in the canonical order (variants 0-3) larger
groups come first, then by kind and colour index; variants 4-7 list the groups in reverse. Which variant an
image gets is drawn from its own random stream (``caption_variant``), so the same image always gets the same
sentence while the corpus holds every template.

Background names: a background colour is "grey" when its chroma (max - min of RGB) is under ``GREY_CHROMA``,
else the 60-degree hue sector it falls in (red centred at 0 degrees, then yellow, green, cyan, blue, purple).
With two different names the first is the colour at the left end of a mostly horizontal gradient, or at the
top of a mostly vertical one; equal names collapse into one ("a plain green background"). A shape that a later
one covers entirely is still captioned, as ShapesNet's labels count it (a few percent of images).
"""
from __future__ import annotations

import colorsys
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from data.procedural import PALETTE, SHAPES, SPLIT_STREAM, ImageAttributes, ProceduralShapes

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")  # PALETTE's order
BACKGROUND_NAMES = ("red", "yellow", "green", "cyan", "blue", "purple", "grey")
GREY_CHROMA = 0.1  # about 15% of the muted background colours (uniform in [0.15, 0.55]^3) fall under it
NUMBERS = {2: "two", 3: "three"}
NUM_TEMPLATES = 4
NUM_VARIANTS = 2 * NUM_TEMPLATES
CAPTION_STREAM = 20  # appended to an image's (seed, split, index) key: the stream the variant is drawn from
assert len(COLOURS) == len(PALETTE)


@dataclass(frozen=True)
class CaptionAttributes:
    """What a caption states. shapes: sorted (kind, colour) pairs, one per shape (a multiset; kind indexes
    SHAPES, colour indexes COLOURS); background: one or two BACKGROUND_NAMES indices, left/top end first."""

    shapes: tuple[tuple[int, int], ...]
    background: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.shapes)

    @property
    def kinds(self) -> frozenset[int]:
        return frozenset(k for k, _ in self.shapes)

    @property
    def colours(self) -> frozenset[int]:
        return frozenset(c for _, c in self.shapes)

    @property
    def pairs(self) -> frozenset[tuple[int, int]]:
        return frozenset(self.shapes)

    @property
    def background_set(self) -> frozenset[int]:
        return frozenset(self.background)


# ----------------------------------------------------------------------------------------------------
# Attributes -> caption
# ----------------------------------------------------------------------------------------------------

def background_name(rgb) -> int:
    """Index into BACKGROUND_NAMES of one RGB colour in [0, 1]: grey below GREY_CHROMA, else its hue sector."""
    r, g, b = (float(v) for v in rgb)
    if max(r, g, b) - min(r, g, b) < GREY_CHROMA:
        return BACKGROUND_NAMES.index("grey")
    hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360.0
    return int(((hue + 30.0) % 360.0) // 60.0)  # sector 0 is red, [-30, 30) degrees


def background_ends(attrs: ImageAttributes) -> tuple:
    """The two gradient colours, (left or top end, right or bottom end). data/procedural.py blends
    ramp = 0.5 + cos(theta) (x - 0.5) + sin(theta) (y - 0.5) from c0 (ramp 0) to c1 (ramp 1), x to the right and
    y downwards, so c0 lies at the left when cos(theta) > 0 and at the top when sin(theta) > 0."""
    c0, c1 = attrs.background
    c, s = math.cos(attrs.theta), math.sin(attrs.theta)
    c0_first = c > 0 if abs(c) >= abs(s) else s > 0
    return (c0, c1) if c0_first else (c1, c0)


def caption_attributes(attrs: ImageAttributes) -> CaptionAttributes:
    """The caption-level attributes of one image (see the module docstring for the naming rules)."""
    first, second = (background_name(c) for c in background_ends(attrs))
    return CaptionAttributes(shapes=tuple(sorted((s.kind, s.colour) for s in attrs.shapes)),
                             background=(first,) if first == second else (first, second))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _group_phrase(kind: int, colour: int, n: int) -> str:
    if n == 1:
        return f"{_article(COLOURS[colour])} {COLOURS[colour]} {SHAPES[kind]}"
    return f"{NUMBERS[n]} {COLOURS[colour]} {SHAPES[kind]}s"


def _shapes_phrase(ca: CaptionAttributes, reverse: bool) -> str:
    groups = sorted(Counter(ca.shapes).items(), key=lambda kv: (-kv[1], kv[0]))  # larger groups first
    if reverse:
        groups = groups[::-1]
    words = [_group_phrase(k, c, n) for (k, c), n in groups]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption(ca: CaptionAttributes, variant: int = 0) -> str:
    """The caption of ``ca`` written as paraphrase ``variant`` (0 .. NUM_VARIANTS - 1; 0 is canonical)."""
    if not 0 <= variant < NUM_VARIANTS:
        raise ValueError(f"data/captions.py: variant must be in 0..{NUM_VARIANTS - 1}, got {variant}")
    if not 1 <= ca.count <= 3 or not 1 <= len(ca.background) <= 2:
        raise ValueError(f"data/captions.py: cannot caption {ca}: need 1-3 shapes and 1-2 background names")
    template, reverse = variant % NUM_TEMPLATES, variant >= NUM_TEMPLATES
    shapes = _shapes_phrase(ca, reverse)
    names = [BACKGROUND_NAMES[i] for i in ca.background]
    if template in (0, 1):
        adj = "-to-".join(names)
        bg = f"{_article(adj)} {adj} background"
    else:
        bg = f"a background fading from {names[0]} to {names[1]}" if len(names) == 2 \
            else f"a plain {names[0]} background"
    return (f"{shapes} on {bg}", f"{bg} with {shapes}", f"{shapes} in front of {bg}",
            f"a picture of {shapes} on {bg}")[template]


WORDS = ("colour", "kind", "count", "background")  # the words ``word_changed`` can change
WORD_SHIFT = {"colour": 1, "kind": 1, "background": 2}  # the evaluation's fixed change (t2i_quality.py)


def word_changed(ca: CaptionAttributes, word: str, *, shift: int | None = None,
                 fewer: bool = False) -> CaptionAttributes | None:
    """``ca`` with one word of its caption changed: the first shape's colour (index + shift, of 8) or kind
    (+ shift, of 4), one more shape of the first kind and colour, or the first background name (+ shift, of
    7); shift defaults to WORD_SHIFT. The count change is None at three shapes unless ``fewer``, which then
    drops the first shape. The result always differs from ``ca`` as a caption does (for shift not a multiple
    of the list's length): a kind or colour change alters the shapes multiset, a background change that meets
    the second name collapses the gradient into a plain background."""
    if word not in WORDS:
        raise ValueError(f"data/captions.py: word must be one of {', '.join(WORDS)}, got {word!r}")
    shift = WORD_SHIFT.get(word, 0) if shift is None else shift
    (kind, colour), rest = ca.shapes[0], ca.shapes[1:]
    if word == "colour":
        return CaptionAttributes(tuple(sorted(((kind, (colour + shift) % len(COLOURS)),) + rest)), ca.background)
    if word == "kind":
        return CaptionAttributes(tuple(sorted((((kind + shift) % len(SHAPES), colour),) + rest)), ca.background)
    if word == "count":
        if ca.count < 3:
            return CaptionAttributes(tuple(sorted(ca.shapes + ((kind, colour),))), ca.background)
        return CaptionAttributes(rest, ca.background) if fewer else None
    first = (ca.background[0] + shift) % len(BACKGROUND_NAMES)
    background = (first,) + ca.background[1:]
    return CaptionAttributes(ca.shapes, background[:1] if len(set(background)) == 1 else background)


def hard_negatives(ca: CaptionAttributes, rng: np.random.Generator) -> list[CaptionAttributes]:
    """One caption per word of WORDS that differs from ``ca`` in that word alone, the shift drawn from ``rng``
    (NegCLIP's swapped-attribute negatives, Yuksekgonul et al. 2023, Sec. 4): what a contrastive text tower
    must tell apart from the true caption, so it cannot learn to ignore a word the image tower finds hard."""
    sizes = {"colour": len(COLOURS), "kind": len(SHAPES), "count": 2, "background": len(BACKGROUND_NAMES)}
    return [word_changed(ca, w, shift=int(rng.integers(1, sizes[w])), fewer=True) for w in WORDS]


def caption_variant(*, seed: int, split: str, index: int) -> int:
    """The paraphrase image ``index`` of (seed, split) is captioned with: drawn from its own random stream."""
    return int(np.random.default_rng([seed, SPLIT_STREAM[split], index, CAPTION_STREAM]).integers(NUM_VARIANTS))


# ----------------------------------------------------------------------------------------------------
# Caption -> attributes
# ----------------------------------------------------------------------------------------------------

_BG = "|".join(BACKGROUND_NAMES)
_BG_A = rf"an? (?P<a1>{_BG})(?:-to-(?P<a2>{_BG}))? background"
_BG_B = rf"(?:a background fading from (?P<b1>{_BG}) to (?P<b2>{_BG})|a plain (?P<b3>{_BG}) background)"
_TEMPLATES = (  # tried in this order; "a picture of" before the plain "<shapes> on" it would also match
    re.compile(rf"a picture of (?P<shapes>.+) on {_BG_B}"),
    re.compile(rf"(?P<shapes>.+) in front of {_BG_B}"),
    re.compile(rf"{_BG_A} with (?P<shapes>.+)"),
    re.compile(rf"(?P<shapes>.+) on {_BG_A}"),
)
_GROUP = re.compile(rf"(?P<n>an?|two|three) (?P<colour>{'|'.join(COLOURS)}) (?P<kind>{'|'.join(SHAPES)})(?P<s>s?)")
_COUNTS = {"a": 1, "an": 1, "two": 2, "three": 3}


def _parse_shapes(text: str, caption_text: str) -> tuple[tuple[int, int], ...]:
    head, sep, last = text.rpartition(" and ")
    parts = (head.split(", ") if sep else []) + [last]
    shapes = []
    for part in parts:
        m = _GROUP.fullmatch(part)
        if m is None:
            raise ValueError(f"data/captions.py: cannot parse the shape group {part!r} in {caption_text!r}")
        n, colour, kind = _COUNTS[m["n"]], COLOURS.index(m["colour"]), SHAPES.index(m["kind"])
        if (n > 1) != bool(m["s"]) or (n == 1 and m["n"] != _article(m["colour"])):
            raise ValueError(f"data/captions.py: number or article does not agree in {part!r} of {caption_text!r}")
        shapes += [(kind, colour)] * n
    return tuple(sorted(shapes))


def parse_caption(text: str) -> CaptionAttributes:
    """The attributes a caption states (any paraphrase of the grammar). Raises ValueError naming the caption."""
    clean = " ".join(text.strip().lower().split())
    # A CLIP tokenizer decodes "red-to-blue" as "red - to - blue" and "disc," as "disc ,": read those too.
    clean = re.sub(r" ?- ?", "-", clean).replace(" ,", ",")
    for template in _TEMPLATES:
        m = template.fullmatch(clean)
        if m is None:
            continue
        groups = m.groupdict()
        names = [groups.get(k) for k in ("a1", "a2", "b1", "b2", "b3")]
        background = tuple(BACKGROUND_NAMES.index(n) for n in names if n is not None)
        if len(background) == 2 and background[0] == background[1]:
            background = background[:1]  # "green-to-green" says "green"
        return CaptionAttributes(shapes=_parse_shapes(m["shapes"], text), background=background)
    raise ValueError(f"data/captions.py: {text!r} matches none of the caption templates (see the grammar)")


# ----------------------------------------------------------------------------------------------------
# The captioned dataset
# ----------------------------------------------------------------------------------------------------

class CaptionedShapes(Dataset):
    """ProceduralShapes with captions: item i is (image (3, H, W) in [-1, 1], caption str, CaptionAttributes).

    paraphrase=False captions every image with the canonical variant 0. Batch with ``collate_captioned``.
    """

    def __init__(self, *, image_size: int = 32, size: int = 50_000, seed: int = 0, split: str = "train",
                 paraphrase: bool = True):
        self.shapes = ProceduralShapes(image_size=image_size, size=size, seed=seed, split=split)
        self.paraphrase = paraphrase

    def __len__(self) -> int:
        return len(self.shapes)

    def variant(self, index: int) -> int:
        s = self.shapes
        return caption_variant(seed=s.seed, split=s.split, index=index) if self.paraphrase else 0

    def caption_and_attributes(self, index: int) -> tuple[str, CaptionAttributes]:
        ca = caption_attributes(self.shapes.attributes(index))
        return caption(ca, self.variant(index)), ca

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, CaptionAttributes]:
        img, attrs = self.shapes.image_and_attributes(index)
        ca = caption_attributes(attrs)
        image = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W) in [-1, 1]
        return image, caption(ca, self.variant(index)), ca


def collate_captioned(items: list) -> tuple[torch.Tensor, list[str], list[CaptionAttributes]]:
    """DataLoader collate: (images (B, 3, H, W), captions, attributes)."""
    images, captions, attrs = zip(*items)
    return torch.stack(images), list(captions), list(attrs)
