"""Channel pruning of the conditional latent U-Net (models/sd): the coupling rules of its transformer layers on a
minimal module with hand-written groups, dead channels and dead heads whose removal changes nothing, every method
on tiny SD-1- and SDXL-style U-Nets (config + state dict reload), and the conditional gradient pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffusion.schedule import DiffusionConfig, Schedule
from golden_recipe import load_entry
from models.ddpm.config import PRESETS
from models.ddpm.unet import UNet
from models.sd import UNet2DConditionModel, UNetConditionConfig
from models.sd.attention import BasicTransformerBlock
from models.sd.transformer import Transformer2DModel
from models.sd.wiring import dense_widths
from pruning import ChannelPruning, prune
from pruning.conditional import ConditionalBatch
from pruning.importance import accumulate_gradients, diff_pruning_importance, magnitude_importance
from pruning.spec import METHODS
from pruning.surgery import apply_keeps, finalize, update_attributes
from pruning.trace.grouping import analyze
from pruning.trace.record import UnsupportedOpError

D, CTX, HIDDEN = 16, 12, 32  # token width, text width, GEGLU hidden width of the minimal module
TB = "attn.transformer_blocks.0"


class TinyTransformer(nn.Module):
    """conv_in -> Transformer2D (one BasicTransformerBlock, 2 heads of 8) -> conv_out: every SD transformer op."""

    def __init__(self, linear: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = nn.Conv2d(4, D, 3, padding=1)
        block = BasicTransformerBlock(dim=D, context_dim=CTX, attn1=(D, D, 2), attn2=(D, D, 2), ff_hidden=HIDDEN,
                                      dropout=0.0)
        self.attn = Transformer2DModel(in_channels=D, inner_channels=D, groups=4, use_linear_projection=linear,
                                       transformer_blocks=[block])
        self.conv_out = nn.Conv2d(D, 4, 3, padding=1)

    def forward(self, x, encoder_hidden_states):
        return self.conv_out(self.attn(self.conv_in(x), encoder_hidden_states))


def tiny_inputs(batch: int = 2) -> tuple:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, 4, 4, generator=g), torch.randn(batch, 5, CTX, generator=g)


def members(group) -> set:
    return {(m.module, m.role, m.offset) for m in group.members}


@pytest.mark.parametrize("linear", [False, True])  # proj_in/proj_out as 1x1 convs (SD-1) or Linears (SD-2, SDXL)
def test_transformer_groups_equal_the_hand_written_coupling(linear):
    analysis = analyze(TinyTransformer(linear), tiny_inputs(), attn_grouping="joint")
    by_name = {g.name: g for g in analysis.groups if g.prunable}
    # The residual stream inside the Transformer2D: proj_in's output, every residual add, the three LayerNorms.
    assert members(by_name["attn.proj_in"]) == {
        ("attn.proj_in", "out", 0), (f"{TB}.norm1", "norm", 0), (f"{TB}.norm2", "norm", 0), (f"{TB}.norm3", "norm", 0),
        (f"{TB}.attn1.to_q", "in", 0), (f"{TB}.attn1.to_k", "in", 0), (f"{TB}.attn1.to_v", "in", 0),
        (f"{TB}.attn1.to_out.0", "out", 0), (f"{TB}.attn2.to_q", "in", 0), (f"{TB}.attn2.to_out.0", "out", 0),
        (f"{TB}.ff.net.0.proj", "in", 0), (f"{TB}.ff.net.2", "out", 0), ("attn.proj_out", "in", 0)}
    # The U-Net stream around it: GroupNorm, proj_in's input, proj_out's output (the Transformer2D's residual).
    assert members(by_name["conv_in"]) == {("conv_in", "out", 0), ("attn.norm", "norm", 0), ("attn.proj_in", "in", 0),
                                           ("attn.proj_out", "out", 0), ("conv_out", "in", 0)}
    for a in ("attn1", "attn2"):  # joint grouping (the paper's code): q, k, v and to_out's input, 2 whole heads
        group = by_name[f"{TB}.{a}.to_q"]
        assert members(group) == {(f"{TB}.{a}.to_{p}", "out", 0) for p in "qkv"} | {(f"{TB}.{a}.to_out.0", "in", 0)}
        assert group.blocks == 2 and {(h, n) for _, h, n in group.heads} == {("qk", 2), ("v", 2)}
    # GEGLU: the value and gate halves of ff.net.0.proj are one channel space, channel for channel.
    assert members(by_name[f"{TB}.ff.net.0.proj"]) == {(f"{TB}.ff.net.0.proj", "out", 0),
                                                       (f"{TB}.ff.net.0.proj", "out", HIDDEN), (f"{TB}.ff.net.2", "in", 0)}
    # Cross-attention's k and v read the text encoder's width: never pruned.
    for p in ("to_k", "to_v"):
        (group,) = [g for g in analysis.groups if (f"{TB}.attn2.{p}", "in", 0) in members(g)]
        assert not group.prunable and "no prunable producer" in group.protected and group.size == CTX


def cut(model: nn.Module, inputs: tuple, name: str, keep) -> nn.Module:
    """Prune the group called ``name`` to ``keep`` (dense coordinates), with all the bookkeeping."""
    analysis = analyze(model, inputs, attn_grouping="joint")
    (i,) = [i for i, g in enumerate(analysis.groups) if g.name == name and g.prunable]
    keep = torch.as_tensor(keep)
    apply_keeps(model, analysis.groups, {i: keep})
    update_attributes(model, analysis, {i: keep.numpy()})
    return finalize(model)


@pytest.mark.parametrize("attn", ["attn1", "attn2"])
def test_a_dead_head_goes_whole_and_changes_nothing(attn):
    model, inputs = TinyTransformer(linear=True).eval(), tiny_inputs()
    a = model.attn.transformer_blocks[0].get_submodule(attn)
    with torch.no_grad():
        a.to_v.weight[8:] = 0  # head 1 reads v = 0: its output is zero whatever its weights
        before = model(*inputs)
    cut(model, inputs, f"{TB}.{attn}.to_q", range(8))
    assert a.heads == 1 and a.to_q.out_features == a.to_k.out_features == a.to_v.out_features == 8
    assert a.to_k.in_features == (CTX if attn == "attn2" else D)  # cross-attention still reads the text width
    torch.testing.assert_close(model(*inputs), before, rtol=1e-5, atol=1e-6)


def test_a_dead_geglu_channel_goes_with_its_gate_and_changes_nothing():
    model, inputs = TinyTransformer(linear=False).eval(), tiny_inputs()
    proj = model.attn.transformer_blocks[0].ff.net[0].proj
    dense = proj.weight.detach().clone()
    with torch.no_grad():
        proj.weight[5], proj.bias[5] = 0, 0  # value 5 is zero, so GEGLU output 5 = value * GELU(gate) is zero
        before = model(*inputs)
    keep = [c for c in range(HIDDEN) if c != 5]
    cut(model, inputs, f"{TB}.ff.net.0.proj", keep)
    assert proj.out_features == 2 * (HIDDEN - 1) and model.attn.transformer_blocks[0].ff.net[2].in_features == HIDDEN - 1
    torch.testing.assert_close(proj.weight[HIDDEN - 1:], dense[[HIDDEN + c for c in keep]])  # gate rows paired
    torch.testing.assert_close(model(*inputs), before, rtol=1e-5, atol=1e-6)


def test_layer_norm_loses_the_stream_channels_it_normalises():
    model, inputs = TinyTransformer(linear=True).eval(), tiny_inputs()
    norm = model.attn.transformer_blocks[0].norm2
    with torch.no_grad():
        norm.weight.copy_(torch.arange(D, dtype=torch.float32))
    cut(model, inputs, "attn.proj_in", [0, 3, 4, 9])
    assert norm.normalized_shape == (4,) and norm.weight.tolist() == [0.0, 3.0, 4.0, 9.0] and norm.bias.shape == (4,)
    assert model(*inputs).shape == (2, 4, 4, 4)


# ---------------------------------------------------------------------------------------------------
# The U-Net: embeddings, heads in the config, every method


def tiny_unet(name: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(UNetConditionConfig.from_diffusers(load_entry(name)["config"])).eval()


def rebuilt(model: UNet2DConditionModel) -> UNet2DConditionModel:
    again = UNet2DConditionModel(model.config).eval()
    again.load_state_dict(model.state_dict(), strict=True)
    return again


@pytest.mark.parametrize("name, group, dead", [
    ("sd1", "time_embedding.linear_1", ["time_embedding.linear_1"]),
    ("class_cond", "time_embedding.linear_2", ["time_embedding.linear_2", "class_embedding"]),
    ("sdxl", "time_embedding.linear_2", ["time_embedding.linear_2", "add_embedding.linear_2"]),
    ("sdxl", "add_embedding.linear_1", ["add_embedding.linear_1"]),
])
def test_a_dead_embedding_channel_changes_nothing(name, group, dead):
    """Time, class and SDXL text_time embeddings: zero every producer of channel 7 and it can go."""
    model = tiny_unet(name)
    inputs = model.example_inputs(batch=2, tokens=5)
    with torch.no_grad():
        for path in dead:
            layer = model.get_submodule(path)
            if isinstance(layer, nn.Embedding):
                layer.weight[:, 7] = 0  # the class table's column 7
            else:
                layer.weight[7], layer.bias[7] = 0, 0
        before = model(*inputs)
    width = model.get_submodule(group).out_features
    cut(model, inputs, group, [c for c in range(width) if c != 7])
    assert dict(model.config.widths)[group] == width - 1
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rebuilt(model)(*inputs), model(*inputs), rtol=0, atol=0)


def test_a_dead_unet_head_is_recorded_in_the_config():
    model = tiny_unet("sd1")
    inputs = model.example_inputs(batch=1, tokens=5)
    path = "mid_block.attentions.0.transformer_blocks.0.attn1"
    a = model.get_submodule(path)
    d = a.to_q.out_features // a.heads
    with torch.no_grad():
        a.to_v.weight[:d] = 0  # head 0 is dead
        before = model(*inputs)
    cut(model, inputs, f"{path}.to_q", range(d, 2 * d))
    widths = dict(model.config.widths)
    assert widths[f"{path}.heads"] == 1 and widths[f"{path}.to_q"] == widths[f"{path}.to_v"] == d
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rebuilt(model)(*inputs), model(*inputs), rtol=0, atol=0)


def conditional_batch(model: UNet2DConditionModel, batch: int = 2, seed: int = 3) -> ConditionalBatch:
    torch.manual_seed(seed)
    x, _, text, *rest = model.example_inputs(batch=batch, tokens=5)
    labels = rest[0] if rest else None
    added = rest[1] if len(rest) > 1 else None
    return ConditionalBatch(x0=x, encoder_hidden_states=text, class_labels=labels, added_cond_kwargs=added)


@pytest.mark.parametrize("name", ["sd1", "sdxl"])  # sdxl: text_time add-embedding, transformer_layers_per_block (1, 2)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_and_reloads_from_config_and_state_dict(name, method):
    model = tiny_unet(name)
    cfg, inputs = model.config, model.example_inputs(batch=1, tokens=5)
    spec = ChannelPruning(method=method, ratio=0.3)
    data = None
    if spec.gradient:
        spec = ChannelPruning(method=method, ratio=0.3, batch_size=2, micro_batch=4, max_timesteps=2)
        data = conditional_batch(model)
    pruned, report = prune(model, inputs, spec, data=data, schedule=Schedule(DiffusionConfig(schedule="scaled_linear")),
                           progress=False)
    assert report.head_mode == "heads" and report.params_after < 0.8 * report.params_before
    widths, dense = dict(pruned.config.widths), dense_widths(cfg)
    for key, heads in dense.items():
        if key.endswith(".heads"):  # whole heads: int(H * 0.7) of them, each as wide as before
            assert widths[key] == int(heads * 0.7)
            a = pruned.get_submodule(key[:-len(".heads")])
            assert a.to_q.out_features // a.heads == dense[key[:-len("heads")] + "to_q"] // heads
    for name_, m in pruned.named_modules():
        if name_.endswith("attn2"):
            assert m.to_k.in_features == m.to_v.in_features == cfg.cross_attention_dim[0]  # the text width
        if name_.endswith("ff.net.0.proj"):  # GEGLU: value channel c and gate channel c go together
            hidden = dense[name_] // 2
            kept = report.kept[name_]["out"]
            assert np.array_equal(kept[len(kept) // 2:], kept[:len(kept) // 2] + hidden)
    with torch.no_grad():
        out = pruned(*inputs)
        assert out.shape == inputs[0].shape
        torch.testing.assert_close(rebuilt(pruned)(*inputs), out, rtol=0, atol=0)


def gradient_scores(model: UNet2DConditionModel, data: ConditionalBatch, micro_batch: int) -> torch.Tensor:
    accumulate_gradients(model, Schedule(), data.x0, thr=0.0, micro_batch=micro_batch, max_timesteps=2,
                         eps=torch.ones_like(data.x0), cond=data.conditioning)
    analysis = analyze(model, model.example_inputs(batch=1, tokens=5), attn_grouping="joint")
    (group,) = [g for g in analysis.groups if g.name == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"]
    return diff_pruning_importance(model, group)


def test_the_gradient_pass_reads_each_latents_own_condition():
    model = tiny_unet("sd1")
    data = conditional_batch(model)
    scores = gradient_scores(model, data, micro_batch=4)  # both timesteps and both samples in one pass
    # Each latent keeps its own prompt whether the batch is split or stacked over timesteps.
    torch.testing.assert_close(gradient_scores(model, data, micro_batch=1), scores, rtol=1e-4, atol=0)
    other = ConditionalBatch(x0=data.x0, encoder_hidden_states=data.encoder_hidden_states.flip(0))
    changed = gradient_scores(model, other, micro_batch=4)
    assert (changed - scores).abs().max() > 1e-3 * scores.abs().max()  # other prompts, other scores


def test_condition_errors_are_one_line_and_leave_the_model_alone():
    model = tiny_unet("sd1")
    inputs, data = model.example_inputs(batch=1, tokens=5), conditional_batch(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = ChannelPruning(method="taylor", ratio=0.3, batch_size=2, max_timesteps=1)
    with pytest.raises(ValueError, match=r"ConditionalBatch\(x0, encoder_hidden_states"):
        prune(model, inputs, spec, data=data.x0, progress=False)
    short = ConditionalBatch(x0=data.x0, encoder_hidden_states=data.encoder_hidden_states[:1])
    with pytest.raises(ValueError, match=r"data.encoder_hidden_states has shape \(1, 5, 24\): it needs one row"):
        prune(model, inputs, spec, data=short, progress=False)
    with pytest.raises(ValueError, match="attn_scale 'dense' cannot hold"):
        prune(model, inputs, ChannelPruning(method="random", head_mode="channels", attn_scale="dense"), progress=False)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_head_mode_default_is_per_model():
    spec = ChannelPruning(method="random")
    assert spec.head_mode is None and spec.head_mode_for(tiny_unet("sd1")) == "heads"
    with torch.device("meta"):
        ddpm = UNet(PRESETS["tiny"])
    assert spec.head_mode_for(ddpm) == "channels"  # the DDPM U-Net keeps the paper code's per-head channels
    assert ChannelPruning(head_mode="channels").head_mode_for(tiny_unet("sd1")) == "channels"


@pytest.mark.parametrize("name", [pytest.param("sdxl", marks=pytest.mark.slow),  # 16 s: conditions in a dict
                                  "class_cond"])  # integer class labels
def test_a_macs_target_is_reached_on_conditional_unets(name):
    model = tiny_unet(name)
    _, report = prune(model, model.example_inputs(batch=1, tokens=5), ChannelPruning(method="random", target_macs=0.3),
                      progress=False)
    assert report.target["kind"] == "macs" and 0.3 <= report.target["achieved"] < 0.45


def test_split_attention_grouping_on_a_layer_pruned_unet():
    """q/k and v as two groups that lose the same whole heads, on a U-Net whose units were removed first."""
    removed = ("down_blocks.1.resnets.0", "mid_block.attentions.0.transformer_blocks.0", "up_blocks.1.attentions.0")
    model = UNet2DConditionModel(tiny_unet("sd1").config.with_removed(removed)).eval()
    inputs = model.example_inputs(batch=1, tokens=5)
    pruned, report = prune(model, inputs, ChannelPruning(method="magnitude", ratio=0.3, attn_grouping="split"),
                           progress=False)
    heads = {k: v for k, v in pruned.config.widths if k.endswith(".heads")}
    assert heads and set(heads.values()) == {1} and pruned.config.removed == removed
    path = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    q, v = report.kept[f"{path}.to_q"]["out"], report.kept[f"{path}.to_v"]["out"]  # 2 heads of 16 -> 1
    assert len(q) == len(v) == 16 and len(set(q // 16)) == 1 and set(q // 16) == set(v // 16)  # the same head
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pruned)(*inputs), pruned(*inputs), rtol=0, atol=0)


def test_a_layer_norm_over_several_dims_stays_an_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.LayerNorm([8, 4, 4]), nn.Conv2d(8, 3, 1))
    with pytest.raises(UnsupportedOpError, match=r"op 'LayerNorm' in module '1': normalized_shape \(8, 4, 4\)"):
        analyze(model, (torch.randn(1, 3, 4, 4),))


def test_magnitude_reads_the_class_embedding_by_column():
    """Hand computation: the time-embedding channel space's magnitude score sums time_embedding.linear_2's rows,
    the class table's columns and every ResNet's time_emb_proj columns."""
    model = tiny_unet("class_cond")
    analysis = analyze(model, model.example_inputs(batch=1, tokens=5))
    (group,) = [g for g in analysis.groups if g.name == "time_embedding.linear_2" and g.prunable]
    expected = model.time_embedding.linear_2.weight.pow(2).sum(1) + model.class_embedding.weight.pow(2).sum(0)
    for name, m in model.named_modules():
        if name.endswith("time_emb_proj"):
            expected = expected + m.weight.pow(2).sum(0)
    torch.testing.assert_close(magnitude_importance(model, group), expected.double().detach(), rtol=1e-6, atol=0)


class ReadTwice(nn.Module):
    """cat([h, h]) read by a GroupNorm and a conv: doubled consumers, which the paper's score leaves out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h = self.conv(x)
        return self.head(self.norm(torch.cat([h, h], dim=1)))


def unit_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # G = 1: the score becomes a sum of squared (or absolute) weights


def test_diff_pruning_counts_both_geglu_halves_and_drops_doubled_consumers():
    model = TinyTransformer(linear=True)
    unit_grads(model)
    group = next(g for g in analyze(model, tiny_inputs()).groups if g.name == f"{TB}.ff.net.0.proj")
    W0, W2 = model.attn.transformer_blocks[0].ff.net[0].proj.weight, model.attn.transformer_blocks[0].ff.net[2].weight
    expected = W0[:HIDDEN].pow(2).sum(1) + W0[HIDDEN:].pow(2).sum(1) + W2.pow(2).sum(0)  # value, gate, consumer
    torch.testing.assert_close(diff_pruning_importance(model, group), expected.double().detach())
    twice = ReadTwice()
    unit_grads(twice)
    (group,) = [g for g in analyze(twice, (torch.randn(1, 3, 4, 4),)).groups if g.name == "conv" and g.prunable]
    conv = twice.conv.weight.pow(2).sum((1, 2, 3))
    torch.testing.assert_close(diff_pruning_importance(twice, group), conv.double().detach())  # the paper's quirk
    both = conv + 2 * twice.norm.weight[:4].abs() + twice.head.weight[:, :4].pow(2).sum((0, 2, 3)) \
        + twice.head.weight[:, 4:].pow(2).sum((0, 2, 3))
    torch.testing.assert_close(diff_pruning_importance(twice, group, concat_duplicates="sum"), both.double().detach())
