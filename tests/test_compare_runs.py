"""reports/compare.py: runs/*/report.json of prune.py and evaluate.py in one table and plots."""
from __future__ import annotations

import csv
import json

from reports.compare import collect, main


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _runs(root):
    widths = {"conv_in": 32, "down.0.block.0.conv1": 32, "mid.attn_1.q": 64, "mid.attn_1.heads": 1}
    _write(root / "prune" / "00000-tiny-magnitude" / "report.json",
           {"method": "magnitude", "ratio": 0.3, "params_before": 2e6, "params_after": 1e6, "macs_paper_after": 5e8,
            "seconds_total": 12.5, "widths_before": widths, "widths_after": {**widths, "conv_in": 16}})
    pruned = root / "prune" / "00000-tiny-magnitude" / "pruned.pt"
    _write(root / "evaluate" / "00001" / "report.json", {"models": [
        {"name": "teacher", "source": "checkpoints/tiny.pt", "params_M": 2.0, "macs_paper_G": 1.0, "fd_shapes": 10.0,
         "seconds_per_image": 0.1},
        {"name": "pruned", "source": str(pruned), "params_M": 1.0, "macs_paper_G": 0.5, "fd_shapes": 30.0,
         "seconds_per_image": 0.05}]})
    _write(root / "other" / "report.json", {"something": "else"})


def test_collect_joins_evaluations_to_their_prune_run(tmp_path):
    _runs(tmp_path)
    rows, skipped = collect(tmp_path)
    assert [r["kind"] for r in rows] == ["prune", "evaluate", "evaluate"]
    teacher, pruned = rows[1], rows[2]
    assert teacher["method"] == "-" and pruned["method"] == "magnitude" and pruned["ratio"] == 0.3
    assert pruned["fd_shapes"] == 30.0 and rows[0]["params_M"] == 1.0 and rows[0]["seconds"] == 12.5
    assert [p.parent.name for p in skipped] == ["other"]


def test_main_writes_table_and_plots(tmp_path, capsys):
    _runs(tmp_path)
    out = main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| magnitude | 0.3 |" in printed
    assert "size_vs_quality.png (fd_shapes)" in printed and "skipped 1" in printed
    assert (out / "size_vs_quality.png").stat().st_size > 1000
    assert (out / "widths_00000-tiny-magnitude.png").stat().st_size > 1000
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and table[2]["method"] == "magnitude" and float(table[2]["fd_shapes"]) == 30.0
