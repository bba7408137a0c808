"""The Diff-Pruning gradient pass with several timesteps per forward/backward (pruning/importance.py,
``_accumulate_chunks``): the same kept timesteps, losses, stopping t and gradient as one timestep at a time."""
from __future__ import annotations

import pytest
import torch

from diffusion.schedule import DiffusionConfig, Schedule
from pruning.importance import accumulate_gradients
from tests.test_importance import R2, ControlledLoss, TinyEps


@pytest.mark.parametrize("k", [2, 3, 8, 20])
@pytest.mark.parametrize("thr, kept", [(0.2, [0, 1, 2, 3]), (0.5, [0, 1]), (0.0, list(range(8))), (0.04, list(range(6)))])
def test_chunked_pass_keeps_the_prefix_and_the_closed_form_gradient(thr, kept, k):
    """k timesteps per pass (k * B = micro_batch samples), including passes that straddle the stopping t and
    a k larger than T: the rejected t is computed in its pass but never differentiated."""
    schedule = Schedule(DiffusionConfig(num_timesteps=8))
    model = ControlledLoss(schedule, R2)
    model.w.grad = torch.tensor(100.0, dtype=torch.float64)  # stale: must be cleared
    B, D = 5, 6
    report = accumulate_gradients(model, schedule, torch.zeros(B, 1, 2, 3, dtype=torch.float64), thr=thr,
                                  micro_batch=k * B, generator=torch.Generator().manual_seed(0))
    assert report.kept == kept
    computed = len(kept) + (0 if len(kept) == 8 else 1)
    torch.testing.assert_close(torch.tensor(report.losses, dtype=torch.float64),
                               torch.tensor([D * r for r in R2[:computed]], dtype=torch.float64))
    assert report.stopped_at == (None if len(kept) == 8 else len(kept))
    assert model.w.grad.item() == pytest.approx(sum(2 * D * R2[t] for t in kept), rel=1e-9)
    assert not any(model.modes) and model.training


@pytest.mark.parametrize("micro_batch", [12, 18, 24, 60])  # 2, 3 (does not divide 10), 4 and all 10 timesteps
def test_chunked_pass_equals_the_one_timestep_loop(micro_batch):
    torch.manual_seed(0)
    schedule = Schedule(DiffusionConfig(num_timesteps=10, beta_start=0.05, beta_end=0.5))
    model = TinyEps()
    x0, eps = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    ref_report = accumulate_gradients(model, schedule, x0, thr=0.3, micro_batch=6, eps=eps)  # one t per pass
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    report = accumulate_gradients(model, schedule, x0, thr=0.3, micro_batch=micro_batch, eps=eps)
    assert 0 < len(ref_report.kept) < 10  # the threshold bites
    assert report.kept == ref_report.kept and report.stopped_at == ref_report.stopped_at
    torch.testing.assert_close(torch.tensor(report.losses), torch.tensor(ref_report.losses), rtol=1e-5, atol=0)
    for name, p in model.named_parameters():
        rel = (p.grad - ref[name]).norm() / ref[name].norm()
        assert rel < 1e-5, (name, rel.item())


class _InfGrad(torch.autograd.Function):
    """Identity forward; the backward turns the gradient of the marked samples into inf."""

    @staticmethod
    def forward(ctx, x, bad):
        ctx.save_for_backward(bad)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        (bad,) = ctx.saved_tensors
        return torch.where(bad[:, None, None, None], torch.full_like(g, float("inf")), g), None


class InfGradAt(ControlledLoss):
    """ControlledLoss whose loss stays finite but whose gradient is inf at timestep ``t_bad``."""

    def __init__(self, schedule, r2, t_bad):
        super().__init__(schedule, r2)
        self.t_bad = t_bad

    def forward(self, x_t, t):
        return _InfGrad.apply(super().forward(x_t, t), t.long() == self.t_bad)


@pytest.mark.parametrize("micro_batch", [2, 8])  # one t per pass, and 4 timesteps per pass
def test_non_finite_gradient_names_the_timestep_in_either_path(micro_batch):
    schedule = Schedule(DiffusionConfig(num_timesteps=8))
    model = InfGradAt(schedule, R2, t_bad=5)
    with pytest.raises(FloatingPointError, match=r"gradient of w became non-finite at timestep t=5"):
        accumulate_gradients(model, schedule, torch.zeros(2, 1, 2, 2, dtype=torch.float64), thr=0.0,
                             micro_batch=micro_batch)


@pytest.mark.slow
def test_the_shipped_teacher_prunes_to_the_same_channels_with_batched_timesteps():
    """prune.py's embedded default (Diff-Pruning of checkpoints/tiny_shapes.pt), capped at 8 timesteps: one
    timestep per pass (micro_batch 8 = the batch) and all 8 in one pass (micro_batch 64) keep the same channels
    in every layer and give the same pruned network."""
    import copy

    import models
    import pruning
    from common.defaults import TEACHER_CHECKPOINT

    teacher = models.load(str(TEACHER_CHECKPOINT)).eval()
    x0 = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    example = teacher.example_inputs()
    runs = [pruning.prune(copy.deepcopy(teacher), example, method="diff-pruning", ratio=0.3, data=x0, thr=0.05,
                          micro_batch=mb, max_timesteps=8, progress=False) for mb in (8, 64)]
    (one, r1), (batched, r8) = runs
    assert r1.timesteps.kept == r8.timesteps.kept == list(range(8))
    for layer, roles in r1.kept.items():
        for role, kept in roles.items():
            assert (kept == r8.kept[layer][role]).all(), (layer, role)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 600.0])
    with torch.no_grad():
        torch.testing.assert_close(batched(x, t), one(x, t), rtol=0, atol=1e-6)


def test_channels_last_pass_gives_the_same_gradient_and_restores_the_memory_order():
    """The gradient pass runs with the weights in channels-last order by default (the fast order on CPU): the
    same losses and G as the contiguous order up to float summation, and afterwards every weight and gradient
    is back in the caller's order; an error inside the pass restores it too."""
    import models
    from common.defaults import TEACHER_CHECKPOINT

    teacher = models.load(str(TEACHER_CHECKPOINT))
    schedule = Schedule(DiffusionConfig(loss_reduction="sum"))
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = {}
    for cl in (False, True):
        report = accumulate_gradients(teacher, schedule, x0, thr=0.0, micro_batch=8, max_timesteps=2,
                                      generator=torch.Generator().manual_seed(1), channels_last=cl)
        grads = {n: p.grad.clone() for n, p in teacher.named_parameters()}
        results[cl] = (report.losses, grads)
        for n, p in teacher.named_parameters():
            assert p.is_contiguous() and p.grad.is_contiguous(), n
    (l0, g0), (l1, g1) = results[False], results[True]
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l0), rtol=1e-5, atol=0)
    assert g0.keys() == g1.keys()
    # absolute tolerance on the scale of the whole gradient: some entries are zero in exact arithmetic (k's bias:
    # the softmax ignores a shift shared by all keys) and are float noise in either order
    scale = max(g.abs().max().item() for g in g0.values())
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-6 * scale, msg=n)
    conv = teacher.conv_in.weight
    assert conv.dim() == 4 and not conv.is_contiguous(memory_format=torch.channels_last)

    class Boom(RuntimeError):
        pass

    def explode(module, args):
        assert module.weight.is_contiguous(memory_format=torch.channels_last)  # the pass really ran channels-last
        raise Boom

    hook = teacher.conv_out.register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            accumulate_gradients(teacher, schedule, x0, thr=0.0, micro_batch=8, max_timesteps=1,
                                 generator=torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    assert all(p.is_contiguous() for p in teacher.parameters())
