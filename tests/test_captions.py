"""Captions of the shapes data (data/captions.py): grammar round trips, determinism, paraphrases, bad input."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from data.captions import (BACKGROUND_NAMES, COLOURS, NUM_VARIANTS, CaptionAttributes, CaptionedShapes,
                           background_ends, background_name, caption, caption_attributes, collate_captioned,
                           parse_caption)
from data.procedural import SHAPES, ImageAttributes, ProceduralShapes, ShapeAttributes


def _image(shapes, c0=(0.5, 0.2, 0.2), c1=(0.2, 0.2, 0.5), theta=0.0) -> ImageAttributes:
    return ImageAttributes(background=(c0, c1), theta=theta,
                           shapes=tuple(ShapeAttributes(kind=k, colour=c, r=0.2, cy=0.5, cx=0.5, angle=0.0)
                                        for k, c in shapes))


def test_every_paraphrase_of_many_images_parses_back_to_its_attributes():
    ds = CaptionedShapes(size=400, split="test")
    seen_counts, seen_bg = set(), set()
    for i in range(400):
        ca = caption_attributes(ds.shapes.attributes(i))
        texts = {caption(ca, v) for v in range(NUM_VARIANTS)}
        for text in texts:
            assert parse_caption(text) == ca, text
        # The templates really are different sentences (groups reversed only differ with 2+ groups).
        assert len(texts) >= NUM_VARIANTS // 2
        seen_counts.add(ca.count)
        seen_bg |= ca.background_set
    assert seen_counts == {1, 2, 3} and seen_bg == set(range(len(BACKGROUND_NAMES)))


def test_a_hand_made_caption():
    # Two red discs and a blue square; red at the left end (theta = 0: c0 left), blue at the right.
    attrs = _image([(0, 0), (1, 2), (0, 0)])
    ca = caption_attributes(attrs)
    assert ca == CaptionAttributes(shapes=((0, 0), (0, 0), (1, 2)), background=(0, 4))
    assert caption(ca, 0) == "two red discs and a blue square on a red-to-blue background"
    assert caption(ca, 4) == "a blue square and two red discs on a red-to-blue background"
    assert caption(ca, 2) == "two red discs and a blue square in front of a background fading from red to blue"
    assert caption(ca, 3) == ("a picture of two red discs and a blue square on a background fading "
                              "from red to blue")
    assert caption(ca, 1) == "a red-to-blue background with two red discs and a blue square"
    # theta = pi puts c0 at the right: the caption names the blue end first.
    assert caption_attributes(_image([(0, 0)], theta=np.pi)).background == (4, 0)
    # theta = pi / 2 + small: mostly vertical, c0 at the top.
    assert caption_attributes(_image([(0, 0)], theta=np.pi / 2 + 0.1)).background == (0, 4)
    assert caption(caption_attributes(_image([(2, 5)], c1=(0.5, 0.21, 0.2))), 2) == \
        "an orange triangle in front of a plain red background"


def test_background_names():
    assert BACKGROUND_NAMES[background_name((0.3, 0.31, 0.35))] == "grey"
    assert BACKGROUND_NAMES[background_name((0.5, 0.2, 0.2))] == "red"
    assert BACKGROUND_NAMES[background_name((0.5, 0.5, 0.2))] == "yellow"
    assert BACKGROUND_NAMES[background_name((0.2, 0.5, 0.2))] == "green"
    assert BACKGROUND_NAMES[background_name((0.2, 0.5, 0.5))] == "cyan"
    assert BACKGROUND_NAMES[background_name((0.2, 0.2, 0.5))] == "blue"
    assert BACKGROUND_NAMES[background_name((0.5, 0.2, 0.5))] == "purple"


def test_the_first_background_name_is_the_left_or_top_end_of_the_rendered_image():
    ds = ProceduralShapes(image_size=32, size=200)
    for i in range(200):
        img, attrs = ds.image_and_attributes(i)
        first, second = background_ends(attrs)
        c, s = np.cos(attrs.theta), np.sin(attrs.theta)
        # Corner pixels along the gradient axis: the first end's corner is nearer to its colour.
        near = img[16, 0] if abs(c) >= abs(s) else img[0, 16]
        far = img[16, 31] if abs(c) >= abs(s) else img[31, 16]
        if np.abs(np.subtract(first, second)).sum() < 0.15:
            continue  # nearly uniform backgrounds: the pixels cannot tell the ends apart
        first255, second255 = np.asarray(first) * 255, np.asarray(second) * 255
        # Shapes may cover the probe pixel; require only that most images agree (checked below).
        ok = np.abs(near - first255).sum() + np.abs(far - second255).sum() < \
            np.abs(near - second255).sum() + np.abs(far - first255).sum()
        assert ok or _covered(attrs, i), i


def _covered(attrs: ImageAttributes, i: int) -> bool:
    """Whether any shape comes near the mid-edge probe pixels (then the probe sees the shape, not the ramp)."""
    probes = [(0.5, 0.0), (0.5, 1.0), (0.0, 0.5), (1.0, 0.5)]
    return any((s.cy - py) ** 2 + (s.cx - px) ** 2 < (s.r + 0.1) ** 2 for s in attrs.shapes for py, px in probes)


def test_captions_are_deterministic_and_paraphrases_are_spread():
    a, b = CaptionedShapes(size=400), CaptionedShapes(size=400)
    captions_a = [a.caption_and_attributes(i)[0] for i in range(120)]
    assert captions_a == [b.caption_and_attributes(i)[0] for i in range(120)]
    # The variant is drawn without rendering: spread over all 8 paraphrases (about 400 / 8 = 50 each).
    variants = np.bincount([a.variant(i) for i in range(400)], minlength=NUM_VARIANTS)
    assert variants.min() > 25
    other_seed = CaptionedShapes(size=120, seed=1)
    assert captions_a != [other_seed.caption_and_attributes(i)[0] for i in range(120)]
    canonical = CaptionedShapes(size=120, paraphrase=False)
    assert all(canonical.variant(i) == 0 for i in range(120))


def test_dataset_items_and_collate():
    ds = CaptionedShapes(size=4, split="test")
    image, text, ca = ds[2]
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert torch.equal(image, ProceduralShapes(size=4, split="test")[2])
    assert parse_caption(text) == ca == caption_attributes(ds.shapes.attributes(2))
    images, texts, attrs = collate_captioned([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and len(texts) == len(attrs) == 4


def test_parser_tolerates_case_and_spaces_and_rejects_nonsense():
    assert parse_caption("  Two RED discs  and a blue square on a red-to-blue background ") == \
        CaptionAttributes(shapes=((0, 0), (0, 0), (1, 2)), background=(0, 4))
    # Every colour and kind word is in the grammar.
    for k, kind in enumerate(SHAPES):
        for c, colour in enumerate(COLOURS):
            article = "an" if colour[0] in "aeiou" else "a"
            assert parse_caption(f"{article} {colour} {kind} on a grey background").shapes == ((k, c),)
    for bad in ("a red disc", "a red hexagon on a grey background", "two red disc on a grey background",
                "a red discs on a grey background", "an red disc on a grey background",
                "a red disc on a pink background"):
        with pytest.raises(ValueError, match="data/captions.py"):
            parse_caption(bad)
    with pytest.raises(ValueError, match="variant"):
        caption(CaptionAttributes(shapes=((0, 0),), background=(0,)), NUM_VARIANTS)
    with pytest.raises(ValueError, match="1-3 shapes"):
        caption(CaptionAttributes(shapes=(), background=(0,)), 0)


def test_word_changed_changes_that_word_alone():
    from data.captions import WORDS, hard_negatives, parse_caption, word_changed
    ds = CaptionedShapes(size=200, split="test")
    rng = np.random.default_rng(0)
    seen_fewer = 0
    for i in range(200):
        _, ca = ds.caption_and_attributes(i)
        same = {"colour": lambda a: (sorted(k for k, _ in a.shapes), a.background),
                "kind": lambda a: (sorted(c for _, c in a.shapes), a.background),
                "count": lambda a: a.background,
                "background": lambda a: a.shapes}
        for word, neg in zip(WORDS, hard_negatives(ca, rng)):
            assert neg != ca and same[word](neg) == same[word](ca), (i, word, ca, neg)
            if word == "count":  # one shape more (a copy of the first) or, at three, one fewer (the first)
                more, fewer = Counter(neg.shapes) - Counter(ca.shapes), Counter(ca.shapes) - Counter(neg.shapes)
                assert abs(neg.count - ca.count) == 1 and (not more or not fewer)
            assert parse_caption(caption(neg, ds.variant(i))) == neg  # a caption of the grammar
            seen_fewer += word == "count" and neg.count < ca.count
        # The evaluation's fixed change: +1 colour / kind index, one more shape (none at three), +2 background.
        (kind, colour) = ca.shapes[0]
        assert ((kind, (colour + 1) % len(COLOURS)) in word_changed(ca, "colour").shapes)
        assert (((kind + 1) % len(SHAPES), colour) in word_changed(ca, "kind").shapes)
        assert word_changed(ca, "background").background[0] == (ca.background[0] + 2) % len(BACKGROUND_NAMES)
        assert (word_changed(ca, "count") is None) == (ca.count == 3)
    assert seen_fewer > 0  # three-shape images got a negative with one shape fewer
    with pytest.raises(ValueError, match="word must be one of"):
        word_changed(ca, "size")
