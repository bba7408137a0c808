"""Layer pruning of the SD family's U-Net (pruning/layers/sd.py, bksdm.py): BK-SDM's exact architectures and
weight copy, the output-loss criterion and the stage-keeping knapsack on a tiny random SD U-Net, removal as
zeroed branches, the additivity report, saving / reloading, and the one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from models.pipelines.component import load_component
from models.pipelines.save import DIFFPRUNE_CONFIG, component_config
from models.sd import PRESETS, UNet2DConditionModel, UNetConditionConfig
from pruning.layers import LayerPruning, check_target, find_units, make_calibration, output_losses, prune_layers, remove_units
from pruning.layers.additivity import additivity_report
from pruning.layers.bksdm import bk_sdm, copy_map
from pruning.layers.criteria import LAYER_CRITERIA
from pruning.layers.knapsack import check_reachable, greedy, knapsack
from pruning.layers.sd import latent_schedule, prompt_conditions

# SD-v1's topology (CrossAttnDown x3 + Down, mid block, Up + CrossAttnUp x3, 2 pairs per down block) at toy widths.
SD1_TINY = dict(block_out_channels=[8, 8, 16, 16], norm_num_groups=4, attention_head_dim=2, cross_attention_dim=6,
                layers_per_block=2, sample_size=8)
M, D = 3, 6  # text tokens, their width


def tiny(seed: int = 0, **changes) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    model = UNet2DConditionModel(UNetConditionConfig.from_diffusers({**SD1_TINY, **changes})).eval()
    with torch.no_grad():  # default init leaves some branches nearly silent; make every unit matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def data(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), {"encoder_hidden_states": torch.randn(n, M, D, generator=g)}


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, M, D, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 700]), text)


# ---------------------------------------------------------------- BK-SDM
@pytest.mark.parametrize("preset,expected", [("bk-sdm-base", 579_384_964), ("bk-sdm-small", 482_346_884),
                                             ("bk-sdm-tiny", 323_384_964)])
def test_bk_sdm_from_sd15_has_the_published_architecture_and_size(preset, expected):
    with torch.device("meta"):
        teacher = UNet2DConditionModel(PRESETS["sd-v1.5"])
    student, info = bk_sdm(teacher, preset)
    assert params(student) == expected
    assert student.config == PRESETS[preset]  # the released bk-sdm-* config.json, field for field
    assert not student.config.removed and not student.config.widths
    assert params(teacher) == 859_520_964  # the teacher untouched


def test_bk_sdm_tiny_copy_map_is_bk_sdms():
    """Kim et al.'s copy_weight_from_teacher table for Tiny (BK-SDM repo, src/kd_train_text_to_image.py)."""
    expected = {}
    for k in range(3):
        src = f"up_blocks.{k + 1}"
        expected.update({f"up_blocks.{k}.resnets.0": f"{src}.resnets.0", f"up_blocks.{k}.attentions.0": f"{src}.attentions.0",
                         f"up_blocks.{k}.resnets.1": f"{src}.resnets.2", f"up_blocks.{k}.attentions.1": f"{src}.attentions.2"})
    expected.update({"up_blocks.0.upsamplers.0": "up_blocks.1.upsamplers.0",
                     "up_blocks.1.upsamplers.0": "up_blocks.2.upsamplers.0"})
    assert copy_map(PRESETS["sd-v1.5"], "bk-sdm-tiny") == expected
    base = {f"up_blocks.{k}.{n}.1": f"up_blocks.{k}.{n}.2" for k in range(4) for n in ("resnets", "attentions")}
    del base["up_blocks.0.attentions.1"]  # up block 0 (UpBlock2D) has no attention
    assert copy_map(PRESETS["sd-v1.5"], "bk-sdm-base") == copy_map(PRESETS["sd-v1.5"], "bk-sdm-small") == base


@pytest.mark.parametrize("preset", ["bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny"])
def test_bk_sdm_kept_blocks_hold_the_teachers_weights(preset):
    teacher = tiny()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, report = prune_layers(teacher, LayerPruning(criterion="handcrafted", architecture=preset))
    s, t = student.state_dict(), teacher.state_dict()
    shift = 1 if preset == "bk-sdm-tiny" else 0
    pairs = [("conv_in.weight", "conv_in.weight"), ("down_blocks.0.resnets.0.conv1.weight", "down_blocks.0.resnets.0.conv1.weight"),
             ("down_blocks.2.attentions.0.proj_in.weight", "down_blocks.2.attentions.0.proj_in.weight"),
             ("up_blocks.1.resnets.0.conv2.weight", f"up_blocks.{1 + shift}.resnets.0.conv2.weight"),
             ("up_blocks.1.resnets.1.conv_shortcut.weight", f"up_blocks.{1 + shift}.resnets.2.conv_shortcut.weight"),
             ("up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight",
              f"up_blocks.{2 + shift}.attentions.2.transformer_blocks.0.attn2.to_k.weight"),
             ("up_blocks.1.upsamplers.0.conv.bias", f"up_blocks.{1 + shift}.upsamplers.0.conv.bias"),
             ("conv_out.weight", "conv_out.weight")]
    for student_key, teacher_key in pairs:
        assert torch.equal(s[student_key], t[teacher_key]), student_key
    assert ("mid_block.resnets.0.conv1.weight" in s) == (preset == "bk-sdm-base")
    assert report.copied == copy_map(teacher.config, preset) and report.target is None
    assert report.params_after == params(student) < report.params_before == params(teacher)
    with torch.no_grad():  # a copy, not a view: the teacher stays as it was
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert forward(student).shape == (2, 4, 8, 8)


def test_removing_the_mid_block_units_is_bk_sdm_small_without_a_mid_block():
    """All three mid units removed (config.removed) = mid_block_type None: same parameters, same function."""
    model = tiny()
    removed = remove_units(model, ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"])
    no_mid = UNet2DConditionModel(UNetConditionConfig.from_diffusers({**SD1_TINY, "mid_block_type": None})).eval()
    no_mid.load_state_dict(removed.state_dict())
    assert params(no_mid) == params(removed)
    torch.testing.assert_close(forward(no_mid), forward(removed), rtol=0, atol=0)


# ---------------------------------------------------------------- units, masking, removal
def zero_branch(model, path: str) -> None:
    """Zero the last layer of every residual branch of the unit: its branch then adds nothing."""
    names = {"resnets": ["conv2"], "attentions": ["proj_out"]}.get(path.split(".")[-2], ["attn1.to_out.0", "attn2.to_out.0", "ff.net.2"])
    with torch.no_grad():
        for n in names:
            layer = model.get_submodule(f"{path}.{n}")
            layer.weight.zero_()
            layer.bias.zero_()


@pytest.mark.parametrize("path,granularity", [("up_blocks.1.resnets.2", "transformer"), ("down_blocks.1.resnets.0", "transformer"),
                                              ("down_blocks.2.attentions.1", "transformer"),
                                              ("mid_block.attentions.0.transformer_blocks.1", "block")])
def test_removing_a_unit_equals_zeroing_its_branch(path, granularity):
    model = tiny(transformer_layers_per_block=2)
    zero_branch(model, path)
    small = remove_units(model, [path])
    assert path in small.config.removed
    torch.testing.assert_close(forward(small), forward(model), rtol=1e-5, atol=1e-6)
    latents, cond = data()
    calib = make_calibration(latents, latent_schedule(), size=4, cond=cond)
    scores = LAYER_CRITERIA["output-loss"](model, find_units(model, granularity), _inputs(calib))
    assert scores[path] == pytest.approx(0.0, abs=1e-12)
    assert min(v for p, v in scores.items() if p != path) > 1e-8


def _inputs(calib):
    from pruning.layers.criteria import CriterionInputs
    return CriterionInputs(calib=calib)


def test_units_at_both_granularities():
    model = tiny(transformer_layers_per_block=2)
    modules, blocks = find_units(model), find_units(model, "block")
    attn = [u for u in modules if u.kind == "attn"]
    assert len(attn) == 3 * 2 + 1 + 3 * 3 and len([u for u in blocks if u.kind == "block"]) == 2 * len(attn)
    assert [u.path for u in blocks if u.kind == "block"][:2] == ["down_blocks.0.attentions.0.transformer_blocks.0",
                                                                  "down_blocks.0.attentions.0.transformer_blocks.1"]
    # A Transformer2D saves its blocks plus its norm, proj_in and proj_out; a ResNet keeps its conv_shortcut.
    by = {u.path: u for u in blocks}
    t2d = model.get_submodule("down_blocks.0.attentions.0")
    extra = sum(p.numel() for n, p in t2d.named_parameters() if not n.startswith("transformer_blocks."))
    assert {u.path: u for u in modules}["down_blocks.0.attentions.0"].params == extra + sum(
        by[f"down_blocks.0.attentions.0.transformer_blocks.{b}"].params for b in (0, 1))
    res = {u.path: u for u in modules}["up_blocks.1.resnets.0"]
    assert res.shortcut and res.params == params(model.up_blocks[1].resnets[0]) - params(model.up_blocks[1].resnets[0].conv_shortcut)
    assert {u.stage for u in modules} == {f"down_blocks.{i}" for i in range(4)} | {f"up_blocks.{i}" for i in range(4)} | {"mid_block"}


# ---------------------------------------------------------------- output-loss, knapsack, other criteria
def test_output_loss_score_is_the_removed_networks_output_mse_and_knapsack_reaches_the_target():
    model = tiny()
    latents, cond = data()
    small, report = prune_layers(model, criterion="output-loss", target_params=0.3, images=latents, cond=cond, calib_size=8)
    assert report.params_after <= 0.7 * report.params_before and report.params_after == params(small)
    assert sorted(small.config.removed) == sorted(report.removed)
    stages = {u.stage for u in report.units}
    kept = {u.stage for u in report.units if u.path not in report.removed}
    assert stages - kept <= {"mid_block"}  # every down / up block keeps a unit
    # A batched-masking score is the output MSE of the network built without that unit (calibration by hand).
    calib = make_calibration(latents, latent_schedule(), size=8, seed=0, cond=cond)
    unit = report.units[5].path
    single = remove_units(model, [unit])
    with torch.no_grad():
        args = (calib.x_t, calib.t.float(), calib.cond["encoder_hidden_states"])
        mse = (single(*args) - model(*args)).double().pow(2).mean().item()
    assert report.scores[unit] == pytest.approx(mse, rel=1e-6)


def _brute_force(scores, costs, target, groups):
    """The least summed score over every subset reaching the target that leaves each group a unit (None: none)."""
    n, best = len(scores), None
    for mask in range(1 << n):
        chosen = [i for i in range(n) if mask >> i & 1]
        whole = any(all(i in chosen for i in range(n) if groups[i] == lab) for lab in set(groups) - {None})
        if not whole and sum(costs[i] for i in chosen) >= target:
            total = sum(scores[i] for i in chosen)
            best = total if best is None else min(best, total)
    return best


def test_grouped_knapsack_is_exact_against_brute_force():
    binding = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        n = 11
        costs = torch.randint(1, 20, (n,), generator=g).tolist()
        groups = [["a", "b", "c", None][int(i)] for i in torch.randint(0, 4, (n,), generator=g)]
        # group a is cheap to remove: the unconstrained optimum tends to take all of it
        scores = [float(v) * (0.05 if lab == "a" else 1.0) for v, lab in zip(torch.rand(n, generator=g), groups)]
        target = sum(costs) // 2
        best = _brute_force(scores, costs, target, groups)
        if best is None:
            with pytest.raises(ValueError, match="whole stage"):
                knapsack(scores, costs, target, groups=groups)
            continue
        chosen = knapsack(scores, costs, target, groups=groups)
        assert sum(costs[i] for i in chosen) >= target
        assert sum(scores[i] for i in chosen) == pytest.approx(best, abs=1e-12)
        binding += chosen != knapsack(scores, costs, target)
    assert binding >= 2  # the constraint changed the answer in some draws: the test is not vacuous


def test_macs_target_and_block_granularity():
    model = tiny(transformer_layers_per_block=2)
    latents, cond = data()
    small, report = prune_layers(model, criterion="output-loss", target_macs=0.2, granularity="block",
                                 images=latents, cond=cond, calib_size=4)
    assert report.macs_after <= 0.8 * report.macs_before
    assert any(".transformer_blocks." in p for p in small.config.removed) or all(u.kind == "res" for u in report.units if u.path in report.removed)
    assert all(u.kind in ("res", "block") for u in report.units)


@pytest.mark.parametrize("criterion", ["random", "taylor", "handcrafted"])
def test_other_criteria_reach_the_target(criterion):
    model = tiny()
    latents, cond = data()
    options = dict(batch_size=4, micro_batch=4, max_timesteps=2) if criterion == "taylor" else {}
    small, report = prune_layers(model, criterion=criterion, target_params=0.25, images=latents, cond=cond, **options)
    assert report.params_after <= 0.75 * report.params_before
    assert set(small.config.removed) == set(report.removed)
    if criterion == "taylor":
        assert all(v > 0 for v in report.scores.values())
        assert all(p.grad is None for p in model.parameters())  # the caller's grads untouched
        # micro-batches smaller than the batch split each timestep's batch: the same gradient, the same scores
        _, split = prune_layers(model, criterion=criterion, target_params=0.25, images=latents, cond=cond,
                                **{**options, "micro_batch": 3})
        assert split.scores == pytest.approx(report.scores, rel=1e-4)
    if criterion == "handcrafted":  # BK-SDM-Base's removals come first
        assert report.removed[0].startswith("down_blocks.") and report.removed[0].endswith(".1")


def test_pruned_unet_saves_and_reloads(tmp_path):
    model = tiny()
    latents, cond = data()
    small, _ = prune_layers(model, criterion="random", target_params=0.2, images=latents, cond=cond)
    bk, _ = prune_layers(model, criterion="handcrafted", architecture="bk-sdm-small")
    for name, net in (("pruned", small), ("bk", bk)):
        folder = tmp_path / name
        folder.mkdir()
        config, weights = component_config(net)
        assert (DIFFPRUNE_CONFIG in config) == (name == "pruned")  # BK-SDM is a plain diffusers config
        (folder / "config.json").write_text(json.dumps(config))
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / weights)
        back = load_component(folder)
        assert back.config == net.config
        torch.testing.assert_close(forward(back), forward(net), rtol=0, atol=0)


# ---------------------------------------------------------------- additivity
def test_additivity_report_runs_on_the_sd_unet():
    model = tiny()
    latents, cond = data()
    calib = make_calibration(latents, latent_schedule(), size=4, seed=0, cond=cond)
    units = find_units(model)[:10]
    scores = LAYER_CRITERIA["output-loss"](model, units, _inputs(calib))
    report = additivity_report(model, calib, {"output-loss": scores}, sizes=(1, 3), per_size=5, seed=0)
    single = [m for s, m in zip(report["subsets"], report["measured"]) if len(s) == 1]
    assert single == pytest.approx([scores[s[0]] for s in report["subsets"] if len(s) == 1], rel=1e-9)
    stats = report["criteria"]["output-loss"]["stats"]["3"]
    assert stats["n"] == 5 and stats["pearson"] is not None


# ---------------------------------------------------------------- knapsack with stages, errors
def test_knapsack_keeps_one_unit_per_group():
    scores, costs = [1.0, 1.0, 5.0, 5.0], [10, 10, 10, 10]
    assert knapsack(scores, costs, 20) == [0, 1]
    assert knapsack(scores, costs, 20, groups=["a", "a", "b", "b"]) == [0, 2]
    assert greedy(scores, costs, 20, groups=["a", "a", "b", "b"]) == [0, 2]
    assert knapsack(scores, costs, 20, groups=["a", "a", None, None]) == [0, 2]
    with pytest.raises(ValueError, match="only reachable by removing a whole stage"):
        check_reachable(costs, 30, "params", groups=["a", "a", "b", "b"])


def test_target_only_reachable_by_removing_a_stage_fails_before_any_work(monkeypatch):
    model = tiny()
    latents, cond = data()
    units = find_units(model)
    total = params(model)
    removable = sum(u.params for u in units) / total
    monkeypatch.setitem(LAYER_CRITERIA, "output-loss", lambda *a: pytest.fail("scored before the check"))
    spec = LayerPruning(target_params=round(removable - 0.01, 3))
    with pytest.raises(ValueError, match="only reachable by removing a whole stage"):
        check_target(model, spec)
    with pytest.raises(ValueError, match="only reachable by removing a whole stage"):
        prune_layers(model, spec, images=latents, cond=cond)


def test_errors_are_one_line_and_early():
    model = tiny()
    latents, cond = data()
    with pytest.raises(ValueError, match="unknown handcrafted architecture 'bk-sdm-huge'"):
        LayerPruning(criterion="handcrafted", architecture="bk-sdm-huge")
    with pytest.raises(ValueError, match="architecture 'bk-sdm-base' applies to criterion 'handcrafted'"):
        LayerPruning(criterion="output-loss", architecture="bk-sdm-base")
    with pytest.raises(ValueError, match="is fixed: give no target_params"):
        LayerPruning(criterion="handcrafted", architecture="bk-sdm-base", target_params=0.3)
    with pytest.raises(ValueError, match="granularity must be one of"):
        LayerPruning(target_params=0.3, granularity="layer")
    spec = LayerPruning(criterion="handcrafted", architecture="bk-sdm-tiny")
    sd2 = tiny(use_linear_projection=True)
    with pytest.raises(ValueError, match=r"dense SD-v1 U-Net; this U-Net differs: use_linear_projection=True"):
        prune_layers(sd2, spec)
    with pytest.raises(ValueError, match="transformer_layers_per_block"):
        check_target(tiny(transformer_layers_per_block=[1, 2, 2, 1]), spec)
    with pytest.raises(ValueError, match="a pruned U-Net"):
        prune_layers(remove_units(model, ["up_blocks.0.resnets.1"]), spec)
    ddpm = UNet(ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), norm_groups=2))
    with pytest.raises(ValueError, match="SD-v1 U-Net .* got UNet"):
        prune_layers(ddpm, spec)
    with pytest.raises(ValueError, match="give cond="):
        prune_layers(model, target_params=0.2, images=latents)
    with pytest.raises(ValueError, match=r"cond\['encoder_hidden_states'\] has shape \(3, 3, 6\)"):
        prune_layers(model, target_params=0.2, images=latents, cond={"encoder_hidden_states": cond["encoder_hidden_states"][:3]})
    with pytest.raises(ValueError, match=r"latents must be a \(N, 4, h, w\)"):
        prune_layers(model, target_params=0.2, images=latents[:, :3], cond=cond)
    with pytest.raises(ValueError, match="granularity 'block' applies to SD U-Nets"):
        find_units(ddpm, "block")


def test_sdxl_like_unet_block_granularity_with_added_conditions():
    """SDXL's layout in small (a ResNet-only first level, 2 transformer layers per module, linear projections,
    text_time micro-conditioning): units are single BasicTransformerBlocks and the nested added_cond_kwargs
    ride along in the calibration set."""
    torch.manual_seed(0)
    cfg = UNetConditionConfig.from_diffusers(dict(
        block_out_channels=[8, 16], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], transformer_layers_per_block=[1, 2], layers_per_block=2,
        attention_head_dim=[2, 2], cross_attention_dim=D, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=5 + 6 * 4,
        sample_size=8))
    model = UNet2DConditionModel(cfg).eval()
    latents, cond = data()
    cond["added_cond_kwargs"] = {"text_embeds": torch.randn(4, 5), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]] * 4)}
    small, report = prune_layers(model, criterion="output-loss", target_params=0.2, granularity="block",
                                 images=latents, cond=cond, calib_size=4)
    blocks = [u.path for u in report.units if u.kind == "block"]
    assert len(blocks) == 2 * 2 + 3 * 2 + 2  # down level 1: 2 modules, up block 0: 3 modules, mid: 1; 2 layers each
    assert report.params_after <= 0.8 * report.params_before
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = small(x, torch.tensor([3]), cond["encoder_hidden_states"][:1],
                    added_cond_kwargs={k: v[:1] for k, v in cond["added_cond_kwargs"].items()})
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="dense SD-v1 U-Net; this U-Net differs"):
        prune_layers(model, criterion="handcrafted", architecture="bk-sdm-base")


def test_calibration_conditions_from_a_prompts_file(tmp_path):
    """Captions of a prompts file through the pipeline's text tower give the cond of prune_layers; an empty
    file is a one-line error before any encoding."""
    from common.errors import UserError
    from models.pipelines import load_pipeline
    from tiny_pipeline import write_tiny_pipeline

    pipe = load_pipeline(write_tiny_pipeline(tmp_path / "pipe"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a blue square  \n")
    cond = prompt_conditions(pipe, prompts)
    assert list(cond) == ["encoder_hidden_states"] and cond["encoder_hidden_states"].shape[0] == 2
    torch.testing.assert_close(cond["encoder_hidden_states"][1], prompt_conditions(pipe, ["a blue square"])["encoder_hidden_states"][0])
    c = pipe.unet.config
    latents = torch.randn(2, c.in_channels, c.sample_size, c.sample_size)
    small, report = prune_layers(pipe.unet, criterion="output-loss", target_params=0.2, images=latents, cond=cond,
                                 calib_size=2)
    assert report.params_after <= 0.8 * report.params_before
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="holds no caption"):
        prompt_conditions(pipe, empty)


def test_latent_schedule_is_sds():
    from diffusion.schedulers.base import make_alphas_cumprod
    from pruning.layers.sd import SD_SCHEDULER
    torch.testing.assert_close(latent_schedule().alpha_bars.float(), make_alphas_cumprod(SD_SCHEDULER))
    assert float(latent_schedule().alpha_bars[-1]) == pytest.approx(0.0047, abs=1e-4)  # SD's alpha_bar_999
