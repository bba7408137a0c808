"""Smoke test of benchmarks/sd_unet_speed.py on the tiny golden U-Net: every opt-in mode runs and computes the
default path's output, results are never overwritten, and the diffusers row is skipped (with why) where
diffusers is absent, as in the project environment."""
from __future__ import annotations

import importlib.util

import torch

from benchmarks.sd_unet_speed import Conditioned, free_path, ours_with, render, run
from golden_recipe import load_entry, recipe_state_dict
from models.runtime import Runner, RuntimeOptions
from models.sd import UNetConditionConfig


def test_modes_run_and_agree(tmp_path):
    entry = load_entry("sd1")
    config = UNetConditionConfig.from_diffusers(entry["config"])
    state = recipe_state_dict(entry["weights"])
    outs = {}
    for name, options in {"eager": RuntimeOptions(), "channels_last": RuntimeOptions(channels_last=True),
                          "bf16": RuntimeOptions(bf16=True)}.items():
        runner = Runner(Conditioned(ours_with(state, config)), options)
        runner.model.ctx = entry["encoder_hidden_states"]
        with torch.inference_mode():
            outs[name] = runner(entry["x"], entry["t"])
    torch.testing.assert_close(outs["eager"], entry["out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs["channels_last"], entry["out"], atol=1e-4, rtol=1e-4)
    assert (outs["bf16"] - entry["out"]).abs().max() < 0.1 * entry["out"].abs().max()  # ~3 digits

    result = run(dict(entry["config"]), batch_sizes=[1], modes=["eager", "diffusers", "channels_last"], repeats=1,
                 warmup=0, latent=8, tokens=5)
    times = result["batches"]["1"]["times"]
    assert {"eager", "channels_last"} <= set(times) and all(t["median_s"] > 0 for t in times.values())
    if importlib.util.find_spec("diffusers") is None:
        assert "diffusers" not in times and "comparison skipped" in result["reference"]
    table = render(result)
    assert table.count("\n") == 1 + len(times) and "| 1 | eager |" in table and "| 1.000 |" in table
    (tmp_path / "r.json").write_text("{}")
    assert free_path(tmp_path / "r.json").name == "r_1.json"
