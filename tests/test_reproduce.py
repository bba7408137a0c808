"""benchmarks/reproduce.py on a tiny configuration (not timed): cells are saved as they finish, a rerun
recomputes nothing, a lost cell is rebuilt from what is saved, and the verdict rule only calls a difference
when the seeds' intervals are apart."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_argv(tmp_path: Path, docs: Path) -> list[str]:
    return [
        "--seeds", "0", "1", "--methods", "random", "scratch", "--steps", "1", "--num-samples", "4",
        "--sample-steps", "1", "--heldout-images", "8", "--curve-methods", "diff-pruning@0.05", "--curve-steps", "2",
        "--curve-every", "1", "--batch-size", "2", "--max-timesteps", "4", "--sweep-ratios", "--threads", "1",
        "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--docs", str(docs)]


@pytest.mark.slow
def test_reproduce_saves_cells_and_a_rerun_recomputes_nothing(tmp_path, monkeypatch):
    reproduce = load_module("reproduce")
    report = sys.modules["benchmarks.reproduce_report"]
    docs = tmp_path / "RESULTS.md"
    docs.write_text(f"# Results\n\nHand-written.\n\n{report.BEGIN}\nold tables\n{report.END}\n\nVerdict text.\n")
    argv = tiny_argv(tmp_path, docs)
    args = reproduce.parse_args(argv)
    first = reproduce.main(args)

    cells = tmp_path / "work" / "cells"
    names = {p.stem for p in cells.glob("*.json")}
    assert {"teacher", "random-r0.3-s0", "random-r0.3-s1", "scratch-r0.3-s0", "scratch-r0.3-s1",
            "curve-diff-pruning@0.05-s0"} <= names
    assert not first["partial"] and first["cells_done"] == first["cells_expected"] == 4
    assert first["rows"]["random"]["fd_shapes"]["n"] == 2 and set(first["verdicts"]) == {f"C{i}" for i in range(1, 7)}
    assert [p["step"] for p in first["curves"]["diff-pruning@0.05"]["points"]] == [0, 1, 2]
    text = docs.read_text()
    assert "old tables" not in text and "| random |" in text and text.endswith("Verdict text.\n")
    assert json.loads((tmp_path / "results" / "reproduce.json").read_text())["rows"] == json.loads(json.dumps(first["rows"]))

    # A rerun finds every cell: no pruning, no training.
    def forbidden(*a, **k):
        raise AssertionError("a finished cell was recomputed")
    monkeypatch.setattr(reproduce, "prune", forbidden)
    monkeypatch.setattr(reproduce.train, "main", forbidden)
    mtimes = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    second = reproduce.main(args)
    assert second["rows"] == first["rows"]
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")} == mtimes
    assert reproduce.main(reproduce.parse_args(argv + ["--report-only"]))["rows"] == first["rows"]

    # A lost result cell is rebuilt from the saved pruned model and the finished fine-tune run, to the same numbers.
    monkeypatch.undo()
    monkeypatch.setattr(reproduce, "prune", forbidden)
    (cells / "random-r0.3-s1.json").unlink()
    third = reproduce.main(args)
    assert third["rows"]["random"]["fd_shapes"] == first["rows"]["random"]["fd_shapes"]

    # Cells restored without their checkpoints (docs/RESULTS.md step 0): the pruned model is pruned again from
    # its seed and checked against the saved cell; a cell that does not match it is refused.
    monkeypatch.undo()
    pruned_pt = tmp_path / "work" / "pruned" / "random-r0.3-s1.pt"
    (cells / "random-r0.3-s1.json").unlink()
    pruned_pt.unlink()
    fourth = reproduce.main(args)
    assert pruned_pt.exists() and fourth["rows"]["random"]["fd_shapes"] == first["rows"]["random"]["fd_shapes"]
    saved = json.loads((cells / "pruned-random-r0.3-s1.json").read_text())
    (cells / "pruned-random-r0.3-s1.json").write_text(json.dumps({**saved, "heldout_loss": 2 * saved["heldout_loss"]}))
    (cells / "random-r0.3-s1.json").unlink()
    pruned_pt.unlink()
    with pytest.raises(SystemExit, match="cell pruned-random-r0.3-s1 says held-out loss"):
        reproduce.main(args)
    # made on another device: float reordering may change a gradient criterion's choice, so the cell is replaced
    (cells / "pruned-random-r0.3-s1.json").write_text(json.dumps(
        {**saved, "device": "cuda:7", "heldout_loss": 2 * saved["heldout_loss"]}))
    pruned_pt.unlink()
    assert not (cells / "random-r0.3-s1.json").exists()  # the refused run stopped before the fine-tune's cell
    reproduce.main(args)
    now = json.loads((cells / "pruned-random-r0.3-s1.json").read_text())
    assert now["device"] == "cpu" and now["heldout_loss"] == saved["heldout_loss"]
    assert now["replaces"]["device"] == "cuda:7" and pruned_pt.exists()


def test_verdict_rule_is_welch_with_holm_per_claim():
    load_module("reproduce")
    report = sys.modules["benchmarks.reproduce_report"]

    def row(values):
        return {"fd_shapes": report.stats(values), "heldout_loss": report.stats([0.01, 0.011, 0.012])}
    rows = {"a": row([10.0, 10.5, 9.5, 10.2, 9.8]), "far": row([20.0, 21.0, 19.0, 20.5, 19.5]),
            "near": row([10.4, 10.9, 9.9, 10.6, 10.1]), "better": row([5.0, 5.5, 4.5, 5.2, 4.8]),
            "fixed": row([11.0, 11.0, 11.0]), "noisy": row([11.0, 11.5, 16.0])}
    assert report.verdict_beats(rows, "a", ["far"])["verdict"] == "supported"
    assert report.verdict_beats(rows, "a", ["far", "near"])["verdict"] == "not supported at this scale"
    assert report.verdict_beats(rows, "a", ["far", "better"])["verdict"] == "contradicted"
    assert report.verdict_beats(rows, "a", ["missing"])["verdict"].startswith("untested")
    # A deterministic row (std 0) against a noisy one: the old interval rule said "better", Welch does not.
    v = report.verdict_beats(rows, "fixed", ["noisy"])
    assert v["verdict"] == "not supported at this scale"
    (c,) = v["comparisons"].values()
    assert c["p_holm"] > 0.2 and "95% CI" in report.st.describe(c)


@pytest.mark.slow
def test_teacher_curve_continues_measures_resumes_and_ships(tmp_path, monkeypatch):
    curve = load_module("teacher_curve")
    monkeypatch.setattr(curve, "RESULTS", tmp_path / "results")
    argv = ["--steps", "2", "--every", "1", "--num-samples", "4", "--sample-steps", "1", "--heldout-images", "8",
            "--threads", "1", "--work", str(tmp_path / "work")]
    parser = curve.build_parser()
    curve.main(parser.parse_args(argv))
    base = curve.training_steps(curve.TEACHER_CHECKPOINT)
    rows = json.loads((tmp_path / "results" / f"teacher_curve_{base}_to_{base + 2}.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[0]["ssim_to_teacher"] == pytest.approx(1.0)
    assert all(r["fd_shapes"] > 0 and r["heldout_loss"] > 0 for r in rows)

    # Rerun: the run is finished and every step is measured, so nothing is trained or sampled again.
    monkeypatch.setattr(curve, "QualityProbe", lambda *a, **k: pytest.fail("a measured step was measured again"))
    curve.main(parser.parse_args(argv))

    target = tmp_path / "shipped.pt"
    curve.main(parser.parse_args(argv + ["--ship", "2", "--ship-to", str(target)]))
    from models.checkpoint import read_checkpoint
    meta = read_checkpoint(target)["meta"]
    assert meta["total_steps"] == curve.training_steps(curve.TEACHER_CHECKPOINT) + 2 and "teacher_curve.py" in meta["note"]
    with pytest.raises(SystemExit, match="never overwritten"):
        curve.main(parser.parse_args(argv + ["--ship", "2", "--ship-to", str(target)]))


def test_threshold_verdict_separates_mattering_from_intermediate_best():
    load_module("reproduce")
    report = sys.modules["benchmarks.reproduce_report"]
    jitter = [-0.6, 0.3, 0.0, 0.6, -0.3]

    def rows(fds, names=("taylor", "diff-pruning@0.05", "diff-pruning@0.1", "diff-pruning@0.2")):
        return {m: {"fd_shapes": report.stats([fd + j for j in jitter]),
                    "heldout_loss": report.stats([0.01, 0.011, 0.012])} for m, fd in zip(names, fds)}
    c4 = report.verdicts(rows([20, 15, 10, 20]), {}, None, 0, None)["C4"]  # taylor stands for thr 0.0
    assert c4["thresholds"] == [0.0, 0.05, 0.1, 0.2]
    assert c4["matters"] and c4["intermediate_best"] and c4["best_mean"] == "diff-pruning@0.1"
    c4 = report.verdicts(rows([40, 30, 20, 10]), {}, None, 0, None)["C4"]  # monotone: the best is an end
    assert c4["matters"] and not c4["intermediate_best"] and "untested" in c4["verdict"]
    c4 = report.verdicts(rows([10.2, 10, 10.3, 10.1]), {}, None, 0, None)["C4"]  # all within the noise
    assert not c4["matters"] and not c4["intermediate_best"]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    reproduce = load_module("reproduce")
    docs = tmp_path / "RESULTS.md"
    docs.write_text("# Results\n")
    base = tiny_argv(tmp_path, docs)
    cases = [(["--shards", "2", "--shard", "2"], "--shard 2 is outside 0..1"),
             (["--teacher", str(tmp_path / "missing.pt")], "missing.pt does not exist"),
             (["--report-only"], "has no finished cell"),
             (["--device", "gpu0"], "--device 'gpu0' is not a device")]
    import torch
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "sees no CUDA device"))
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message):
            reproduce.main(reproduce.parse_args(base + extra))
    # nothing was started or written: no work folder, no results, the docs untouched
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()
    assert docs.read_text() == "# Results\n"


@pytest.mark.slow
def test_converged_preset_measures_raw_weights_and_equal_kd(tmp_path):
    """--study converged on a tiny budget: raw and EMA weights both measured, fewer seeds for the threshold and
    layer rows, output KD at equal weights in the fine-tune's saved config, the feature-spread cell."""
    reproduce = load_module("reproduce")
    argv = ["--study", "converged", "--seeds", "0", "1", "--few-seeds", "1", "--methods", "random", "diff-pruning@0.2",
            "layer:output-loss+output", "--steps", "1", "--num-samples", "4", "--sample-steps", "2", "--heldout-images",
            "8", "--batch-size", "2", "--max-timesteps", "2", "--calib-size", "4", "--curve-methods", "--threads", "1",
            "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--docs", ""]
    cfg = reproduce.parse_args(argv)
    assert (cfg.skip_type, cfg.clip_x0, cfg.ema_warmup, cfg.kd_weights) == ("quad", False, True, "equal")
    r = reproduce.main(cfg)
    assert r["rows"]["random"]["seeds"] == [0, 1] and r["rows"]["diff-pruning@0.2"]["seeds"] == [0]
    assert r["rows"]["layer:output-loss+output"]["seeds"] == [0]
    assert "fd_shapes_raw" in r["rows"]["random"] and r["probe"]["skip_type"] == "quad" and not r["probe"]["clip_x0"]
    assert set(r["feature_spread"]["terms"]) == {"mse", "normalized"}
    from models.checkpoint import read_checkpoint
    (model,) = (tmp_path / "work" / "runs").glob("layer:output-loss+output-r0.3-s0/*/model.pt")
    tc = read_checkpoint(model)["meta"]["train_config"]
    assert (tc["lambda_task"], tc["lambda_out"], tc["ema_warmup"]) == (1.0, 1.0, True)


def test_the_recorded_command_carries_every_flag_off_the_preset():
    reproduce = load_module("reproduce")
    report = sys.modules["benchmarks.reproduce_report"]
    assert report.off_preset_flags(reproduce.parse_args(["--study", "first"])) == ""
    cfg = reproduce.parse_args(["--study", "first", "--methods", "layer:output-loss+output", "--kd-weights", "equal",
                                "--no-clip-x0", "--ratio", "0.5"])
    assert report.off_preset_flags(cfg) == (" --methods layer:output-loss+output --no-clip-x0 --kd-weights equal"
                                            " --ratio 0.5")
    rerun = reproduce.parse_args(["--study", "first", *report.off_preset_flags(cfg).split()])
    assert (rerun.methods, rerun.kd_weights, rerun.clip_x0, rerun.ratio) == (cfg.methods, "equal", False, 0.5)
