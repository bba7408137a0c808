"""Check what can be checked first, for every method: what a spec asks of the model's groups fails
before the gradient pass and before prune.py's sample grids; flags out of range fail at parse time, naming
the flag."""
from __future__ import annotations

import pytest
import torch

import prune as prune_script
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from pruning import api, prune
from pruning.spec import METHODS
from tests.script_helpers import SMALL, run_cli, small_checkpoint


def small() -> UNet:
    torch.manual_seed(0)
    return UNet(ModelConfig(**SMALL)).eval()


def no_gradient_pass(*args, **kwargs):
    raise AssertionError("the gradient pass ran before the spec was checked against the groups")


@pytest.mark.parametrize("method", METHODS)
def test_an_infeasible_ratio_fails_before_the_gradient_pass(method, monkeypatch):
    monkeypatch.setattr(api, "accumulate_gradients", no_gradient_pass)
    model = small()
    data = {"data": torch.zeros(2, 3, 16, 16)} if method in api.GRADIENT_METHODS else {}
    with pytest.raises(ValueError, match=r"ratio 0.999 is not feasible: group .* leaves none") as err:
        prune(model, model.example_inputs(), method=method, ratio=0.999, progress=False, **data)
    assert "\n" not in str(err.value)


def test_a_round_to_wider_than_every_group_is_an_error():
    model = small()
    with pytest.raises(ValueError, match=r"round_to=1000 changes no width: .*widest has 32 channels"):
        prune(model, model.example_inputs(), method="magnitude", round_to=1000, progress=False)


def no_sampling(*args, **kwargs):
    raise AssertionError("prune.py drew a sample grid before checking the spec")


@pytest.mark.parametrize("argv, message", [
    (["--method", "diff-pruning", "--ratio", "0.999", "--batch-size", "2"], "ratio 0.999 is not feasible"),
    (["--method", "magnitude", "--round-to", "1000"], "round_to=1000 changes no width"),
])
def test_prune_script_checks_the_spec_before_the_sample_grid(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(prune_script, "sample", no_sampling)
    model = small_checkpoint(tmp_path / "m.pt")
    status, _, err = run_cli(prune_script, ["--model", str(model), "--out", str(tmp_path / "runs"), *argv], capsys)
    assert status == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("argv, flag", [
    (["--seed", str(2 ** 64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--sample-steps", "5000"], "--sample-steps"),
])
def test_prune_flags_out_of_range_are_named_at_parse_time(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        prune_script.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err


def test_calib_size_beyond_the_dataset_names_calib_size(tmp_path, capsys):
    model = small_checkpoint(tmp_path / "m.pt")
    status, _, err = run_cli(prune_script, ["--model", str(model), "--method", "layer", "--target-params", "0.2",
                                            "--calib-size", "100000000", "--num-samples", "0",
                                            "--out", str(tmp_path / "runs")], capsys)
    assert status == 2 and "--calib-size 100000000" in err and "--batch-size" not in err


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (48, 3, 3, 3)])
def test_a_mis_shaped_conv_in_is_reported_as_a_shape_mismatch_naming_it(tmp_path, shape):
    from models import PRESETS
    from models.loading import load

    torch.manual_seed(0)
    state = dict(UNet(PRESETS["tiny"]).state_dict())
    state["conv_in.weight"] = torch.zeros(shape)
    torch.save(state, tmp_path / "ddim.ckpt")  # a DDIM-codebase state dict: the architecture is read from it
    with pytest.raises(ValueError, match=rf"shape mismatch: conv_in.weight \({', '.join(map(str, shape))}\)") as err:
        load(str(tmp_path / "ddim.ckpt"))
    assert "GroupNorm" not in str(err.value) and "ch_mult" not in str(err.value)


def test_prune_script_checks_an_unreachable_target_before_the_sample_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prune_script, "sample", no_sampling)
    model = small_checkpoint(tmp_path / "m.pt")
    status, _, err = run_cli(prune_script, ["--model", str(model), "--method", "magnitude", "--target-params", "0.99",
                                            "--out", str(tmp_path / "runs")], capsys)
    assert status == 2 and "99.0% reduction of params is out of reach" in err


def test_prune_script_refuses_a_grid_larger_than_memory_before_loading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prune_script, "sample", no_sampling)
    model = small_checkpoint(tmp_path / "m.pt")
    status, _, err = run_cli(prune_script, ["--model", str(model), "--method", "magnitude", "--num-samples",
                                            "100000000", "--out", str(tmp_path / "runs")], capsys)
    assert status == 2 and "--num-samples 100000000" in err and "GiB" in err


def test_prune_script_draws_a_large_grid_in_batches(tmp_path, monkeypatch, capsys):
    batches = []

    def fake_sample(model, schedule, *, indices, image_shape, batch_size, **kw):
        batches.append(batch_size)
        return torch.zeros(len(indices), *image_shape)

    monkeypatch.setattr(prune_script, "sample", fake_sample)
    model = small_checkpoint(tmp_path / "m.pt")
    status, _, err = run_cli(prune_script, ["--model", str(model), "--method", "magnitude", "--num-samples", "200",
                                            "--out", str(tmp_path / "runs")], capsys)
    assert status == 0, err
    assert batches == [prune_script.GRID_BATCH] * 2  # before and after, each 64 images per forward
