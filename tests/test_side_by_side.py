"""reports/side_by_side.py: rows of different models from the same noise, labelled."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from metrics.protocols import resolve
from reports.side_by_side import labelled_grid, main, sample_rows
from tests.script_helpers import small_checkpoint


def test_same_noise_per_column_and_labels(tmp_path):
    a, b = (models.load(small_checkpoint(tmp_path / f"{n}.pt", seed=s)) for n, s in (("a", 0), ("b", 1)))
    protocol = resolve("fast", steps=2)
    rows = sample_rows([a, a, b], num=3, protocol=protocol, progress=False)
    assert torch.equal(rows[0], rows[1])  # same model, same noise: identical row
    assert not torch.equal(rows[0], rows[2])
    grid = labelled_grid(rows, ["teacher", "teacher again", "pruned"], scale=2)
    pixels = np.asarray(grid)
    assert grid.height == 3 * 2 * (16 + 2 * 2) and (pixels[:, :5] < 255).any()  # the labels are drawn


def test_command_writes_the_png_and_refuses_to_overwrite(tmp_path, capsys):
    a = small_checkpoint(tmp_path / "a.pt")
    out = main([str(a), str(a), "--labels", "t", "p", "--num", "2", "--protocol", "fast", "--out", str(tmp_path / "g.png")])
    assert out.stat().st_size > 100
    with pytest.raises(SystemExit):
        main([str(a), "--num", "2", "--out", str(out)])
