"""Layer pruning (pruning/layers): removable units, the criteria, knapsack selection, the additivity report,
and saving / reloading a layer-pruned network through models.load."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from diffusion.schedule import Schedule
from models import load
from models.checkpoint import save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet, removable_units
from pruning.layers import find_units, make_calibration, mask_units, output_losses, prune_layers, remove_units
from pruning.layers.additivity import additivity_report, format_report
from reports.plots import plot_additivity
from pruning.layers.criteria import LAYER_CRITERIA, CriterionInputs, handcrafted_order
from pruning.layers.knapsack import greedy, knapsack, ranked

CONFIG = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1,
                     norm_groups=2)


def small_model(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(CONFIG).eval()
    with torch.no_grad():  # default init leaves some branches nearly silent; make every unit matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g).float()


def calibration(n: int = 6):
    g = torch.Generator().manual_seed(3)
    return make_calibration(torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, Schedule(), size=n, seed=0)


def test_units_of_the_small_unet():
    model = small_model()
    units = find_units(model)
    assert [u.path for u in units] == removable_units(CONFIG) == [
        "down.0.block.0", "down.1.block.0", "down.1.attn.0", "mid.block_1", "mid.attn_1", "mid.block_2",
        "up.1.block.0", "up.1.attn.0", "up.1.block.1", "up.1.attn.1", "up.0.block.0", "up.0.block.1"]
    # Removing every unit leaves exactly the parameters not in any branch.
    small = remove_units(model, [u.path for u in units])
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters()) - sum(u.params for u in units)
    assert {u.path for u in units if u.shortcut} == {"down.1.block.0", "up.1.block.0", "up.1.block.1",
                                                     "up.0.block.0", "up.0.block.1"}


def test_zero_branch_has_zero_output_loss_and_removing_it_changes_nothing():
    """A ResBlock whose conv2 is zero and an attention block whose proj_out is zero contribute nothing: their
    output-loss is 0, removing them leaves the output unchanged, and the rebuilt network equals the masked one."""
    model = small_model()
    with torch.no_grad():
        for name in ("up.1.block.1.conv2", "down.1.attn.0.proj_out", "mid.block_1.conv2"):
            model.get_submodule(name).weight.zero_()
            model.get_submodule(name).bias.zero_()
    units = find_units(model)
    scores = LAYER_CRITERIA["output-loss"](model, units, CriterionInputs(calib=calibration(), batch_size=24))
    for path in ("up.1.block.1", "down.1.attn.0", "mid.block_1"):
        assert scores[path] < 1e-12
    assert all(scores[u.path] > 1e-6 for u in units if u.path not in ("up.1.block.1", "down.1.attn.0", "mid.block_1"))
    x, t = inputs()
    with torch.no_grad():
        dense = model(x, t)
        smaller = remove_units(model, ["up.1.block.1", "down.1.attn.0", "mid.block_1"])
        torch.testing.assert_close(smaller(x, t), dense, rtol=0, atol=1e-6)
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in model.parameters())


def test_rebuilt_network_equals_the_masked_one_and_reloads(tmp_path):
    model = small_model()
    x, t = inputs()
    removed = ["down.0.block.0", "mid.attn_1", "up.1.block.0", "up.0.block.1"]
    with torch.no_grad(), mask_units(model, {p: torch.ones(4, dtype=torch.bool) for p in removed}):
        masked = model(x, t)
    small = remove_units(model, removed)
    with torch.no_grad():
        torch.testing.assert_close(small(x, t), masked, rtol=0, atol=1e-6)
        assert (small(x, t) - model(x, t)).abs().max() > 1e-3  # the removed units did matter
    assert model.config.removed == ()  # the caller's model is untouched
    save_checkpoint(tmp_path / "small.pt", config=small.config, state_dict=small.state_dict())
    again = load(tmp_path / "small.pt")
    assert again.config.removed == tuple(sorted(removed))
    with torch.no_grad():
        torch.testing.assert_close(again(x, t), masked, rtol=0, atol=1e-6)
    # Per-sample masks: sample 0 runs the dense net, sample 1 the pruned one, in one batch.
    with torch.no_grad(), mask_units(model, {p: torch.tensor([False, True, False, True]) for p in removed}):
        mixed = model(x, t)
    with torch.no_grad():
        dense = model(x, t)
    torch.testing.assert_close(mixed[[0, 2]], dense[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[[1, 3]], masked[[1, 3]], rtol=0, atol=1e-6)


def test_loader_names_unknown_removed_units(tmp_path):
    model = small_model()
    cfg = model.config.to_dict()
    cfg["removed"] = ["down.0.block.0", "down.5.block.0"]
    torch.save({"format": "diffprune", "format_version": 1, "model_config": cfg, "state_dict": model.state_dict()},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"down\.5\.block\.0"):
        load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="already removed"):
        remove_units(remove_units(model, ["mid.attn_1"]), ["mid.attn_1"])
    with pytest.raises(ValueError, match="not a removable unit"):
        remove_units(model, ["mid.block_3"])


def test_batched_subset_losses_equal_one_model_per_subset():
    model = small_model()
    calib = calibration(4)
    subsets = [frozenset({"down.0.block.0"}), frozenset({"mid.attn_1", "up.0.block.1"}), frozenset()]
    batched = output_losses(model, calib, subsets, batch_size=8)  # two replicas per pass
    with torch.no_grad():
        ref = model(calib.x_t, calib.t.float())
        for s, value in zip(subsets, batched):
            small = remove_units(model, s) if s else model
            expected = (small(calib.x_t, calib.t.float()) - ref).double().pow(2).mean().item()
            assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert batched[2].item() < 1e-12


def test_knapsack_beats_greedy_on_a_hand_instance():
    # target 10: greedy takes unit 0 first (best score per cost, 1.0 < 1.1), then needs another -> 6 + 5.5 = 11.5;
    # the optimum is units 1 + 2: cost 10, score 11.
    scores, costs = [6.0, 5.5, 5.5], [6, 5, 5]
    assert knapsack(scores, costs, 10) == [1, 2]
    assert greedy(scores, costs, 10) == [0, 1]
    assert ranked(scores, costs, 10) == [1, 2]


def test_knapsack_is_optimal_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        m = 8
        scores = torch.rand(m, generator=g).tolist()
        costs = torch.randint(1, 50, (m,), generator=g).tolist()
        target = int(torch.randint(1, sum(costs) + 1, (1,), generator=g))
        best = min(sum(scores[i] for i in s) for k in range(m + 1) for s in itertools.combinations(range(m), k)
                   if sum(costs[i] for i in s) >= target)
        chosen = knapsack(scores, costs, target)
        assert sum(costs[i] for i in chosen) >= target
        assert sum(scores[i] for i in chosen) == pytest.approx(best, abs=1e-12)


def test_unreachable_target_is_an_error_before_scoring(monkeypatch):
    model = small_model()
    called = []
    monkeypatch.setitem(LAYER_CRITERIA, "random", lambda *a: called.append(1) or {})
    with pytest.raises(ValueError, match="not reachable"):
        prune_layers(model, criterion="random", target_params=0.99)
    assert not called
    with pytest.raises(ValueError, match="criterion must be one of"):
        prune_layers(model, criterion="magnitude", target_params=0.3)
    with pytest.raises(ValueError, match="exactly one"):
        prune_layers(model, criterion="random", target_params=0.3, target_macs=0.3)
    with pytest.raises(ValueError, match="needs data"):
        prune_layers(model, criterion="output-loss", target_params=0.3)


@pytest.mark.parametrize("what", ["params", "macs"])
def test_prune_layers_reaches_the_target(what):
    model = small_model()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    kw = {"target_params": 0.3} if what == "params" else {"target_macs": 0.3}
    small, report = prune_layers(model, criterion="output-loss", images=images, calib_size=8, **kw)
    before, after = (report.params_before, report.params_after) if what == "params" else (report.macs_before, report.macs_after)
    assert after <= 0.7 * before
    assert sum(p.numel() for p in small.parameters()) == report.params_after
    removed_cost = sum(u.cost(what) for u in report.units if u.path in report.removed)
    assert before - after == removed_cost  # unit costs are exactly additive
    # The knapsack chose the cheapest set in summed score among all sets that reach the target.
    units = report.units
    need = int(-(-0.3 * before // 1))
    best = min(sum(report.scores[u.path] for u in s) for k in range(len(units) + 1)
               for s in itertools.combinations(units, k) if sum(u.cost(what) for u in s) >= need)
    assert sum(report.scores[p] for p in report.removed) == pytest.approx(best)


def test_criteria_random_handcrafted_taylor():
    model = small_model()
    units = find_units(model)
    r1 = LAYER_CRITERIA["random"](model, units, CriterionInputs(seed=1))
    assert r1 == LAYER_CRITERIA["random"](model, units, CriterionInputs(seed=1))
    assert r1 != LAYER_CRITERIA["random"](model, units, CriterionInputs(seed=2))
    assert handcrafted_order(model)[:6] == ["up.1.block.1", "up.1.attn.1", "up.0.block.1", "mid.attn_1",
                                            "mid.block_2", "mid.block_1"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    taylor = LAYER_CRITERIA["taylor"](model, units, CriterionInputs(x0=x0, thr=0.0, max_timesteps=3, micro_batch=2))
    assert all(v > 0 for v in taylor.values())
    assert all(p.grad is None for p in model.parameters())  # the caller's grads are left as they were


def test_additivity_report(tmp_path):
    """Subsets of one unit measure exactly their own score (slope 1, r = 1); the report saves and plots."""
    model = small_model()
    calib = calibration(4)
    units = find_units(model)
    scores = {"output-loss": LAYER_CRITERIA["output-loss"](model, units, CriterionInputs(calib=calib)),
              "random": LAYER_CRITERIA["random"](model, units, CriterionInputs(seed=0))}
    report = additivity_report(model, calib, scores, sizes=(1, 3), per_size=5, seed=0)
    ones = report["criteria"]["output-loss"]["stats"]["1"]
    assert ones["pearson"] == pytest.approx(1.0, abs=1e-6) and ones["slope"] == pytest.approx(1.0, abs=1e-4)
    assert len(report["subsets"]) == 10 and all(len(s) == 3 for s in report["subsets"][5:])
    json.dumps(report)
    assert "output-loss" in format_report(report)
    plot_additivity(report, tmp_path / "additivity.png")
    assert (tmp_path / "additivity.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("order", ["channel-then-layer", "layer-then-channel"])
def test_channel_and_layer_pruning_compose(tmp_path, order):
    """Channel pruning followed by layer pruning (and the reverse) saves, reloads through models.load and
    fine-tunes a step with train.py."""
    import train
    from pruning import prune

    model = small_model()
    example = model.example_inputs()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    x, t = inputs()
    if order == "channel-then-layer":
        model, _ = prune(model, example, method="magnitude", ratio=0.5, progress=False)
        model, report = prune_layers(model, criterion="output-loss", target_params=0.3, images=images, calib_size=4)
        assert report.units[0].params < find_units(small_model())[0].params  # measured at the pruned widths
    else:
        model, report = prune_layers(model, criterion="output-loss", target_params=0.3, images=images, calib_size=4)
        model, _ = prune(model, example, method="magnitude", ratio=0.5, progress=False)
    assert model.config.removed == tuple(sorted(report.removed)) and model.config.widths
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, config=model.config, state_dict=model.state_dict())
    again = load(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t), model.eval()(x, t), rtol=0, atol=1e-6)
    run = train.main(train.TrainConfig(model=str(path), steps=1, batch_size=2, heldout_images=0, ckpt_every=1,
                                       out=str(tmp_path / "runs")))
    tuned = load(run / "model.pt")
    assert tuned.config.removed == model.config.removed and tuned.config.widths == model.config.widths


def test_prune_script_layer_method(tmp_path, capsys):
    """prune.py --method layer writes the layer-pruned checkpoint, its report and the additivity report; bad
    targets and unknown units are one-line errors before any work."""
    import prune
    from common import cli

    model = small_model()
    src = tmp_path / "teacher.pt"
    save_checkpoint(src, config=model.config, state_dict=model.state_dict())
    argv = ["--model", str(src), "--method", "layer", "--criterion", "output-loss", "--target-params", "0.3",
            "--calib-size", "4", "--additivity-subsets", "2", "--num-samples", "2", "--sample-steps", "2",
            "--out", str(tmp_path / "runs")]
    run = prune.main(prune.parse_args(argv))
    for name in ("pruned.pt", "report.json", "units.txt", "additivity.json", "additivity.png", "samples_after.png"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    small = load(run / "pruned.pt")
    assert list(small.config.removed) == sorted(report["removed"])
    assert report["params_after"] == sum(p.numel() for p in small.parameters()) <= 0.7 * report["params_before"]
    capsys.readouterr()
    assert cli.run(prune.main, prune.parse_args, argv[:7] + ["0.99"] + argv[8:]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the target is not reachable") and "\n" not in err
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written for the failed run
    cfg = small.config.to_dict()
    cfg["removed"] = ["mid.attn_9"]
    torch.save({"format": "diffprune", "format_version": 1, "model_config": cfg, "state_dict": small.state_dict()},
               tmp_path / "bad.pt")
    assert cli.run(prune.main, prune.parse_args, ["--model", str(tmp_path / "bad.pt")] + argv[2:]) == 2
    assert "mid.attn_9" in capsys.readouterr().err


def test_given_scores_and_solvers():
    """Scores computed once (e.g. for an additivity report) give the same pruning without a second pass; greedy
    and ranked reach the target too, and a score missing for a unit is an error."""
    model = small_model()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    small, report = prune_layers(model, criterion="output-loss", target_params=0.3, images=images, calib_size=4)
    again, report2 = prune_layers(model, criterion="output-loss", target_params=0.3, scores=report.scores)
    assert report2.removed == report.removed and again.config == small.config
    for solver in ("greedy", "ranked"):
        _, r = prune_layers(model, criterion="output-loss", target_params=0.3, scores=report.scores, solver=solver)
        assert r.params_after <= 0.7 * r.params_before and r.solver == solver
    with pytest.raises(ValueError, match="no value for units"):
        prune_layers(model, criterion="output-loss", target_params=0.3, scores={"mid.attn_1": 0.0})
