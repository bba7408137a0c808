"""The pruning specs (pruning/spec.py ChannelPruning, pruning/layers/spec.py LayerPruning): every check's one-line
error, the defaults filled in where the method reads them, the JSON round trip, the keyword path being the spec
path, and prune.py's flags building the spec (an option the method does not read is an error)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import prune as prune_script
from models import PRESETS, UNet
from pruning import ChannelPruning, prune
from pruning.layers import LayerPruning
from pruning.spec import DEFAULTS, METHODS


@pytest.mark.parametrize("options, message", [
    (dict(method="ours"), r"method must be one of"),
    (dict(ratio=1.0), r"ratio \(the pruning ratio\) must be in \[0, 1\), got 1.0"),
    (dict(ratio=-0.1), r"ratio \(the pruning ratio\) must be in \[0, 1\)"),
    (dict(ratio=0.3, target_params=0.2), r"give ratio or a target .*not both"),
    (dict(target_params=0.2, target_macs=0.2), r"give target_params or target_macs, not both"),
    (dict(target_params=1.2), r"target_params must be a fraction in \(0, 1\), got 1.2"),
    (dict(thr=float("nan")), r"thr must be a finite number in \[0, 1\], got nan"),
    (dict(thr=1.5), r"thr must be in \[0, 1\], got 1.5"),
    (dict(method="magnitude", thr=0.9), r"thr applies to method 'diff-pruning' only: 'magnitude' reads no gradient"),
    (dict(method="taylor", thr=0.1), r"thr applies to method 'diff-pruning' only: 'taylor' uses every timestep"),
    (dict(method="random", batch_size=8), r"batch_size applies to the gradient methods .* only"),
    (dict(method="magnitude", micro_batch=8), r"micro_batch applies to the gradient methods"),
    (dict(method="scratch", max_timesteps=3), r"max_timesteps applies to the gradient methods"),
    (dict(max_timesteps=0), r"max_timesteps must be a whole number >= 1"),
    (dict(micro_batch=2.5), r"micro_batch must be a whole number >= 1, got 2.5"),
    (dict(scope="everywhere"), r"scope must be one of"),
    (dict(scoring="greedy"), r"scoring must be one of"),
    (dict(attn_grouping="fused"), r"attn_grouping must be one of"),
    (dict(head_mode="head"), r"head_mode must be one of"),
    (dict(attn_scale="half"), r"attn_scale must be one of"),
    (dict(round_to=0), r"round_to must be a whole number >= 1"),
    (dict(round_to=8, scope="global"), r"round_to applies to the local rule with head_mode 'channels'"),
    (dict(ignored="conv_out"), r"ignored must be a sequence of module paths"),
])
def test_channel_spec_errors(options, message):
    with pytest.raises(ValueError, match=message) as err:
        ChannelPruning(**options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    (dict(criterion="magnitude", target_params=0.3), r"criterion must be one of"),
    (dict(), r"give exactly one of target_params / target_macs"),
    (dict(target_params=0.3, target_macs=0.3), r"give exactly one of"),
    (dict(target_params=1.0), r"target_params must be a fraction in \(0, 1\)"),
    (dict(target_params=0.3, solver="best"), r"solver must be one of"),
    (dict(target_params=0.3, calib_size=0), r"calib_size must be a whole number >= 1"),
    (dict(target_params=0.3, calib_timesteps="log"), r"calib_timesteps must be one of"),
    (dict(target_params=0.3, thr=0.1), r"thr applies to criterion 'taylor' only"),
    (dict(target_params=0.3, criterion="random", batch_size=8), r"batch_size applies to criterion 'taylor' only"),
    (dict(target_params=0.3, criterion="taylor", thr=2.0), r"thr must be a number in \[0, 1\]"),
])
def test_layer_spec_errors(options, message):
    with pytest.raises(ValueError, match=message):
        LayerPruning(**options)


def test_defaults_are_filled_where_the_method_reads_them():
    d = ChannelPruning()
    assert (d.method, d.ratio, d.thr, d.batch_size, d.micro_batch) == ("diff-pruning", 0.3, 0.05, 128, 64)
    assert DEFAULTS["batch_size"] == 128  # the paper's gradient batch (its code: 128 CIFAR-10 images)
    m = ChannelPruning(method="magnitude")
    assert (m.thr, m.batch_size, m.micro_batch, m.max_timesteps) == (None, None, None, None)
    t = ChannelPruning(method="taylor")
    assert t.thr is None and t.gradient_thr == 0.0 and t.batch_size == 128
    assert ChannelPruning(target_params=0.4).ratio is None  # the target sets the ratio; none is recorded as asked
    assert LayerPruning(criterion="handcrafted", target_params=0.3).solver == "ranked"
    assert LayerPruning(criterion="taylor", target_params=0.3).thr == DEFAULTS["thr"]
    assert set(METHODS) == {"random", "magnitude", "taylor", "taylor-first-order", "diff-pruning", "scratch"}


@pytest.mark.parametrize("spec", [ChannelPruning(), ChannelPruning(method="random", ignored=("conv_out",), seed=3),
                                  ChannelPruning(method="taylor", target_macs=0.4, scope="global"),
                                  LayerPruning(criterion="taylor", target_params=0.2, max_timesteps=4)])
def test_specs_round_trip_through_json(spec):
    again = type(spec).from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    with pytest.raises(ValueError, match=r"has no option\(s\) \['colour'\]"):
        type(spec).from_dict({**spec.to_dict(), "colour": 1})


def test_applicable_drops_what_the_method_does_not_read():
    spec = ChannelPruning.applicable(method="magnitude", ratio=0.5, thr=0.05, micro_batch=4, batch_size=2)
    assert spec == ChannelPruning(method="magnitude", ratio=0.5)
    assert LayerPruning.applicable(criterion="random", target_params=0.3, thr=0.05) == LayerPruning(
        criterion="random", target_params=0.3)


def test_the_keyword_path_is_the_spec_path():
    """prune(model, x, method=..., data=x0) builds the spec (batch size from the data) and prunes exactly as
    prune(model, x, spec, x0); a spec and keywords at once, or data of another size, are errors."""
    config = PRESETS["tiny"]
    data = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = []
    for call in ("keywords", "spec"):
        torch.manual_seed(0)
        model = UNet(config).eval()
        if call == "keywords":
            model, report = prune(model, model.example_inputs(), method="diff-pruning", ratio=0.4, data=data,
                                  max_timesteps=3, micro_batch=2, progress=False)
        else:
            spec = ChannelPruning(ratio=0.4, batch_size=2, max_timesteps=3, micro_batch=2)
            model, report = prune(model, model.example_inputs(), spec, data, progress=False)
        results.append((model.state_dict(), report))
    (a, ra), (b, rb) = results
    assert ra.spec == rb.spec and ra.spec.batch_size == 2
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(ra.kept[m][r], rb.kept[m][r]) for m in ra.kept for r in ra.kept[m])
    model = UNet(config).eval()
    with pytest.raises(TypeError, match="not both"):
        prune(model, model.example_inputs(), ChannelPruning(), data, ratio=0.3)
    with pytest.raises(ValueError, match=r"data holds 2 images but the spec's gradient batch is batch_size=128"):
        prune(model, model.example_inputs(), ChannelPruning(), data)


def test_the_taylor_row_is_diff_pruning_at_threshold_zero():
    """The paper's Taylor (method "taylor") keeps exactly what diff-pruning at thr 0 keeps; the first-order
    variant is another criterion."""
    config = PRESETS["tiny"]
    data = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kept = {}
    for name, spec in {"taylor": ChannelPruning(method="taylor", batch_size=2, max_timesteps=3),
                       "thr0": ChannelPruning(thr=0.0, batch_size=2, max_timesteps=3),
                       "first": ChannelPruning(method="taylor-first-order", batch_size=2, max_timesteps=3)}.items():
        torch.manual_seed(0)
        model = UNet(config).eval()
        _, report = prune(model, model.example_inputs(), spec, data, progress=False)
        kept[name] = report.kept
    same = lambda x, y: all(np.array_equal(x[m][r], y[m][r]) for m in x for r in x[m])  # noqa: E731
    assert same(kept["taylor"], kept["thr0"])
    assert not same(kept["taylor"], kept["first"])


@pytest.mark.parametrize("argv, message", [
    (["--method", "magnitude", "--thr", "0.9"], "thr applies to method 'diff-pruning' only"),
    (["--method", "magnitude", "--criterion", "taylor"], "--criterion: not an option of --method magnitude"),
    (["--method", "layer", "--ratio", "0.5"], "--ratio: not an option of --method layer"),
    (["--method", "layer", "--target-params", "0.3", "--scope", "global"], "--scope: not an option of --method layer"),
    (["--ratio", "0.5", "--target-params", "0.3"], "give ratio or a target"),
    (["--method", "random", "--batch-size", "8"], "batch_size applies to the gradient methods"),
    (["--method", "random", "--additivity-subsets", "3"], "--additivity-subsets: not an option"),
    (["--round-to", "8", "--head-mode", "heads"], "round_to applies to the local rule"),
    (["--replay", "runs/x", "--ratio", "0.5"], "only --out, --device and --debug may be given"),
])
def test_prune_script_names_options_that_do_nothing(argv, message, capsys):
    with pytest.raises(SystemExit):
        prune_script.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_prune_script_builds_the_spec_from_given_flags_only():
    cfg = prune_script.parse_args([])
    assert cfg.spec == ChannelPruning() and cfg.pipeline == "channel"
    cfg = prune_script.parse_args(["--method", "taylor", "--target-params", "0.3", "--ignored", "conv_out"])
    assert cfg.spec == ChannelPruning(method="taylor", target_params=0.3, ignored=("conv_out",))
    cfg = prune_script.parse_args(["--method", "layer", "--criterion", "taylor", "--target-macs", "0.2", "--thr", "0.1"])
    assert cfg.spec == LayerPruning(criterion="taylor", target_macs=0.2, thr=0.1) and cfg.pipeline == "layer"
