"""Distillation of conditional latent U-Nets (training/distill_latent.py): every term against a hand computation,
the taps of BK-SDM-like students (no mid block, no innermost stage), the teacher kept out of training, the
memory options (bf16 autocast, activation checkpointing) and data parallelism (DDP, FSDP2) on two CPU processes."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from common.distributed import Distributed, data_parallel
from golden_recipe import load_entry
from models.sd import UNet2DConditionModel, UNetConditionConfig
from training.distill_latent import (LatentDistiller, block_units, build_latent_distiller, disable_checkpointing,
                                     enable_checkpointing, latent_taps)


def config(**changes) -> UNetConditionConfig:
    """A two-stage SD-1-style U-Net (32, 64 channels; 8x8 latents; 24-d text), as tests/test_sd_unet.py builds."""
    return UNetConditionConfig.from_diffusers({**load_entry("sd1")["config"], **changes})


def unet(cfg: UNetConditionConfig, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(cfg)


def batch(B: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x_t, eps = torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    return x_t, t, {"encoder_hidden_states": torch.randn(B, 5, 24, generator=g)}, eps


# BK-SDM-like students of the two-stage teacher
SMALL = dict(layers_per_block=1, mid_block_type=None)                      # fewer blocks, no mid block
TINY = dict(block_out_channels=[32], down_block_types=["CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D"], mid_block_type=None)    # + no innermost stage


def hand_features(model, paths, x_t, t, cond):
    feats, hooks = {}, [model.get_submodule(p).register_forward_hook(
        lambda m, a, out, p=p: feats.__setitem__(p, out)) for p in paths]
    out = model(x_t, t, **cond)
    for h in hooks:
        h.remove()
    return out, feats


@pytest.mark.parametrize("mode", ["output", "feature", "feature-normalized"])
def test_every_term_equals_a_hand_computation(mode):
    teacher, student = unet(config(), 0), unet(config(), 1)
    x_t, t, cond, eps = batch()
    lambdas = {"task": 0.5, "out": 2.0, "feat": 3.0}
    total, terms = build_latent_distiller(student, teacher, mode=mode, lambdas=lambdas)(x_t, t, cond, eps)
    paths = {"down_blocks.0": "down_blocks.0.downsamplers.0", "down_blocks.1": "down_blocks.1.resnets.1",
             "mid_block": "mid_block.resnets.1", "up_blocks.0": "up_blocks.0.upsamplers.0",
             "up_blocks.1": "up_blocks.1.attentions.2"}
    with torch.no_grad():
        eps_t, f_t = hand_features(teacher, paths.values(), x_t, t, cond)
        eps_s, f_s = hand_features(student, paths.values(), x_t, t, cond)
    task, out = ((eps_s - eps) ** 2).mean(), ((eps_s - eps_t) ** 2).mean()
    expected = {"loss_task": task, "kd_out": out}
    if mode != "output":
        for name, p in paths.items():
            mse = ((f_s[p] - f_t[p]) ** 2).mean()
            # LAPTOP-Diff: the MSE relative to the teacher feature's mean square (= squared norms' ratio)
            expected[f"kd_feat/{name}"] = mse / (f_t[p] ** 2).mean() if mode == "feature-normalized" else mse
        expected["kd_feat"] = sum(expected[f"kd_feat/{n}"] for n in paths)
    assert terms.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(terms[k], v, rtol=1e-5, atol=0)
    torch.testing.assert_close(total, 0.5 * task + 2.0 * out + 3.0 * expected.get("kd_feat", 0.0), rtol=1e-5, atol=0)
    assert total.requires_grad and all(not v.requires_grad for v in terms.values())


def test_normalized_terms_are_scale_free_where_plain_ones_are_not():
    """A student equal to the teacher but for its down_blocks.0 downsampler, scaled by 1.5, has F_S = 1.5 F_T at that
    tap: the normalised term is 0.5^2 whatever the feature's scale, the plain MSE 0.25 mean(F_T^2), which grows with
    it (the imbalance LAPTOP-Diff removes)."""
    teacher = unet(config(), 0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.down_blocks[0].downsamplers[0].conv.weight.mul_(1.5)
        student.down_blocks[0].downsamplers[0].conv.bias.mul_(1.5)
    x_t, t, cond, eps = batch()
    _, plain = LatentDistiller(student, teacher, mode="feature")(x_t, t, cond, eps)
    _, normed = LatentDistiller(student, teacher, mode="feature-normalized")(x_t, t, cond, eps)
    torch.testing.assert_close(normed["kd_feat/down_blocks.0"], torch.tensor(0.25), rtol=1e-5, atol=0)  # (1.5-1)^2
    _, f_t = hand_features(teacher, ["down_blocks.0.downsamplers.0"], x_t, t, cond)
    f_t = f_t["down_blocks.0.downsamplers.0"].detach()
    torch.testing.assert_close(plain["kd_feat/down_blocks.0"], 0.25 * (f_t ** 2).mean(), rtol=1e-5, atol=0)


def test_taps_of_bk_sdm_like_students():
    teacher = unet(config(), 0)
    base = {"down_blocks.0": ("down_blocks.0.downsamplers.0",) * 2, "down_blocks.1": ("down_blocks.1.resnets.0",
            "down_blocks.1.resnets.1"), "mid_block": ("mid_block.resnets.1",) * 2,
            "up_blocks.0": ("up_blocks.0.upsamplers.0",) * 2, "up_blocks.1": ("up_blocks.1.attentions.1",
                                                                              "up_blocks.1.attentions.2")}
    assert latent_taps(unet(config(layers_per_block=1), 1), teacher) == base
    small = unet(config(**SMALL), 1)
    assert latent_taps(small, teacher) == {k: v for k, v in base.items() if k != "mid_block"}  # no mid: no mid tap
    assert list(latent_taps(unet(config(), 1), teacher, include_mid=False)) == [  # BK-SDM's own set
        "down_blocks.0", "down_blocks.1", "up_blocks.0", "up_blocks.1"]
    tiny = unet(config(**TINY), 1)
    # the innermost stage goes: the student's last down block meets the teacher's before its downsampler,
    # student up block j meets teacher up block j + 1
    assert latent_taps(tiny, teacher) == {"down_blocks.0": ("down_blocks.0.attentions.1", "down_blocks.0.attentions.1"),
                                          "up_blocks.0": ("up_blocks.0.attentions.2", "up_blocks.1.attentions.2")}
    x_t, t, cond, eps = batch()
    for student in (small, tiny):
        total, terms = build_latent_distiller(student, teacher, mode="feature")(x_t, t, cond, eps)
        assert {k for k in terms if k.startswith("kd_feat/")} == {f"kd_feat/{k}" for k in latent_taps(student, teacher)}
        assert torch.isfinite(total)
    with pytest.raises(ValueError, match="not the teacher's"):
        latent_taps(teacher, tiny)


def test_teacher_gets_no_gradient_and_stays_out_of_the_module():
    teacher, student = unet(config(), 0), unet(config(), 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = build_latent_distiller(student, teacher, mode="feature-normalized")
    total, _ = distiller(*batch())
    total.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(p.grad is not None for p in student.parameters())
    owned = {id(p) for p in distiller.parameters()}
    assert owned == {id(p) for p in student.parameters()} and not any(id(p) in owned for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert distiller.teacher_checksum() == sum(v.double().sum().item() for v in before.values())
    assert not any(k.startswith("teacher") for k in distiller.state_dict())


def test_channel_pruned_student_gets_a_trained_projection():
    teacher = unet(config(), 0)
    student = unet(config().with_widths({"up_blocks.1.resnets.2.conv2": 40}), 1)
    distiller = build_latent_distiller(student, teacher, mode="feature")
    assert list(distiller.proj) == ["up_blocks_1"] and distiller.proj["up_blocks_1"].weight.shape == (32, 40, 1, 1)
    total, _ = distiller(*batch())
    total.backward()
    assert distiller.proj["up_blocks_1"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("entry", ["class_cond", "sdxl"])
def test_class_and_sdxl_conditioning_reach_both_networks(entry):
    """A student equal to its teacher: every KD term is exactly 0 and the task loss is the teacher's; a changed
    class label / pooled text embedding changes the student's prediction."""
    teacher = unet(UNetConditionConfig.from_diffusers(load_entry(entry)["config"]), 0)
    x, t, text, *rest = teacher.example_inputs(batch=2, tokens=3)
    cond = {"encoder_hidden_states": text, **dict(zip(("class_labels", "added_cond_kwargs"), rest))}
    eps = torch.randn_like(x)
    total, terms = build_latent_distiller(copy.deepcopy(teacher), teacher, mode="feature-normalized")(x, t, cond, eps)
    assert all(v == 0 for k, v in terms.items() if k.startswith("kd_")) and len(terms) > 4
    with torch.no_grad():
        eps_t = teacher(x, t, **cond)
        torch.testing.assert_close(total, F.mse_loss(eps_t, eps), rtol=1e-6, atol=0)
        if entry == "class_cond":
            other = dict(cond, class_labels=1 - cond["class_labels"])
        else:
            added = cond["added_cond_kwargs"]
            other = dict(cond, added_cond_kwargs={**added, "text_embeds": -added["text_embeds"]})
        _, moved = build_latent_distiller(copy.deepcopy(teacher), teacher, mode="output")(x, t, other, eps)
    assert moved["loss_task"] != terms["loss_task"]


def test_layer_pruned_student_differs_from_its_teacher_only_after_the_removed_unit():
    """LAPTOP-Diff's student: the teacher's weights minus one removed attention (the last unit of up_blocks.1, the
    tap itself). Every tap before it is exactly the teacher's; the removed unit's tap and the output are not."""
    teacher = unet(config(), 0)
    student = UNet2DConditionModel(config().with_removed(["up_blocks.1.attentions.2"]))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not missing and all(k.startswith("up_blocks.1.attentions.2.") for k in unexpected)
    _, terms = build_latent_distiller(student, teacher, mode="feature-normalized")(*batch())
    assert [k for k, v in terms.items() if k.startswith("kd_feat/") and v == 0] == [
        "kd_feat/down_blocks.0", "kd_feat/down_blocks.1", "kd_feat/mid_block", "kd_feat/up_blocks.0"]
    assert terms["kd_feat/up_blocks.1"] > 0 and terms["kd_out"] > 0


def test_bad_inputs_are_named():
    teacher = unet(config(), 0)
    with pytest.raises(ValueError, match="cross_attention_dim: .*32.* vs .*24"):
        LatentDistiller(unet(config(cross_attention_dim=32), 1), teacher, mode="feature")
    with pytest.raises(ValueError, match="distillation mode"):
        LatentDistiller(unet(config(), 1), teacher, mode="none")
    with pytest.raises(ValueError, match="lambda_feat must be >= 0"):
        LatentDistiller(unet(config(), 1), teacher, mode="feature", lambdas={"feat": -1})
    x_t, t, cond, eps = batch()
    with pytest.raises(ValueError, match=r"cond has keys \['text'\]"):
        LatentDistiller(unet(config(), 1), teacher, mode="output")(x_t, t, {"text": cond["encoder_hidden_states"]}, eps)


def _loss_and_grads(distiller, data):
    total, terms = distiller(*data)
    total.backward()
    return total.detach(), terms, {n: p.grad.clone() for n, p in distiller.named_parameters()}


def test_checkpointing_gives_exactly_the_same_loss_and_gradients_with_fewer_saved_activations():
    teacher, student = unet(config(), 0), unet(config(), 1)
    data = batch()
    keys = list(student.state_dict())
    plain = _loss_and_grads(build_latent_distiller(copy.deepcopy(student), teacher, mode="feature"), data)
    distiller = build_latent_distiller(student, teacher, mode="feature", checkpointing=True)
    # the ResNets and transformers: 6 down, 3 mid, 9 up
    assert enable_checkpointing(student) == len(block_units(student)) == 18
    assert list(student.state_dict()) == keys
    saved = []

    def pack(x):
        saved.append(x.numel() * x.element_size())
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ckpt = _loss_and_grads(distiller, data)
    assert torch.equal(plain[0], ckpt[0]) and all(torch.equal(plain[1][k], ckpt[1][k]) for k in plain[1])
    assert all(torch.equal(plain[2][n], ckpt[2][n]) for n in plain[2])
    saved_ckpt, saved = sum(saved), []
    disable_checkpointing(student)
    assert all(type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel") for m in block_units(student))
    student.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        _loss_and_grads(distiller, data)
    assert saved_ckpt < 0.5 * sum(saved)


def test_bf16_autocast_stays_close_to_float32():
    teacher, student = unet(config(), 0), unet(config(), 1)
    data = batch()
    ref = _loss_and_grads(build_latent_distiller(copy.deepcopy(student), teacher, mode="feature-normalized"), data)
    bf16 = _loss_and_grads(build_latent_distiller(student, teacher, mode="feature-normalized",
                                                  autocast_dtype=torch.bfloat16), data)
    assert bf16[0].dtype == torch.float32 and not torch.equal(bf16[0], ref[0])  # it did run in bf16
    torch.testing.assert_close(bf16[0], ref[0], rtol=2e-2, atol=0)
    for n, g in ref[2].items():
        cos = F.cosine_similarity(g.flatten(), bf16[2][n].flatten(), dim=0)
        assert cos > 0.98, (n, cos)
    # checkpointing recomputes under the same autocast: bit-identical to the bf16 run without it
    ckpt = _loss_and_grads(build_latent_distiller(copy.deepcopy(student), teacher, mode="feature-normalized",
                                                  autocast_dtype=torch.bfloat16, checkpointing=True), data)
    assert torch.equal(ckpt[0], bf16[0])
    # a teacher held in bf16 (half its memory) gets bf16 inputs
    half = build_latent_distiller(unet(config(), 1), copy.deepcopy(teacher).to(torch.bfloat16), mode="feature")
    full = build_latent_distiller(unet(config(), 1), teacher, mode="feature")
    torch.testing.assert_close(half(*data)[0], full(*data)[0], rtol=2e-2, atol=0)


# ---------------------------------------------------------------------------------------------- two processes
def _parallel_worker(rank: int, world: int, store: str, strategy: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        teacher = unet(config(), 0)
        student = unet(config().with_widths({"up_blocks.1.resnets.2.conv2": 40}), 1)  # with a projection
        x_t, t, cond, eps = data = batch(B=4)
        reference = _loss_and_grads(build_latent_distiller(copy.deepcopy(student), teacher, mode="feature-normalized"),
                                    data)
        distiller = build_latent_distiller(student, teacher, mode="feature-normalized", sync_normalizers=True,
                                           checkpointing=strategy == "fsdp")
        wrapped = data_parallel(distiller, Distributed(rank, world, "cpu"), strategy=strategy,
                                units=block_units(student))
        shard = slice(rank * 2, rank * 2 + 2)
        total, terms = wrapped(x_t[shard], t[shard], {k: v[shard] for k, v in cond.items()}, eps[shard])
        total.backward()
        losses = torch.stack([total.detach(), terms["kd_feat"]])
        dist.all_reduce(losses)
        grads, local, full = {}, 0, 0
        for n, p in distiller.named_parameters():
            g = p.grad.full_tensor() if strategy == "fsdp" else p.grad
            grads[n.removeprefix("module.")] = g
            local += p.to_local().numel() if strategy == "fsdp" else p.numel()
            full += g.numel()
        torch.save({"reference": reference[0], "ref_feat": reference[1]["kd_feat"], "losses": losses / world,
                    "ref_grads": reference[2], "grads": grads, "local": local, "full": full}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one(strategy, tmp_path):
    """Each of 2 gloo processes takes half the batch; the averaged gradients (and the mean of the ranks' losses)
    equal the whole batch on one process, for the normalised loss too (its normaliser is synced over ranks).
    FSDP2 runs with activation checkpointing and leaves each rank half of the parameters."""
    # DDP and FSDP import torch._dynamo (seconds): imported once here, the forked workers inherit it.
    import torch._dynamo  # noqa: F401
    mp.start_processes(_parallel_worker, args=(2, str(tmp_path / "store"), strategy, str(tmp_path)), nprocs=2,
                       start_method="fork")
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(r["losses"], torch.stack([r["reference"], r["ref_feat"]]), rtol=1e-5, atol=1e-7)
        assert r["grads"].keys() == r["ref_grads"].keys() and "proj.up_blocks_1.weight" in r["grads"]
        for n, g in r["ref_grads"].items():
            torch.testing.assert_close(r["grads"][n], g, rtol=1e-4, atol=1e-6, msg=n)
        if strategy == "fsdp":
            assert r["local"] < 0.55 * r["full"]  # sharded: about half of every parameter lives on each rank
        else:
            assert r["local"] == r["full"]
