"""Distillation losses (training/distill.py): the normalised feature KD by hand, its scale invariance, stage taps
on pruned students, and the teacher check."""
from __future__ import annotations

import copy

import pytest
import torch

from diffusion.ddpm import eps_loss
from training.distill import Distiller, feature_kd_terms, stage_taps
from diffusion.schedule import DiffusionConfig, Schedule
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
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


def _checkpoint(path, config: ModelConfig, seed: int, removed=()):
    from models.checkpoint import save_checkpoint

    m = model(config, seed)
    if removed:
        m = remove_units(m, removed)
    save_checkpoint(path, config=m.config, state_dict=m.state_dict())
    return path


@pytest.mark.slow
def test_train_with_distillation_resumes_exactly(tmp_path):
    """Feature-normalised KD of a channel- and layer-pruned student (so 1x1 projections are trained): an
    interrupted + resumed run ends bit-identical to an uninterrupted one; every term reaches TensorBoard."""
    import train
    from models.checkpoint import read_checkpoint

    teacher = _checkpoint(tmp_path / "teacher.pt", CONFIG, 0)
    widths = {"conv_in": 6, "down.0.block.0.conv2": 6, "down.0.block.0.conv1": 6, "down.0.downsample.conv": 6,
              "up.0.block.0.conv2": 6, "up.0.block.1.conv2": 6, "up.0.block.0.conv1": 6, "up.0.block.1.conv1": 6}
    student = _checkpoint(tmp_path / "student.pt", CONFIG.with_widths(widths), 1, removed=["mid.attn_1"])
    cfg = lambda steps: train.TrainConfig(model=str(student), steps=steps, batch_size=4, lr=1e-3, ckpt_every=2,  # noqa: E731
                                          log_every=1, heldout_images=0, ema_decay=0.9, out=str(tmp_path / "runs"),
                                          distill="feature-normalized", teacher=str(teacher))
    full = train.main(cfg(4))
    half = train.main(cfg(2))
    train.main(cfg(4), resume=str(half))
    a, b = read_checkpoint(full / "checkpoints" / "latest.pt"), read_checkpoint(half / "checkpoints" / "latest.pt")
    for key in ("state_dict", "ema_state_dict"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key} {name}")
    proj_a, proj_b = a["train_state"]["distill"]["projections"], b["train_state"]["distill"]["projections"]
    assert sorted(proj_a) == ["proj.down_0.bias", "proj.down_0.weight", "proj.up_0.bias", "proj.up_0.weight"]
    for name in proj_a:
        torch.testing.assert_close(proj_a[name], proj_b[name], rtol=0, atol=0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(full / "tb")).Reload().Tags()["scalars"]
    assert {"train/loss_task", "train/kd_out", "train/kd_feat", "train/kd_feat/down.0", "train/kd_feat/up.0"} <= set(tags)


def test_train_refuses_a_teacher_of_another_architecture_before_any_work(tmp_path):
    import train

    other = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), norm_groups=2)
    teacher = _checkpoint(tmp_path / "teacher.pt", other, 0)
    student = _checkpoint(tmp_path / "student.pt", CONFIG, 1)
    with pytest.raises(ValueError, match="another architecture"):
        train.main(train.TrainConfig(model=str(student), steps=2, batch_size=2, heldout_images=0,
                                     out=str(tmp_path / "runs"), distill="feature", teacher=str(teacher)))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(ValueError, match="needs --teacher"):
        train.main(train.TrainConfig(model=str(student), steps=2, distill="output", out=str(tmp_path / "runs")))
    with pytest.raises(ValueError, match="only used with --distill"):
        train.main(train.TrainConfig(model=str(student), steps=2, teacher=str(teacher), out=str(tmp_path / "runs")))
