"""--round-to: pruned widths at multiples of N with the GroupNorm / head constraints kept (pruning/select.py)."""
from __future__ import annotations

import pytest
import torch

from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from pruning.groups import Group
from pruning.select import rounded_width, select_local


@pytest.mark.parametrize("kept, size, blocks, n, expected", [
    (179, 256, 1, 8, 176),   # the paper's q/k/v width at ratio 0.3 -> nearest multiple of 8
    (358, 512, 1, 8, 360),   # temb 512 -> 358 -> 360
    (96, 128, 32, 8, 96),    # GroupNorm(32): already a multiple of lcm(8, 32) = 32
    (90, 128, 32, 8, 96),    # ... otherwise the nearest multiple of 32, every group losing the same
    (44, 64, 1, 16, 48),     # a tie (40 or 48): keep more
    (4, 6, 1, 8, 4),         # narrower than one multiple: the paper's width
    (97, 100, 1, 8, 96),
    (99, 100, 1, 8, 100),    # the dense width is always allowed
    (128, 128, 1, 8, 128),   # nothing pruned stays unpruned
    (179, 256, 1, None, 179),
])
def test_rounded_width_known_answers(kept, size, blocks, n, expected):
    assert rounded_width(kept, size, blocks, n) == expected


def test_select_local_rounds_and_keeps_equal_removal_per_block():
    scores = torch.rand(384, generator=torch.Generator().manual_seed(0))
    group = Group(size=384, members=[], blocks=32)  # a 256 + 128 concat under GroupNorm(32): 12 per group
    kept = select_local(scores, group, 0.3, round_to=8)
    assert kept.numel() % 8 == 0 and kept.numel() % 32 == 0
    per_block = torch.bincount(kept // 12, minlength=32)
    assert (per_block == per_block[0]).all()
    plain = select_local(scores[:256], Group(size=256, members=[]), 0.3)
    rounded = select_local(scores[:256], Group(size=256, members=[]), 0.3, round_to=8)
    assert plain.numel() == 179 and rounded.numel() == 176
    assert set(rounded.tolist()) <= set(plain.tolist())  # the same ranking, three fewer channels


def test_bad_round_to_is_named():
    with pytest.raises(ValueError, match="round_to"):
        select_local(torch.rand(8), Group(size=8, members=[]), 0.3, round_to=0)


@pytest.mark.parametrize("heads", [1, 2])
def test_prune_with_round_to_gives_multiples_and_a_working_model(heads):
    """Every pruned conv/linear width of a U-Net is a multiple of N (or its dense width), GroupNorm still
    divides every normalised width, attention widths split into the heads, and the model runs."""
    import pruning

    config = ModelConfig(image_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                         dropout=0.0, norm_groups=4, num_heads=heads)
    torch.manual_seed(0)
    model = UNet(config).eval()
    dense = model.widths()
    example = model.example_inputs()
    model, report = pruning.prune(model, example, method="magnitude", ratio=0.3, round_to=8, progress=False)
    widths = model.widths()
    assert report.round_to == 8 and report.summary()["round_to"] == 8
    changed = [k for k in widths if widths[k] != dense[k]]
    assert changed  # something was pruned
    for k in changed:
        if not k.endswith(".heads"):
            assert widths[k] % 8 == 0, (k, widths[k])
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0, name
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0]))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_round_to_needs_the_local_channel_rule():
    import pruning

    model = UNet(ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                             dropout=0.0, norm_groups=2))
    with pytest.raises(ValueError, match="round_to applies to the local rule"):
        pruning.prune(model, model.example_inputs(), method="random", scope="global",
                      round_to=8, progress=False)
