"""A pruned checkpoint records the ratio that was applied (found for a target),
never the unused --ratio default; --ratio together with a target is an error (pruning/spec.py)."""
from __future__ import annotations

import json

import prune as prune_script
from models.checkpoint import read_checkpoint
from tests.script_helpers import run_cli, small_checkpoint


def test_the_meta_of_a_target_run_records_the_applied_ratio(tmp_path, capsys):
    model = small_checkpoint(tmp_path / "m.pt")
    status, out, err = run_cli(prune_script, ["--model", str(model), "--method", "magnitude", "--target-params", "0.5",
                                              "--num-samples", "0", "--out", str(tmp_path / "runs")], capsys)
    assert status == 0, err
    run = next((tmp_path / "runs").iterdir())
    meta = read_checkpoint(run / "pruned.pt")["meta"]
    report = json.loads((run / "report.json").read_text())
    applied = report["target"]["ratio"]
    assert applied != 0.3 and meta["ratio"] == meta["applied"]["ratio"] == report["ratio"] == applied
    assert f"ratio {applied:.4f}" in out
    assert meta["spec"]["ratio"] is None and meta["spec"]["target_params"] == 0.5


def test_ratio_with_a_target_is_an_error(capsys):
    status, _, err = run_cli(prune_script, ["--target-params", "0.3", "--ratio", "0.6"], capsys)
    assert status == 2 and "give ratio or a target" in err
