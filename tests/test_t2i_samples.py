"""benchmarks/t2i_samples.py: a pipeline's grid per prompt, and --compare's two panels from the same noise (the
README's pruned-teacher-beside-original figure)."""
from __future__ import annotations

import pytest
import torch

from benchmarks import t2i_samples
from tiny_pipeline import write_tiny_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:.*truncat")


def test_compare_draws_two_pipelines_from_the_same_noise(tmp_path, monkeypatch):
    from models import load

    pipe = write_tiny_pipeline(tmp_path / "pipe", sample_size=16)
    drawn = {}
    monkeypatch.setattr(t2i_samples, "draw", lambda grid, texts, out, title, panels=(): drawn.update(
        grid=grid, texts=texts, panels=panels))
    t2i_samples.main(["--model", str(pipe), "--compare", str(pipe), "--prompts", "2", "--images", "2",
                      "--guidance", "3", "--seed", "5", "--out", str(tmp_path / "g.png")])
    grid, (heading, other) = drawn["grid"], drawn["panels"][0]
    assert grid.shape == (2, 2, 3, 32, 32) and len(drawn["texts"]) == 2
    assert torch.equal(other, grid)                   # the same pipeline beside itself: image for image
    assert not torch.equal(grid[0, 0], grid[0, 1])   # ... while the samples of one prompt differ
    params = sum(p.numel() for p in load(str(pipe)).unet.parameters())
    assert heading == f"pipe ({params / 1e6:.2f}M U-Net params)"


def test_draw_lays_out_both_panels(tmp_path):
    grid = torch.rand(2, 3, 3, 8, 8)
    out = tmp_path / "g.png"
    t2i_samples.draw(grid, ["a red disc", "two blue squares"], out, "t", panels=(("pruned", grid.flip(0)),))
    assert out.stat().st_size > 1000


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such pipeline folder"):
        t2i_samples.main(["--compare", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")])
