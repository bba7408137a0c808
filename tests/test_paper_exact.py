"""Diff-Pruning exactly as the paper's code prunes (VainF/Diff-Pruning ``ddpm_exp/prune.py`` with its vendored
Torch-Pruning), against the known answer in tests/data/golden/diffpruning_paper.pt (its README says what it
holds): the kept timesteps and L_t, the order in which the groups are visited, every layer's kept channels in
dense coordinates, the parameter count and the pruned network's output, at ratios 0.3 and 0.5.

Two implementations of that network carry the golden file's weight recipe: the replica of the DDIM codebase's
``Model`` (tests/replicas/ddim.py, written op for op as that forward runs) and this project's U-Net loaded from
the same DDIM-layout state dict by ``models.load`` (fused attention, ``h += x`` residual adds: another autograd
graph). Both must prune to the paper's network: the order is the DDIM codebase's graph walk, derived from the
layer names (pruning/trace/canonical_order.py), and that walk is checked against the replica's own autograd
graph (pruning/trace/autograd_order.py) on several architectures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import load
from pruning import prune
from pruning.trace.canonical_order import ddim_order
from pruning.trace.grouping import analyze
from pruning.trace.tracer import trace
from tests.replicas.ddim import Model
from tests.replicas.diffusers_style import TinyUNet2D

GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "diffpruning_paper.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


def build(golden) -> Model:
    """The golden Model with its recipe weights: tensor i ~ randn from seed recipe_seed + i, then 1 + 0.2 z for
    GroupNorm weights and 0.05 z for every other tensor."""
    c = golden["config"]
    model = Model(ch=c["ch"], out_ch=c["out_ch"], ch_mult=c["ch_mult"], num_res_blocks=c["num_res_blocks"],
                  attn_resolutions=c["attn_resolutions"], dropout=c["dropout"], in_channels=c["in_channels"],
                  resolution=c["image_size"], groups=c["norm_groups"])
    state = {}
    for i, key in enumerate(golden["keys"]):
        z = torch.randn(golden["shapes"][key], generator=torch.Generator().manual_seed(golden["recipe_seed"] + i))
        is_norm_weight = key.endswith(".weight") and key.split(".")[-2].startswith("norm")
        state[key] = 1 + 0.2 * z if is_norm_weight else 0.05 * z
    model.load_state_dict(state)
    assert list(model.state_dict()) == list(golden["keys"])
    return model


def ours(golden, tmp_path: Path):
    """This project's U-Net with the same weights, read by ``models.load`` from the DDIM-layout state dict."""
    path = tmp_path / "golden_ddim.pt"
    torch.save(build(golden).state_dict(), path)
    return load(path, image_size=int(golden["config"]["image_size"]), norm_groups=int(golden["config"]["norm_groups"]))


IMPLEMENTATIONS = {"replica": lambda golden, tmp_path: build(golden), "ours": ours}


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_default_diff_pruning_reproduces_the_paper_code(golden, ratio, implementation, tmp_path):
    expect = golden[f"ratio_{ratio}"]
    model = IMPLEMENTATIONS[implementation](golden, tmp_path)
    example = (torch.randn(1, 3, 16, 16), torch.ones(1, dtype=torch.long))  # the paper's example inputs
    model, report = prune(model, example, method="diff-pruning", ratio=ratio, data=golden["x0"], eps=golden["eps"],
                          thr=float(golden["thr"]), ignored=["conv_out"], micro_batch=64, progress=False)
    # The informative timesteps: stop at the first t with L_t < thr * L_max.
    assert report.timesteps.kept == [int(t) for t in expect["kept_timesteps"]]
    np.testing.assert_allclose(report.timesteps.losses, np.asarray(expect["losses"], dtype=float), rtol=1e-5)
    # The order of the groups (each named by the layer that brings it up in the paper's pruner).
    assert report.order == list(expect["group_order"])
    # Every layer's kept channels, in the dense layer's coordinates.
    assert len(expect["kept"]) == 104
    for layer, roles in expect["kept"].items():
        for role, value in roles.items():
            if role == "num_groups":
                assert model.get_submodule(layer).num_groups == int(value), layer
            else:
                np.testing.assert_array_equal(report.kept[layer][role], value.numpy(), err_msg=f"{layer} {role}")
    assert report.params_after == int(expect["params_after"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(expect["probe_x"], expect["probe_t"]), expect["probe_eps"],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_the_grouping_alone_gives_the_paper_order(golden, implementation, tmp_path):
    """The grouping alone (no scoring, no gradients) gives the paper's order, on either implementation."""
    model = IMPLEMENTATIONS[implementation](golden, tmp_path)
    example = (torch.randn(1, 3, 16, 16), torch.ones(1, dtype=torch.long))
    analysis = analyze(model, example, ignored=["conv_out"], attn_grouping="joint")
    order = [analysis.roots[g] for g in analysis.paper_order]
    assert analysis.order_source == "ddim"
    assert order == list(golden["ratio_0.3"]["group_order"])
    # The walk starts at the output: conv_out's input space (up.0's last block, entered through its shortcut) first.
    assert order[0] == "up.0.block.2.nin_shortcut"


def test_our_unet_has_another_autograd_order(golden, tmp_path):
    """Why the canonical walk is needed: our forward's own graph meets the layers in another order."""
    example = (torch.randn(1, 3, 16, 16), torch.ones(1, dtype=torch.long))
    assert trace(ours(golden, tmp_path), example).autograd_order != trace(build(golden), example).autograd_order


ARCHITECTURES = {  # DDIM Model keyword arguments beyond the golden's: other levels, blocks, attention, resampling
    "golden": {},
    "three_levels": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16, 4)),
    "avg_pool": dict(ch=32, ch_mult=(1, 2), num_res_blocks=3, attn_resolutions=(), resamp_with_conv=False),
    "one_level": dict(ch=32, ch_mult=(2,), num_res_blocks=2, attn_resolutions=(16,)),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_canonical_walk_is_the_ddim_models_autograd_walk(golden, arch):
    """The DDIM graph built from layer names alone (canonical_order.py) is the graph the DDIM code's forward
    builds: the walk lists every layer in the same order as the walk of the replica's real autograd graph."""
    c = golden["config"]
    kw = dict(ch=c["ch"], out_ch=c["out_ch"], ch_mult=c["ch_mult"], num_res_blocks=c["num_res_blocks"],
              attn_resolutions=c["attn_resolutions"], dropout=0.0, in_channels=3, resolution=16, groups=8)
    model = Model(**{**kw, **ARCHITECTURES[arch]})
    example = (torch.randn(1, 3, 16, 16), torch.ones(1, dtype=torch.long))
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm))]
    walk = ddim_order(names)
    assert walk is not None and sorted(walk) == sorted(names)
    assert walk == trace(model, example).autograd_order


def test_other_names_keep_their_own_autograd_order():
    """A network without the DDIM codebase's names (diffusers' naming) is walked on its own graph; a name
    set that is almost the DDIM one (a layer missing from a block) is not taken for it."""
    analysis = analyze(TinyUNet2D(), (torch.randn(1, 3, 16, 16), torch.ones(1)), attn_grouping="joint")
    assert analysis.order_source == "autograd"
    names = ["conv_in", "temb.dense.0", "temb.dense.1", "down.0.block.0.norm1", "down.0.block.0.conv1", "up.0.block.0.conv2",
             "norm_out", "conv_out"]
    assert ddim_order(names) is None


@pytest.mark.slow  # three full prunes of the golden model: about 5 CPU-seconds
def test_the_principled_options_differ_from_the_paper_code(golden):
    """split q/k from v, and dense scoring, are real alternatives: they keep other channels."""
    expect = golden["ratio_0.3"]
    example = (torch.randn(1, 3, 16, 16), torch.ones(1, dtype=torch.long))
    common = dict(method="diff-pruning", ratio=0.3, data=golden["x0"], eps=golden["eps"], thr=float(golden["thr"]),
                  ignored=["conv_out"], micro_batch=64, progress=False)
    _, split = prune(build(golden), example, attn_grouping="split", **common)
    assert not np.array_equal(split.kept["mid.attn_1.v"]["out"], split.kept["mid.attn_1.q"]["out"])
    _, dense = prune(build(golden), example, scoring="dense", **common)
    differs = [layer for layer, roles in expect["kept"].items() if "out" in roles
               and not np.array_equal(dense.kept[layer]["out"], roles["out"].numpy())]
    assert differs  # order matters for the paper's sequential scoring
    assert dense.params_after == int(expect["params_after"])  # same widths, other channels
