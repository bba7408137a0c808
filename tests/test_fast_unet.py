"""The fast U-Net paths: fused attention against the explicit softmax formula, in-place ops against their
out-of-place definition (values and gradients), and the opt-in runtime options of models/runtime.py
(channels-last, torch.compile, bf16 autocast) against the default eager float32 forward.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from diffusion.samplers import sample
from diffusion.schedule import Schedule
from models.ddpm.blocks import AttnBlock, ResBlock
from models.ddpm.config import ModelConfig
from models.runtime import Runner, RuntimeOptions
from models.ddpm.unet import UNet

SMALL = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                    norm_groups=2, num_heads=2)


def explicit_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """Vaswani et al. eq. 1 written out: w = softmax(q^T k * scale) per head, out = v w^T, plus the residual."""
    B, _, H, W = x.shape
    h = block.norm(x)
    q, k, v = (m(h).reshape(B, block.num_heads, -1, H * W) for m in (block.q, block.k, block.v))  # (B, nh, d, N)
    w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) * block.scale, dim=-1)  # (B, nh, N, N)
    out = torch.einsum("bhdj,bhij->bhdi", v, w).reshape(B, -1, H, W)
    return x + block.proj_out(out)


@pytest.mark.parametrize("heads, qk, v, scale", [(1, 24, 24, 24 ** -0.5), (3, 21, 15, 7 ** -0.5),
                                                  (3, 21, 15, 16 ** -0.5), (2, 6, 10, 0.9)])
def test_fused_attention_equals_the_explicit_formula(heads, qk, v, scale):
    """Pruned, odd head widths and a temperature that is NOT 1/sqrt(head width) ("dense" scale after pruning):
    SDPA's default scale would differ, the explicit one must not."""
    torch.manual_seed(heads * 100 + qk)
    block = AttnBlock(ch=24, qk_ch=qk, v_ch=v, num_heads=heads, scale=scale, norm_groups=4, norm_eps=1e-6).eval()
    x = torch.randn(2, 24, 6, 5)
    torch.testing.assert_close(block(x), explicit_attention(block, x), rtol=1e-5, atol=1e-5)


def explicit_resblock(block: ResBlock, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.temb_proj(F.silu(temb))[:, :, None, None]
    h = block.conv2(F.silu(block.norm2(h)))
    return (x if block.nin_shortcut is None else block.nin_shortcut(x)) + h


@pytest.mark.parametrize("shortcut", [False, True])
def test_in_place_resblock_keeps_values_gradients_and_its_input(shortcut):
    torch.manual_seed(1)
    block = ResBlock(in_ch=8, mid_ch=12, out_ch=8 if not shortcut else 6, temb_ch=5, dropout=0.0, norm_groups=2,
                     norm_eps=1e-6, shortcut=shortcut)
    x, temb = torch.randn(3, 8, 5, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    x_before = x.detach().clone()
    out = block(x, temb)
    assert torch.equal(x.detach(), x_before)  # hooks and skip lists may hold the input: never overwritten
    ref = explicit_resblock(block, x, temb)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, temb, *block.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [x, temb, *block.parameters()], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def small_model(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(SMALL).eval()


def test_channels_last_matches_and_prunes_to_the_same_network():
    """channels_last changes memory order only: same eps, and the tracer groups and prunes it the same."""
    import pruning

    model = small_model()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    with torch.inference_mode():
        ref = model(x, t)
    fast = Runner(copy.deepcopy(model), RuntimeOptions(channels_last=True))
    assert fast.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = fast(x, t)
    assert out.is_contiguous() and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    example = model.example_inputs()
    dense, _ = pruning.prune(model, example, method="magnitude", ratio=0.4, progress=False)
    cl, _ = pruning.prune(fast.model, example, method="magnitude", ratio=0.4, progress=False)
    assert cl.widths() == dense.widths() != small_model().widths()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, t), dense(x, t), rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_a_runner():
    model = small_model()
    fast = Runner(copy.deepcopy(model), RuntimeOptions(channels_last=True)).train()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    model.train()(x, t).square().mean().backward()
    fast(x, t).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), fast.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_is_close_and_returns_float32():
    model = small_model()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    with torch.inference_mode():
        ref = model(x, t)
        out = Runner(model, RuntimeOptions(bf16=True))(x, t)
    assert out.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: a few parts in 1e3 per op, well under 10% of the output's scale here.
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert not torch.equal(out, ref)  # autocast really ran in bf16


def test_sampling_with_a_runner_gives_the_same_images():
    """sample() runs under inference_mode and accepts a Runner; the images match the plain model's and are
    ordinary tensors (usable in place and in autograd afterwards)."""
    model = small_model()
    kw = dict(indices=[0, 3], seed=4, image_shape=(3, 16, 16), steps=4)
    ref = sample(model, Schedule(), **kw)
    out = sample(Runner(copy.deepcopy(model), RuntimeOptions(channels_last=True)), Schedule(), **kw)
    assert not ref.is_inference()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_forward_matches_eager(monkeypatch):
    """torch.compile on CPU: the inference forward through TorchInductor (C++ codegen) matches eager; the
    training forward and backward through the same Runner match eager too. The training graph is compiled with
    the aot_eager backend: it exercises what is ours (the Runner's compiled path in train mode, gradients landing
    on the plain module's parameters) without a second Inductor build, which costs a minute on a cold cache."""
    model = small_model()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    with torch.inference_mode():
        ref = model(x, t)
    fast = Runner(copy.deepcopy(model), RuntimeOptions(compile=True))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, t), ref, rtol=1e-4, atol=1e-4)

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, backend="aot_eager", **kw))
    fast = Runner(copy.deepcopy(model), RuntimeOptions(compile=True))
    fast.train()
    model.train()(x, t).square().mean().backward()
    fast(x, t).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), fast.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert list(fast.model.state_dict()) == list(model.state_dict())  # the plain module: no "_orig_mod." keys


def test_train_with_channels_last_matches_the_default_run(tmp_path):
    """train.py --channels-last: the same training run (data, noise) up to float reordering, and its checkpoints
    load into a plain contiguous U-Net. Dropout is off: its masks are drawn in memory order, so with dropout a
    channels-last run draws different (equally distributed) masks."""
    import train
    from models.checkpoint import read_checkpoint, save_checkpoint

    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    save_checkpoint(init, config=SMALL, state_dict=UNet(SMALL).state_dict())
    kw = dict(model=str(init), data="shapes", steps=3, batch_size=4, lr=1e-3, ckpt_every=3, log_every=1,
              heldout_images=0, ema_decay=0.9, dropout=0.0)
    plain = train.main(train.TrainConfig(**kw, out=str(tmp_path / "a")))
    fast = train.main(train.TrainConfig(**kw, out=str(tmp_path / "b"), channels_last=True))
    a = read_checkpoint(plain / "checkpoints" / "latest.pt")["state_dict"]
    b = read_checkpoint(fast / "checkpoints" / "latest.pt")["state_dict"]
    # Adam's first steps move each weight by about lr * sign(g): where a gradient is float noise (~0), the
    # reordered sums may flip its sign. So: every weight within 3 steps x 2 lr, and almost all equal.
    diffs = torch.cat([(b[k] - a[k]).abs().flatten() for k in a])
    assert diffs.max() <= 3 * 2 * 1e-3
    assert (diffs > 1e-5).float().mean() < 0.01
    UNet(SMALL).load_state_dict(b)
