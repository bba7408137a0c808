"""One evaluation however it is invoked: evaluate.py's sampler comes from a named protocol (metrics/protocols.py).

The trap: `evaluate.py` with no models clipped x0 while the explicit command it stands for (and the
one prune.py prints) did not, so the two measured different things (FD-shapes 97.7 vs 149.8 on one teacher).
"""
from __future__ import annotations

import pytest

import evaluate
from metrics.protocols import PROTOCOLS, resolve


def test_no_arguments_and_explicit_models_use_the_same_protocol():
    default, _ = evaluate.parse_args([])
    explicit, _ = evaluate.parse_args(["checkpoints/tiny_shapes.pt", "runs/prune/x/pruned.pt",
                                       "--reference", "checkpoints/tiny_shapes.pt"])
    assert default.sampler == explicit.sampler == PROTOCOLS["embedded"]
    assert default.protocol == explicit.protocol and explicit.protocol.startswith("embedded (")


def test_named_protocols_and_recorded_overrides():
    cfg, _ = evaluate.parse_args(["m.pt", "--protocol", "paper"])
    assert (cfg.sampler.steps, cfg.sampler.skip_type, cfg.sampler.clip_x0) == (100, "quad", False)
    cfg, _ = evaluate.parse_args(["m.pt", "--protocol", "paper", "--steps", "50", "--seed", "3"])
    assert cfg.sampler.steps == 50 and cfg.sampler.seed == 3 and "overridden: steps=50" in cfg.protocol
    same, _ = evaluate.parse_args(["m.pt", "--protocol", "paper", "--steps", "100"])
    assert "overridden" not in same.protocol  # an override equal to the protocol's value is no override


def test_flags_reproduce_the_protocol():
    for p in (resolve(), resolve("paper"), resolve("fast", clip_x0=False, steps=7)):
        cfg, _ = evaluate.parse_args(["m.pt", *p.flags().split()])
        assert cfg.sampler == p.sampler and cfg.protocol == p.describe()
    assert resolve().flags() == ""


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown sampling protocol 'papr'"):
        resolve("papr")
    with pytest.raises(ValueError, match="steps_"):
        resolve("paper", steps_=3)


def test_weights_raw_evaluates_the_raw_weights(tmp_path):
    """After a short fine-tune the EMA weights barely move; --weights raw measures the trained ones."""
    import json

    from models.checkpoint import read_checkpoint, save_checkpoint
    from tests.script_helpers import eval_config, small_checkpoint

    path = small_checkpoint(tmp_path / "a.pt")
    ckpt = read_checkpoint(path)
    raw = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    both = tmp_path / "both.pt"
    save_checkpoint(both, config=ckpt_config(ckpt), state_dict=raw, ema_state_dict=ckpt["state_dict"])
    assert evaluate.parse_args([str(both), "--weights", "raw"])[0].weights == "raw"
    shas = {}
    for weights in ("ema", "raw"):
        run = evaluate.main(eval_config(tmp_path / weights, [str(both)], weights=weights))
        row = json.loads((run / "report.json").read_text())["models"][0]
        shas[weights] = row["weights_sha256"]
        assert row["ema"] is (weights == "ema")
    assert shas["ema"] != shas["raw"]


def ckpt_config(ckpt):
    from models.ddpm.config import ModelConfig
    return ModelConfig.from_dict(ckpt["model_config"])
