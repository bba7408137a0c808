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
