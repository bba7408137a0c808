"""Kind accuracy and FD-shapes of class-conditional samples (metrics/class_shapes.py): real single-kind images
of their own label score the ceiling, the same images under other labels score 0, the real side matches the
labels' class mix, bad labels fail in one line, and evaluate.py reports them only with --shapes-metrics on."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli import UserError
from data.captions import caption_attributes
from data.procedural import ProceduralShapes
from metrics.class_shapes import ClassShapesMetrics, matched_real_images
from metrics.t2i_evaluation import T2IEvalConfig, evaluate_pipeline
from tests.tiny_pipeline import write_tiny_pipeline

LABELS = [y for y in range(4) for _ in range(8)]


def test_the_real_side_is_single_kind_images_of_each_label_in_order():
    images, idx = matched_real_images([2, 0, 2])
    ds = ProceduralShapes(image_size=32, size=max(idx) + 1, split="test")
    assert [caption_attributes(ds.attributes(i)).kinds for i in idx] == [frozenset({2}), frozenset({0}),
                                                                         frozenset({2})]
    assert idx[0] < idx[2]  # the next unused image of that kind
    assert torch.equal(images[1], torch.from_numpy(ds.image_uint8(idx[1])).permute(2, 0, 1).float() / 255)


def test_real_images_score_the_ceiling_under_their_labels_and_zero_under_others():
    real, _ = matched_real_images(LABELS)
    own = ClassShapesMetrics.build(LABELS).measure(real)
    assert own["kind_accuracy"]["all"] >= 0.9 and own["kind_accuracy"]["n"] == 32
    assert own["fd_shapes"] == pytest.approx(0.0, abs=1e-3)  # the samples are the reference itself (sqrtm error)
    other = ClassShapesMetrics.build([(y + 1) % 4 for y in LABELS]).measure(real)
    assert other["kind_accuracy"]["all"] == 0.0  # a single-kind image never holds exactly another kind
    assert set(other["kind_accuracy"]["per_class"]) == {"disc", "square", "triangle", "ring"}
    # the FD side sees the samples: uniform noise under the same labels is far from the matched real images
    noise = ClassShapesMetrics.build(LABELS).measure(torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert noise["fd_shapes"] > 100 and noise["kind_accuracy"]["all"] < 0.5


def test_a_label_that_is_not_a_shape_kind_is_one_line():
    with pytest.raises(UserError, match=r"class label 7 \(sample 2\) is not a shape kind \(0..3"):
        ClassShapesMetrics.build([0, 1, 7])


def test_evaluate_reports_kind_accuracy_with_shapes_metrics_on_only(tmp_path):
    folder = write_tiny_pipeline(tmp_path / "cin", text=False, class_embedder=True, sample_size=16)
    base = dict(model=str(folder), class_labels=(0, 3), num_images_per_prompt=2, steps=2, guidance=1.0,
                out=str(tmp_path / "eval"))
    run = evaluate_pipeline(T2IEvalConfig(**base, shapes_metrics="on"))
    report = json.loads((run / "report.json").read_text())
    saved = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
                         for f in sorted((run / "images").glob("*.png"))])
    again = ClassShapesMetrics.build([0, 0, 3, 3]).measure(saved)  # the report's score is that of the saved images
    assert report["kind_accuracy"] == again["kind_accuracy"] and report["kind_accuracy"]["n"] == 4
    assert report["fd_shapes_num_samples"] == 4 and "clip_score" not in report
    auto = json.loads((evaluate_pipeline(T2IEvalConfig(**base)) / "report.json").read_text())
    assert "kind_accuracy" not in auto and "shapes-metrics on" in auto["shapes_metrics_skipped"]
