"""Distillation losses (diffusion/distill.py): the normalised feature KD by hand, its scale invariance, stage taps
on pruned students, and the teacher check."""
from __future__ import annotations

import copy

import pytest
import torch

from diffusion.ddpm import eps_loss
from diffusion.distill import Distiller, feature_kd_terms, stage_taps
from diffusion.schedule import DiffusionConfig, Schedule
from models.config import ModelConfig
from models.unet import UNet
from pruning.layers import remove_units

CONFIG = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                     norm_groups=2)


def model(config: ModelConfig = CONFIG, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(config)


def test_normalized_feature_loss_by_hand_and_its_scale_invariance():
    f_t = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[0.5, -0.5]])}
    f_s = {"a": torch.tensor([[1.0, 1.0], [3.0, 6.0]]), "b": torch.tensor([[0.0, -0.5]])}
    norm = feature_kd_terms(f_s, f_t, normalized=True)
    # a: ||s - t||^2 = 0 + 1 + 0 + 4 = 5, ||t||^2 = 1 + 4 + 9 + 16 = 30;  b: 0.25 / 0.5
    assert norm["a"].item() == pytest.approx(5 / 30)
    assert norm["b"].item() == pytest.approx(0.25 / 0.5)
    plain = feature_kd_terms(f_s, f_t, normalized=False)
    assert plain["a"].item() == pytest.approx(5 / 4) and plain["b"].item() == pytest.approx(0.25 / 2)
    # Scaling one teacher/student pair by 1000: its normalised term stays, its plain MSE grows by 10^6.
    big_t, big_s = dict(f_t, a=f_t["a"] * 1000), dict(f_s, a=f_s["a"] * 1000)
    assert feature_kd_terms(big_s, big_t, normalized=True)["a"].item() == pytest.approx(norm["a"].item(), rel=1e-6)
    assert feature_kd_terms(big_s, big_t, normalized=False)["a"].item() == pytest.approx(plain["a"].item() * 1e6, rel=1e-6)
    # The teacher side carries no gradient.
    s = f_s["a"].clone().requires_grad_()
    t = f_t["a"].clone().requires_grad_()
    feature_kd_terms({"a": s}, {"a": t}, normalized=True)["a"].backward()
    assert t.grad is None and s.grad is not None


def test_stage_taps():
    assert stage_taps(CONFIG) == {"down.0": "down.0.downsample", "down.1": "down.1.attn.0", "mid": "mid.block_2",
                                  "up.1": "up.1.upsample", "up.0": "up.0.block.1"}


def test_identical_student_has_zero_kd_and_task_equals_eps_loss():
    teacher = model().eval()
    student = copy.deepcopy(teacher)
    schedule = Schedule(DiffusionConfig(loss_reduction="sum"))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([5, 500, 999])
    for mode in ("output", "feature", "feature-normalized"):
        d = Distiller(student, teacher, mode=mode)
        assert len(d.proj) == 0
        total, logs = d(student, student, schedule, x0, t, eps)
        assert logs["kd_out"] == 0.0 and logs.get("kd_feat", 0.0) == 0.0
        task = eps_loss(student, schedule, x0, t, eps).item()
        assert logs["loss_task"] == pytest.approx(task, rel=1e-6)
        assert total.item() == pytest.approx(d.lambdas["task"] * task, rel=1e-6)
    assert Distiller(student, teacher, mode="output").lambdas == {"task": 0.3, "out": 0.7, "feat": 0.0}


def test_pruned_student_gets_taps_and_projections():
    """A layer- and channel-pruned student still has every tap; width changes get a trained 1x1 projection."""
    teacher = model().eval()
    widths = {"conv_in": 6, "down.0.block.0.conv2": 6, "down.0.block.0.conv1": 6, "down.0.downsample.conv": 6,
              "up.0.block.0.conv2": 6, "up.0.block.1.conv2": 6, "up.0.block.0.conv1": 6, "up.0.block.1.conv1": 6}
    student = remove_units(model(CONFIG.with_widths(widths), seed=1), ["mid.attn_1", "up.1.block.0"]).train()
    d = Distiller(student, teacher, mode="feature-normalized")
    assert sorted(d.proj) == ["down_0", "up_0"]
    assert d.proj["down_0"].in_channels == 6 and d.proj["down_0"].out_channels == 8
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randn(2, 3, 16, 16, generator=g)
    total, logs = d(student, student, Schedule(), x0, torch.tensor([10, 900]), eps)
    assert set(logs) >= {"loss_task", "kd_out", "kd_feat", "kd_feat/down.0", "kd_feat/mid", "kd_feat/up.0"}
    total.backward()
    assert d.proj["up_0"].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())  # no_grad: nothing flows into the teacher


def test_teacher_of_another_architecture_is_an_error():
    other = model(ModelConfig(image_size=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                              norm_groups=2))
    with pytest.raises(ValueError, match="another architecture.*ch_mult"):
        Distiller(model(), other, mode="feature", teacher_source="other.pt")
    with pytest.raises(ValueError, match="distillation mode"):
        Distiller(model(), model(), mode="none")
