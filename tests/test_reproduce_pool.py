"""benchmarks/reproduce_pool.py: seeds of runs of one configuration pool into one sample; runs of different
settings or with a shared seed are refused; the first study's "taylor" row is the first-order variant."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import reproduce_pool
from benchmarks.reproduce_report import stats


def run(seeds, fd, path: Path, steps=200) -> Path:
    def row(m, vals):
        return {"method": m, "seeds": seeds, "params": 1, "macs_paper": 1, "pruned_heldout_loss": stats([0.1] * len(vals)),
                **{k: stats(vals) for k in ("fd_shapes", "kid_shapes", "ssim_to_teacher", "heldout_loss")}}
    data = {"command": f"run {seeds}", "teacher": "t.pt", "teacher_total_steps": 100, "finetune": {"steps": steps},
            "probe": {"num_samples": 4}, "teacher_metrics": {"fd_shapes": 1.0, "params": 2, "macs_paper": 2,
                                                             "kid_shapes": 0.0, "heldout_loss": 0.01},
            "rows": {"taylor": row("taylor", fd), "diff-pruning@0.05": row("diff-pruning@0.05", [v / 2 for v in fd])}}
    path.write_text(json.dumps(data))
    return path


def test_pool_concatenates_seeds_and_renames_the_first_order_taylor(tmp_path):
    a = run([0, 1, 2], [10.0, 11.0, 12.0], tmp_path / "a.json")
    b = run([3, 4, 5], [13.0, 14.0, 15.0], tmp_path / "b.json")
    r = reproduce_pool.main(reproduce_pool.build_parser().parse_args([str(a), str(b), "--out", str(tmp_path / "out")]))
    row = r["rows"]["taylor-first-order"]
    assert row["seeds"] == [0, 1, 2, 3, 4, 5] and row["fd_shapes"]["values"] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    assert row["fd_shapes"]["mean"] == pytest.approx(12.5) and "taylor" not in r["rows"]
    assert (tmp_path / "out" / "reproduce_pooled.md").read_text().count("taylor-first-order") >= 1


def test_pool_refuses_shared_seeds_and_different_settings(tmp_path):
    a = run([0, 1, 2], [10.0, 11.0, 12.0], tmp_path / "a.json")
    with pytest.raises(SystemExit, match="seed"):
        reproduce_pool.main(reproduce_pool.build_parser().parse_args([str(a), str(a), "--out", str(tmp_path)]))
    c = run([3, 4, 5], [13.0, 14.0, 15.0], tmp_path / "c.json", steps=2000)
    with pytest.raises(SystemExit, match="finetune"):
        reproduce_pool.main(reproduce_pool.build_parser().parse_args([str(a), str(c), "--out", str(tmp_path)]))


def test_a_rerun_at_equal_kd_weights_replaces_rows_and_nothing_else_may_differ(tmp_path):
    a = run([0, 1, 2], [10.0, 11.0, 12.0], tmp_path / "a.json")
    b = run([0, 1], [20.0, 22.0], tmp_path / "b.json")
    data = json.loads(b.read_text())
    # the rerun records settings the first study's files did not (at the values it ran with) and other KD weights
    data["finetune"] = {**data["finetune"], "ema_warmup": False, "raw_measured": False, "kd_weights": "equal"}
    data["probe"] = {**data["probe"], "skip_type": "uniform"}
    del data["rows"]["diff-pruning@0.05"]
    b.write_text(json.dumps(data))
    args = [str(a), "--replace", str(b), "--out", str(tmp_path / "out")]
    r = reproduce_pool.main(reproduce_pool.build_parser().parse_args(args))
    assert r["rows"]["taylor-first-order"]["fd_shapes"]["values"] == [20.0, 22.0]  # replaced, not pooled
    assert r["rows"]["diff-pruning@0.05"]["fd_shapes"]["values"] == [5.0, 5.5, 6.0]  # kept
    assert list(r["row_sources"]) == ["taylor-first-order"] and "equal" in r["row_sources"]["taylor-first-order"]
    assert "replaced by the run with KD weights equal" in (tmp_path / "out" / "reproduce_pooled.md").read_text()
    for change, match in (({"probe": {**data["probe"], "skip_type": "quad"}}, "probe"),
                          ({"finetune": {**data["finetune"], "ema_warmup": True}}, "finetune"),
                          ({"rows": {**data["rows"], "layer:new": data["rows"]["taylor"]}}, "lack: layer:new")):
        b.write_text(json.dumps({**data, **change}))
        with pytest.raises(SystemExit, match=match):
            reproduce_pool.main(reproduce_pool.build_parser().parse_args(args))


def test_a_run_of_the_same_settings_adds_the_rows_the_pooled_runs_lack(tmp_path):
    a = run([0, 1, 2], [10.0, 11.0, 12.0], tmp_path / "a.json")
    c = run([0, 1, 2], [30.0, 31.0, 32.0], tmp_path / "c.json")
    data = json.loads(c.read_text())
    data["rows"] = {"diff-pruning@0.2": {**data["rows"]["taylor"], "method": "diff-pruning@0.2"}}
    c.write_text(json.dumps({**data, "study": "first"}))
    args = [str(a), "--add", str(c), "--out", str(tmp_path / "out")]
    r = reproduce_pool.main(reproduce_pool.build_parser().parse_args(args))
    assert r["rows"]["diff-pruning@0.2"]["fd_shapes"]["values"] == [30.0, 31.0, 32.0]
    assert r["rows"]["taylor-first-order"]["fd_shapes"]["values"] == [10.0, 11.0, 12.0]
    assert "added from" in r["row_sources"]["diff-pruning@0.2"]
    c.write_text(json.dumps({**data, "study": "first", "finetune": {**data["finetune"], "kd_weights": "equal"}}))
    with pytest.raises(SystemExit, match="cannot join"):  # adding needs every setting equal, KD weights too
        reproduce_pool.main(reproduce_pool.build_parser().parse_args(args))
    with pytest.raises(SystemExit, match="already have"):
        reproduce_pool.main(reproduce_pool.build_parser().parse_args([str(a), "--add", str(a), "--out", str(tmp_path)]))
