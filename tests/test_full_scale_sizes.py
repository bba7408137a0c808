"""The full-scale layer-pruning targets of docs/RECIPES.md ("Stable Diffusion at full scale") are reachable by
the stage-keeping knapsack (pruning/layers/knapsack.py) on the real architectures, built on the meta device
(shapes only: no weight, no forward pass). Scores are random: what is checked is that the target can be met
and what it comes to, not which units a criterion would choose.

    SD-v1.5 (859,520,964 params)    -> at most BK-SDM-Small's 482,346,884 (LAPTOP-Diff's comparison size)
    SDXL-base (2,567,463,684)       -> 50% (about 1.3B) by per-transformer-layer units (BasicTransformerBlock)
"""
from __future__ import annotations

import random

import pytest
import torch

from models.sd import PRESETS, UNet2DConditionModel
from pruning.layers import find_units
from pruning.layers.api import stages, target_cost
from pruning.layers.knapsack import knapsack
from pruning.layers.sd import removed_config

BK_SDM_SMALL = 482_346_884  # tests/test_layer_pruning_sd.py: bk_sdm(sd-v1.5, "bk-sdm-small")


def on_meta(name: str, removed: list[str] | None = None) -> UNet2DConditionModel:
    with torch.device("meta"):
        model = UNet2DConditionModel(PRESETS[name])
        return model if removed is None else UNet2DConditionModel(removed_config(model, removed))


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def knapsack_run(name: str, model, granularity: str, fraction: float, kinds: tuple[str, ...], seed: int = 0):
    """Random-score knapsack for removing ``fraction`` of the params with the units of ``kinds``: (units
    removed, params of the pruned U-Net rebuilt on the meta device, the target saving)."""
    units = [u for u in find_units(model, granularity) if u.kind in kinds]
    need, total, _ = target_cost(model, units, "params", fraction)
    rng = random.Random(seed)
    chosen = knapsack([rng.random() for _ in units], [u.params for u in units], need, stages(units))
    removed = [units[i] for i in chosen]
    # every down / up stage keeps a unit (sd.py); the mid block may go whole
    kept_stages = {u.stage for u in units} - {"mid_block"}
    assert kept_stages <= {u.stage for u in units if u not in removed}
    small = on_meta(name, [u.path for u in removed])
    assert params(small) == total - sum(u.params for u in removed)  # unit savings add up exactly
    return removed, params(small), need


@pytest.mark.parametrize("granularity", ["transformer", "block"])
def test_sd15_reaches_bk_sdm_small_size(granularity, capsys):
    model = on_meta("sd-v1.5")
    total = params(model)
    assert total == 859_520_964
    kinds = ("res", "attn", "block")
    removed, after, need = knapsack_run("sd-v1.5", model, granularity, 1 - BK_SDM_SMALL / total, kinds)
    assert after <= BK_SDM_SMALL  # at least BK-SDM-Small's saving ...
    assert BK_SDM_SMALL - after < min(u.params for u in removed)  # ... and not one unit more than needed
    with capsys.disabled():
        print(f"\n[full scale] sd-v1.5 ({granularity}): {total:,} -> {after:,} params removing {len(removed)} units "
              f"(BK-SDM-Small {BK_SDM_SMALL:,})")


def test_sdxl_base_reaches_half_by_transformer_layers(capsys):
    model = on_meta("sdxl-base")
    total = params(model)
    assert total == 2_567_463_684
    # BasicTransformerBlocks alone (70 of them, 2 and 10 per Transformer2D at SDXL's two inner levels)
    removed, after, need = knapsack_run("sdxl-base", model, "block", 0.5, ("block",))
    assert {u.kind for u in removed} == {"block"} and after <= total - need
    assert 1.2e9 < after <= total / 2
    # with the ResNets as units too (LayerPruning(granularity="block") lists both)
    removed_all, after_all, _ = knapsack_run("sdxl-base", model, "block", 0.5, ("res", "block"))
    assert after_all <= total / 2
    with capsys.disabled():
        print(f"\n[full scale] sdxl-base (block): {total:,} -> {after:,} params removing {len(removed)} "
              f"transformer layers; with ResNet units {after_all:,} ({len(removed_all)} units)")
