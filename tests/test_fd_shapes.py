"""FD-shapes and KID-shapes: the shapes' attributes, the shipped ShapesNet, and the distances' known answers."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.procedural import PALETTE, SHAPES, ProceduralShapes
from metrics.fd_shapes import FDShapesReference, fd_from_features, real_images, shapes_features
from metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from metrics.shapes_net import (SHAPES_NET_CHECKPOINT, TARGET_SLICES, ShapesNet, ShapesNetConfig,
                               attribute_targets, load_shapes_net)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "procedural" / "reference_images.npz"


# ----------------------------------------------------------------------------- the data's attributes

def test_images_are_bit_identical_to_those_before_the_attributes_were_exposed():
    ref = np.load(REFERENCE)
    for split in ("train", "test"):
        ds = ProceduralShapes(image_size=32, size=100_000, split=split)
        for i, expected in zip(ref[f"{split}_indices"], ref[f"{split}_images"]):
            np.testing.assert_array_equal(ds.image_uint8(int(i)), expected)
            np.testing.assert_array_equal(ds.image_and_attributes(int(i))[0], expected)
        h = hashlib.sha256()
        for i in range(256):
            h.update(ds.image_uint8(i).tobytes())
        assert h.hexdigest() == str(ref[f"{split}_sha256_first256"])
    ds = ProceduralShapes(image_size=16, size=10, seed=3)
    np.testing.assert_array_equal(np.stack([ds.image_uint8(i) for i in range(4)]), ref["seed3_size16_images"])


def test_attributes_describe_the_image():
    ds = ProceduralShapes(image_size=32, size=200, split="test")
    counts = set()
    for i in range(200):
        img, attrs = ds.image_and_attributes(i)
        assert attrs == ds.attributes(i)
        counts.add(attrs.num_shapes)
        for c in attrs.background:
            assert all(0.15 <= v <= 0.55 for v in c)
        top = attrs.shapes[-1]  # painted last, so nothing covers it
        if SHAPES[top.kind] != "ring":  # a ring's centre is its hole
            y, x = int(top.cy * 32), int(top.cx * 32)
            np.testing.assert_allclose(img[y, x], np.round(PALETTE[top.colour] * 255), atol=1)
    assert counts == {1, 2, 3}


def test_attribute_targets_layout():
    attrs = ProceduralShapes(image_size=32, size=1).attributes(0)
    y = attribute_targets(attrs)
    assert y[TARGET_SLICES["count"]].tolist() == [float(attrs.num_shapes == k) for k in (1, 2, 3)]
    assert y[TARGET_SLICES["pairs"]].sum() == len({(s.kind, s.colour) for s in attrs.shapes})
    np.testing.assert_allclose(y[TARGET_SLICES["background"]][:3] * 0.2 + 0.35, np.mean(attrs.background, axis=0), atol=1e-6)


# ----------------------------------------------------------------------------- the distances' known answers

def gaussian_features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d)


def test_fd_of_equal_feature_sets_is_zero():
    f = gaussian_features(500, 16, 0)
    assert fd_from_features(f, f.copy()) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_a_mean_shift_is_its_squared_norm():
    f = gaussian_features(500, 16, 1)
    delta = np.random.default_rng(2).normal(size=16)
    # Same covariance, means delta apart: the trace terms cancel and FD = ||delta||^2 exactly.
    assert fd_from_features(f, f + delta) == pytest.approx(float(delta @ delta), rel=1e-6)


def test_mmd2_unbiased_equals_its_definition():
    x, y = gaussian_features(7, 3, 3), gaussian_features(5, 3, 4)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (7 * 5)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert polynomial_kernel(x, y).shape == (7, 5)


def test_kid_of_identical_sets_is_about_zero_and_of_a_shifted_set_positive():
    f = gaussian_features(400, 8, 5)
    same, spread_same = kid(f, f, subset_size=400, num_subsets=3)
    # One set against itself: only the left-out diagonal differs, MMD_u^2 = (2/m)(mean_{i!=j} k - mean_i k_ii),
    # an O(1/m) negative number, not exactly 0.
    k = polynomial_kernel(f, f)
    m = len(f)
    assert same == pytest.approx(2 / m * ((k.sum() - np.trace(k)) / (m * (m - 1)) - np.trace(k) / m), rel=1e-9)
    assert spread_same == pytest.approx(0.0, abs=1e-9)  # every subset is the whole set
    subsets, _ = kid(f, f, subset_size=200, num_subsets=20)
    shifted, spread = kid(f, f + 0.5, subset_size=200, num_subsets=20)
    assert abs(same) < 0.05 * shifted and abs(subsets) < 0.05 * shifted
    assert shifted > 10 * spread > 0
    with pytest.raises(ValueError, match="feature dimensions differ"):
        kid(f, f[:, :4])


# ----------------------------------------------------------------------------- the shipped feature network

def test_shipped_shapes_net_loads_and_is_deterministic():
    a, b = load_shapes_net(), load_shapes_net(SHAPES_NET_CHECKPOINT)
    assert a.weights_sha256 == b.weights_sha256
    # The recorded validation was measured with exactly these weights.
    validation = json.loads((REPO / "benchmarks" / "results" / "fd_shapes_validation.json").read_text())
    assert validation["shapes_net_sha256"] == a.weights_sha256
    x = real_images(32, start=5000)
    fa, fb = shapes_features(x, a), shapes_features(x, b)
    assert fa.shape == (32, a.config.feature_dim)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_allclose(fa, shapes_features(x, a, batch_size=7), rtol=1e-5, atol=1e-6)  # eval BatchNorm: per image
    with pytest.raises(ValueError, match="ShapesNet takes"):
        a(torch.zeros(2, 3, 16, 16))


def test_shipped_shapes_net_recognises_the_attributes():
    net = load_shapes_net()
    ds = ProceduralShapes(image_size=32, size=60_000, split="test")
    idx = range(50_000, 50_128)  # the accuracy images of the training script: never trained on
    x = torch.from_numpy(np.stack([ds.image_uint8(i) for i in idx])).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.stack([attribute_targets(ds.attributes(i)) for i in idx]))
    with torch.no_grad():
        pred = net.heads(net(x))
    s = TARGET_SLICES
    count_acc = (pred[:, s["count"]].argmax(1) == y[:, s["count"]].argmax(1)).float().mean().item()
    colour_acc = ((pred[:, s["colours"]] > 0).float() == y[:, s["colours"]]).float().mean().item()
    colour_majority = max(y[:, s["colours"]].mean().item(), 1 - y[:, s["colours"]].mean().item())
    # Far better than chance (1/3 for the count; "no colour present" guessed everywhere for the flags, about
    # 0.77): checkpoints/shapes_net.json records 0.95 and 0.996 on 1024 of these images.
    assert count_acc > 0.85 and colour_acc > colour_majority + 0.15


@pytest.mark.slow
def test_reference_fd_floor_and_shifted_samples():
    net = load_shapes_net()
    ref = FDShapesReference.build(image_size=32, net=net, num_images=256)
    same = ref.measure(real_images(256))
    real = real_images(256, start=256)
    shifted = (real + torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1)).clamp(0, 1)
    a, b = ref.measure(real), ref.measure(shifted)
    assert same["fd_shapes"] == pytest.approx(0.0, abs=1e-6)
    # A set against itself: the U-statistic leaves the diagonal out of the within-set sums but not out of the
    # cross term, so MMD_u^2 = 2 / (N - 1) * (mean(K) - mean(diag K)) exactly, for any subset order.
    K = polynomial_kernel(ref.features, ref.features)
    assert same["kid_shapes"] == pytest.approx(2 / (256 - 1) * (K.mean() - np.diag(K).mean()), rel=1e-9)
    assert abs(same["kid_shapes"]) < b["kid_shapes"]
    assert b["fd_shapes"] > 2 * a["fd_shapes"] > 0 and b["kid_shapes"] > a["kid_shapes"]
    assert a["shapes_net_sha256"] == net.weights_sha256 and a["fd_shapes_num_samples"] == 256
    with pytest.raises(ValueError, match="trained on 32x32"):
        FDShapesReference.build(image_size=16, net=net, num_images=4)


def test_untrained_config_round_trip():
    cfg = ShapesNetConfig(widths=(8, 8, 8), feature_dim=8)
    assert ShapesNetConfig.from_dict(cfg.to_dict()) == cfg
    assert ShapesNet(cfg)(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="unknown ShapesNetConfig keys"):
        ShapesNetConfig.from_dict({"depth": 3})


@pytest.mark.slow
def test_evaluate_reports_fd_shapes_and_kid_for_a_shapes_model(tmp_path):
    import evaluate
    from metrics.evaluation import SamplerConfig
    from models.checkpoint import save_checkpoint
    from models.ddpm.config import ModelConfig
    from models.ddpm.unet import UNet

    torch.manual_seed(0)
    config = ModelConfig(image_size=32, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                         norm_groups=2)
    path = tmp_path / "m.pt"
    save_checkpoint(path, config=config, state_dict=UNet(config).state_dict())
    run = evaluate.main(evaluate.EvalConfig(models=(str(path),), num_samples=4, sampler=SamplerConfig(steps=2),
                                            batch_size=4, heldout_images=0, out=str(tmp_path / "eval")))
    row = json.loads((run / "report.json").read_text())["models"][0]
    assert row["fd_shapes"] > 0 and row["kid_shapes"] > 0 and row["fd_shapes_skipped"] is None  # noise vs shapes
    assert row["shapes_net_sha256"] == load_shapes_net().weights_sha256 and row["fd_shapes_num_samples"] == 4
