"""Attribute accuracy (metrics/attributes.py): known answers with a hand-set reader, and with the shipped one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.captions import CaptionAttributes, CaptionedShapes, caption, caption_attributes, parse_caption
from data.procedural import ProceduralShapes
from metrics.attributes import ATTRIBUTE_READER_CHECKPOINT, attribute_accuracy, load_attribute_reader, read_attributes
from metrics.shapes_net import (NUM_BACKGROUND_NAMES, NUM_TARGETS, TARGET_SLICES, ShapesNet, ShapesNetConfig,
                               attribute_targets)

RED_DISCS = CaptionAttributes(shapes=((0, 0), (0, 0), (1, 2)), background=(0, 4))  # two red discs, a blue square


def _reader_that_always_reads(ca: CaptionAttributes) -> ShapesNet:
    """A ShapesNet whose head ignores the image and outputs the logits of ``ca`` (weights 0, bias = +-5)."""
    net = ShapesNet(ShapesNetConfig(background_names=NUM_BACKGROUND_NAMES)).eval()
    bias = torch.full((NUM_TARGETS + NUM_BACKGROUND_NAMES,), -5.0)
    s = TARGET_SLICES
    bias[s["count"].start + ca.count - 1] = 5.0
    for k, c in ca.shapes:
        bias[s["kinds"].start + k] = bias[s["colours"].start + c] = 5.0
        bias[s["pairs"].start + k * 8 + c] = 5.0
    for b in ca.background:
        bias[s["background_names"].start + b] = 5.0
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(bias)
    return net


def test_known_answers_with_a_hand_set_reader():
    net = _reader_that_always_reads(RED_DISCS)
    images = torch.rand(4, 3, 32, 32)
    reading = read_attributes(net, images)[0]
    assert reading.count == 3 and reading.kinds == {0, 1} and reading.colours == {0, 2}
    assert reading.pairs == {(0, 0), (1, 2)} and reading.background == {0, 4}
    right = "two red discs and a blue square on a red-to-blue background"
    assert parse_caption(right) == RED_DISCS
    assert attribute_accuracy(net, images, [right] * 4) == {"count": 1.0, "kinds": 1.0, "colours": 1.0,
                                                            "background": 1.0, "pairs": 1.0, "all": 1.0, "n": 4}
    # One colour word swapped in one caption of four: colours (and the kind-colour binding) lose exactly 1/4.
    swapped = "two red discs and a green square on a red-to-blue background"
    acc = attribute_accuracy(net, images, [right, right, right, swapped])
    assert acc == {"count": 1.0, "kinds": 1.0, "colours": 0.75, "background": 1.0, "pairs": 0.75, "all": 0.75, "n": 4}
    # A background word swapped: only the background ("all" is count, kinds and colours).
    acc = attribute_accuracy(net, images[:2], ["two red discs and a blue square on a red-to-grey background", right])
    assert acc == {"count": 1.0, "kinds": 1.0, "colours": 1.0, "background": 0.5, "pairs": 1.0, "all": 1.0, "n": 2}
    # A kind swapped where the colours stay right: kinds and pairs.
    acc = attribute_accuracy(net, images[:1], ["two red rings and a blue square on a red-to-blue background"])
    assert acc["kinds"] == 0.0 and acc["colours"] == acc["count"] == acc["background"] == 1.0 and acc["all"] == 0.0
    # Fewer shapes: count (and kinds, here).
    acc = attribute_accuracy(net, images[:1], [CaptionAttributes(shapes=((0, 0), (1, 2)), background=(0, 4))])
    assert acc["count"] == 0.0 and acc["colours"] == 1.0 and acc["all"] == 0.0


def test_bad_input_is_refused_before_reading():
    net = _reader_that_always_reads(RED_DISCS)
    with pytest.raises(ValueError, match="caption 1 is not in the shapes grammar"):
        attribute_accuracy(net, torch.rand(2, 3, 32, 32), ["a red disc on a grey background", "a cat"])
    with pytest.raises(ValueError, match="N >= 1 captions"):
        attribute_accuracy(net, torch.rand(2, 3, 32, 32), ["a red disc on a grey background"])
    with pytest.raises(ValueError, match="background-name head"):
        read_attributes(ShapesNet(ShapesNetConfig()), torch.rand(1, 3, 32, 32))


def test_background_name_targets():
    attrs = ProceduralShapes(size=5, split="test").attributes(3)
    y = attribute_targets(attrs, background_names=True)
    assert y.shape == (NUM_TARGETS + NUM_BACKGROUND_NAMES,)
    np.testing.assert_array_equal(y[:NUM_TARGETS], attribute_targets(attrs))
    names = np.flatnonzero(y[TARGET_SLICES["background_names"]])
    assert set(names) == caption_attributes(attrs).background_set


def _shipped_reader():
    if not ATTRIBUTE_READER_CHECKPOINT.is_file():
        pytest.skip("checkpoints/shapes_net_t2i.pt not trained yet")
    return load_attribute_reader()


def test_shipped_reader_real_image_with_its_own_caption_scores_the_maximum():
    net = _shipped_reader()
    ds = CaptionedShapes(size=60, split="test")
    # An easy case: one large shape on a background with two distinct, clearly coloured ends.
    index = next(i for i in range(60) if _easy(ds.shapes.attributes(i)))
    image, text, ca = ds[index]
    images01 = (image[None] + 1) / 2
    assert attribute_accuracy(net, images01, [text]) == {"count": 1.0, "kinds": 1.0, "colours": 1.0,
                                                         "background": 1.0, "pairs": 1.0, "all": 1.0, "n": 1}
    # The same image with one colour word of its caption swapped loses exactly that attribute.
    (kind, colour), = ca.shapes
    other = CaptionAttributes(shapes=((kind, (colour + 1) % 8),), background=ca.background)
    acc = attribute_accuracy(net, images01, [caption(other, 0)])
    assert acc == {"count": 1.0, "kinds": 1.0, "colours": 0.0, "background": 1.0, "pairs": 0.0, "all": 0.0, "n": 1}


def _easy(attrs) -> bool:
    from data.captions import background_name

    c0, c1 = attrs.background
    return (attrs.num_shapes == 1 and attrs.shapes[0].r > 0.22 and background_name(c0) != background_name(c1)
            and all(max(c) - min(c) > 0.2 for c in (c0, c1)))


def test_shipped_reader_ceiling_and_floor_on_real_images():
    net = _shipped_reader()
    ds = CaptionedShapes(size=128, split="test")
    items = [ds[i] for i in range(128)]
    images01 = (torch.stack([x for x, _, _ in items]) + 1) / 2
    texts = [t for _, t, _ in items]
    own = attribute_accuracy(net, images01, texts)
    shuffled = attribute_accuracy(net, images01, texts[1:] + texts[:1])  # every image with another's caption
    assert own["all"] > 0.6 and own["count"] > 0.85 and own["colours"] > 0.85
    assert shuffled["all"] < 0.05 and shuffled["all"] < own["all"] / 10
