"""prune.py as a user meets it: --num-samples 0 skips the grids, the data is read before any sampling, and
the pruning API names a bad option. (tests/test_prune.py holds the pruning itself.)"""
from __future__ import annotations

import pytest

from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from script_helpers import SMALL, small_checkpoint


def test_prune_num_samples_zero_skips_the_grids(tmp_path):
    import prune
    teacher = small_checkpoint(tmp_path / "teacher.pt")
    run = prune.main(prune.parse_args(["--model", str(teacher), "--method", "magnitude", "--num-samples", "0",
                                       "--out", str(tmp_path / "p")]))
    assert (run / "pruned.pt").is_file() and not list(run.glob("samples_*.png"))


def test_pruning_api_names_a_bad_head_mode():
    from pruning.api import prune
    config = ModelConfig(**SMALL)
    model = UNet(config).eval()
    with pytest.raises(ValueError, match="head_mode must be one of .* got 'head'"):
        prune(model, model.example_inputs(), method="random", ratio=0.3, head_mode="head", progress=False)


def test_prune_reads_its_data_before_drawing_the_sample_grids(tmp_path, monkeypatch):
    import prune
    teacher = small_checkpoint(tmp_path / "teacher.pt")
    empty = tmp_path / "no-images"
    empty.mkdir()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the data was checked")

    monkeypatch.setattr(prune, "sample", no_sampling)
    with pytest.raises(OSError, match="contains no images"):
        prune.main(prune.parse_args(["--model", str(teacher), "--data", "folder", "--data-root", str(empty),
                                     "--out", str(tmp_path / "p")]))
    assert not (tmp_path / "p").exists()
