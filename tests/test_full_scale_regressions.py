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


@pytest.fixture(scope="module")
def bare_unet(tmp_path_factory):
    from tiny_pipeline import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("bare") / "pipe", sample_size=16) / "unet"


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory, bare_unet):
    """A magnitude run on the bare U-Net folder (shared: each prune of the tiny U-Net takes ~1.5 s of tracing)."""
    out = tmp_path_factory.mktemp("bare_runs")
    return prune.main(prune.parse_args(["--model", str(bare_unet), "--out", str(out), "--method", "magnitude",
                                        "--ratio", "0.3"]))


def test_a_bare_unet_folder_is_pruned_by_a_data_free_method(bare_run):
    """A diffusers U-Net folder alone (no model_index.json) is pruned by magnitude: RUN/unet/ is a component
    folder with the pruned widths that models.load reads back, widths.txt / spec.json / report.json as a
    pipeline run's, no grids (no VAE to decode them, which the report says)."""
    import json

    from models.loading import load

    run = bare_run
    assert (run / "unet" / "config.json").is_file() and not (run / "pipeline").exists()
    assert "_diffprune_config" in json.loads((run / "unet" / "config.json").read_text())
    unet, report = load(str(run / "unet")), json.loads((run / "report.json").read_text())
    assert _params(unet) == report["params_after"] < report["params_before"]
    assert "no sample grids" in report["calibration"]["note"] and not (run / "samples_before.png").exists()
    assert "32 ->      24" in (run / "widths.txt").read_text() and (run / "spec.json").is_file()


def test_a_bare_unet_run_replays_exactly(bare_run):
    import torch

    from models.loading import load

    again = load(str(prune.main(prune.parse_args(["--replay", str(bare_run)])) / "unet")).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in load(str(bare_run / "unet")).state_dict().items())


def test_a_bare_unet_folder_takes_layer_pruning_by_the_random_criterion(tmp_path, bare_unet):
    """Layer pruning's data-free criteria read no calibration set: the units go, the additivity report (which
    measures L(S) on latents) is skipped."""
    import json

    from models.loading import load

    run = prune.main(prune.parse_args(["--model", str(bare_unet), "--out", str(tmp_path / "runs"), "--method",
                                       "layer", "--criterion", "random", "--target-params", "0.2"]))
    config = json.loads((run / "unet" / "config.json").read_text())["_diffprune_config"]
    assert config["removed"] and (run / "units.txt").is_file() and not (run / "additivity.json").exists()
    assert _params(load(str(run / "unet"))) == json.loads((run / "report.json").read_text())["params_after"]


@pytest.mark.parametrize("args, what", [
    (["--method", "taylor"], "method 'taylor'"),
    (["--method", "diff-pruning", "--recipe", "ldm-script"], "--recipe ldm-script"),
    (["--method", "layer", "--target-params", "0.2"], "layer --criterion output-loss"),
])
def test_a_bare_unet_folder_refuses_data_methods_before_its_weights_are_read(tmp_path, monkeypatch, bare_unet,
                                                                            args, what):
    """The data-dependent methods need a VAE and a text encoder for their latents: one line naming the method and
    the whole pipeline folder, before the minutes of reading a 10 GB SDXL unet/ (and no run folder)."""
    from common.cli import UserError
    from models import pipelines

    monkeypatch.setattr(pipelines, "load_component", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(UserError, match=rf"bare U-Net folder .*{what}.*whole pipeline folder \(model_index.json"):
        prune.main(prune.parse_args(["--model", str(bare_unet), "--out", str(tmp_path / "runs"), *args]))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_another_component_folder_is_still_refused(tmp_path, bare_unet):
    from common.cli import UserError

    with pytest.raises(UserError, match=r"single component folder \(AutoencoderKL"):
        prune.main(prune.parse_args(["--model", str(bare_unet.parent / "vae"), "--out", str(tmp_path / "runs"),
                                     "--method", "magnitude"]))


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
