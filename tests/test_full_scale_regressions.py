"""Regressions found by pruning random-weight SD-v1.5 / SDXL-base folders written by diffusers and transformers
themselves (benchmarks/make_random_sd_folder.py; the runs: docs/RECIPES.md, "Full-scale runs on random
weights"), each checked here at a size that needs no full-scale model."""
from __future__ import annotations

import pytest

import prune


def test_architecture_implies_the_handcrafted_criterion():
    """`--method layer --architecture bk-sdm-small` alone is BK-SDM-Small (the only criterion a fixed
    architecture has), and a different criterion named with it is still refused."""
    cfg = prune.parse_args(["--method", "layer", "--architecture", "bk-sdm-small"])
    assert cfg.spec.criterion == "handcrafted" and cfg.spec.architecture == "bk-sdm-small"
    with pytest.raises(SystemExit):
        prune.parse_args(["--method", "layer", "--architecture", "bk-sdm-small", "--criterion", "random"])


def test_a_bare_unet_folder_is_refused_before_its_weights_are_read(tmp_path, monkeypatch):
    """A diffusers U-Net folder alone (SDXL's unet/ is 10 GB) is refused in one line naming its class, before
    the minutes of reading it that the refusal used to come after."""
    from common.cli import UserError
    from models import pipelines
    from tiny_pipeline import write_tiny_pipeline

    unet = write_tiny_pipeline(tmp_path / "pipe") / "unet"
    monkeypatch.setattr(pipelines, "load_latent", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(UserError, match=r"single component folder \(UNet2DConditionModel.*model_index.json"):
        prune.main(prune.parse_args(["--model", str(unet), "--out", str(tmp_path / "runs"), "--method", "magnitude"]))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_pipeline_folder_that_cannot_fit_on_disk_is_refused_before_pruning(tmp_path, monkeypatch):
    """The pruned pipeline folder (float32: 9 GB for a pruned SDXL) is written after all the work; a disk without
    room for it fails in one line first (it used to fail at the end, in save_pipeline, with "No space left")."""
    from common import resources
    from common.cli import UserError
    from pruning import pipelines as pp
    from tiny_pipeline import write_tiny_pipeline

    folder = write_tiny_pipeline(tmp_path / "pipe")
    monkeypatch.setattr(resources, "free_disk", lambda _: 1000)
    monkeypatch.setattr(pp, "calibration", lambda *a, **k: pytest.fail("pruning went on"))
    with pytest.raises(UserError, match=r"--out .*writes up to .* GiB, .* has 0.0 GiB free"):
        prune.main(prune.parse_args(["--model", str(folder), "--out", str(tmp_path / "runs"), "--method", "magnitude"]))
