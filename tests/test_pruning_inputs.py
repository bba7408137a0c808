"""One input check for every pruning method (pruning/inputs.py), before any work: a
model with a non-finite weight or on the meta device, and data that is empty or does not match the model
(another resolution or channel count than the example inputs) are refused in one line naming the tensor or
both shapes, and the caller's model is left as it was."""
from __future__ import annotations

import pytest
import torch

import prune as prune_script
from models.checkpoint import save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from pruning import prune
from pruning.layers import prune_layers
from pruning.layers.criteria import LAYER_CRITERIA
from pruning.spec import GRADIENT_METHODS, METHODS
from tests.script_helpers import SMALL, run_cli

TENSORS = ("down.0.block.0.temb_proj.weight", "temb.dense.1.bias", "conv_in.weight")


def small(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(ModelConfig(**SMALL)).eval()


def images(n: int = 2, c: int = 3, s: int = 16) -> torch.Tensor:
    return torch.rand(n, c, s, s) * 2 - 1


def snapshot(model: UNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: UNet, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    # nan != nan: compare the bits, so a poisoned tensor counts as unchanged when it is the same
    return after.keys() == before.keys() and all(
        after[k].shape == v.shape and torch.equal(after[k].view(torch.int32), v.view(torch.int32))
        for k, v in before.items())


def channel_options(method: str, data: torch.Tensor | None = None) -> dict:
    if method in GRADIENT_METHODS:
        return dict(data=images() if data is None else data, max_timesteps=2, micro_batch=2)
    return {}


def poison(model: UNet, name: str, value: float) -> None:
    with torch.no_grad():
        model.state_dict()[name].view(-1)[1] = value


# ------------------------------------------------------------------------------------ non-finite weights
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, value", [(TENSORS[0], float("inf")), (TENSORS[1], float("nan"))])
def test_every_channel_method_refuses_a_non_finite_weight(method, name, value):
    model = small()
    poison(model, name, value)
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"non-finite.*'{name}'") as err:
        prune(model, model.example_inputs(), method=method, ratio=0.3, progress=False, **channel_options(method))
    assert "\n" not in str(err.value)
    assert unchanged(model, before)


@pytest.mark.parametrize("criterion", tuple(LAYER_CRITERIA))
def test_every_layer_criterion_refuses_a_non_finite_weight(criterion):
    model = small()
    poison(model, TENSORS[2], float("-inf"))
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"non-finite.*'{TENSORS[2]}'"):
        prune_layers(model, criterion=criterion, target_params=0.2, images=images(4), calib_size=4)
    assert unchanged(model, before)


def test_prune_script_magnitude_refuses_a_checkpoint_with_an_inf_weight(tmp_path, capsys):
    """The case that was seen: prune.py --method magnitude wrote a pruned checkpoint still holding inf."""
    model = small()
    poison(model, "temb.dense.1.bias", float("inf"))
    path = tmp_path / "broken.pt"
    save_checkpoint(path, config=model.config, state_dict=model.state_dict())
    out = tmp_path / "runs"
    status, _, err = run_cli(prune_script, ["--model", str(path), "--method", "magnitude", "--num-samples", "0",
                                            "--out", str(out)], capsys)
    assert status == 2
    assert err.count("\n") == 1 and "'temb.dense.1.bias'" in err and "non-finite" in err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------ data that does not fit
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 32, 32), (2, 1, 16, 16)])
def test_gradient_data_of_another_shape_than_the_example_inputs_is_refused(method, shape):
    model = small()
    before = snapshot(model)
    with pytest.raises(ValueError) as err:
        prune(model, model.example_inputs(), method=method, progress=False,
              **channel_options(method, torch.rand(*shape) * 2 - 1))
    assert str(shape) in str(err.value) and "(1, 3, 16, 16)" in str(err.value)  # both shapes named
    assert "\n" not in str(err.value)
    assert unchanged(model, before)


@pytest.mark.parametrize("criterion", ["output-loss", "taylor"])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 1, 16, 16)])
def test_layer_images_of_another_shape_than_the_model_are_refused(criterion, shape):
    model = small()
    before = snapshot(model)
    with pytest.raises(ValueError) as err:
        prune_layers(model, criterion=criterion, target_params=0.2, images=torch.rand(*shape) * 2 - 1, calib_size=4)
    assert str(shape) in str(err.value) and "(1, 3, 16, 16)" in str(err.value)
    assert unchanged(model, before)


def test_empty_data_is_refused_in_one_line():
    model = small()
    with pytest.raises(ValueError, match=r"data is empty: \(0, 3, 16, 16\)"):
        prune(model, model.example_inputs(), method="taylor", data=images(0), batch_size=1, progress=False)
    with pytest.raises(ValueError, match=r"images is empty: \(0, 3, 16, 16\)"):
        prune_layers(model, criterion="output-loss", target_params=0.2, images=images(0), calib_size=4)


# ------------------------------------------------------------------------------------ a model without data
@pytest.mark.parametrize("method", ["magnitude", "taylor"])
def test_a_meta_device_model_is_refused_in_one_line(method):
    with torch.device("meta"):
        model = UNet(ModelConfig(**SMALL))
    example = (torch.zeros(1, 3, 16, 16), torch.ones(1))
    with pytest.raises(ValueError, match=r"meta device.*'temb.dense.0.weight'") as err:
        prune(model, example, method=method, progress=False, **channel_options(method))
    assert "\n" not in str(err.value)
    assert next(model.parameters()).is_meta
    with pytest.raises(ValueError, match=r"meta device"):
        prune_layers(model, criterion="random", target_params=0.2)
