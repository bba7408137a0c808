"""pruning/layers/exhaustive.py: minimal covers of a budget, the exhaustive L(S) search and its solver option."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffusion.schedule import Schedule
from models import ModelConfig, UNet
from pruning.layers import find_units, make_calibration, output_losses, prune_layers
from pruning.layers import exhaustive
from pruning.layers.knapsack import knapsack, select

CONFIG = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                     norm_groups=2)


def small_model() -> UNet:
    torch.manual_seed(0)
    model = UNet(CONFIG).eval()
    with torch.no_grad():  # make every branch matter (default init leaves some nearly silent)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_minimal_covers_known_answer():
    # costs 5, 3, 3, 1 and target 6: {0,1} {0,2} {0,3} {1,2} reach it minimally; {0,1,3} is not minimal
    # (dropping 3 keeps 8 >= 6), {1,3} reaches only 4.
    assert exhaustive.minimal_covers([5, 3, 3, 1], 6) == [(0, 1), (0, 2), (0, 3), (1, 2)]
    assert exhaustive.minimal_covers([5, 3, 3, 1], 0) == [()]
    assert exhaustive.minimal_covers([1, 1], 3) == []
    assert exhaustive.minimal_covers([0, 4], 4) == [(1,)]  # a zero-cost unit is never needed


def test_minimal_covers_match_brute_force():
    g = np.random.default_rng(0)
    costs = g.integers(0, 50, size=9).tolist()
    target = sum(costs) // 2
    brute = []
    for k in range(len(costs) + 1):
        for s in itertools.combinations(range(len(costs)), k):
            total = sum(costs[i] for i in s)
            if total >= target and all(total - costs[i] < target for i in s):
                brute.append(s)
    assert exhaustive.minimal_covers(costs, target) == brute


def test_too_many_units_is_an_error_before_any_work():
    with pytest.raises(ValueError, match="21 removable units"):
        exhaustive.minimal_covers([1] * 21, 3)
    with pytest.raises(ValueError, match="prune_layers"):
        select([1.0, 2.0], [1, 1], 1, solver="exhaustive")


def test_search_finds_the_least_measured_loss_and_is_a_prune_layers_solver():
    model = small_model()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    calib = make_calibration(images, Schedule(), size=6, seed=0)
    units = find_units(model)
    costs = [u.params for u in units]
    target = -(-3 * sum(p.numel() for p in model.parameters()) // 10)  # ceil, as prune_layers
    covers = exhaustive.minimal_covers(costs, target)
    losses = output_losses(model, calib, [frozenset(units[i].path for i in s) for s in covers]).numpy()
    chosen, info = exhaustive.search(model, calib, units, costs, target)
    assert tuple(chosen) == covers[int(np.argmin(losses))]
    assert info["loss"] == pytest.approx(losses.min()) and info["covers"] == len(covers)
    assert exhaustive.rank_of(info["loss"], losses) == 1
    # The knapsack on single-unit losses reaches the target too, and can only be as good or worse.
    single = output_losses(model, calib, [frozenset([u.path]) for u in units]).numpy()
    ks = knapsack(single.tolist(), costs, target)
    ks_loss = output_losses(model, calib, [frozenset(units[i].path for i in ks)]).item()
    # (relative slack: the same set measured in another batch composition differs in the float32 last bits)
    assert ks_loss >= info["loss"] * (1 - 1e-6)
    # As the solver of prune_layers (same calibration), whatever the criterion's scores say.
    small, report = prune_layers(model, criterion="random", target_params=0.3, solver="exhaustive", calib=calib)
    assert report.solver == "exhaustive"
    assert sorted(report.removed) == sorted(units[i].path for i in chosen)
    with pytest.raises(ValueError, match="needs images"):
        prune_layers(model, criterion="random", target_params=0.3, solver="exhaustive")
