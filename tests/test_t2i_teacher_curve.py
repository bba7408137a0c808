"""benchmarks/t2i_teacher_curve.py's bookkeeping (the sampling itself is metrics' and the pipeline's, tested there):
one row per kept checkpoint, a rerun measures only new ones, and --previous continues an earlier run's curve with
this run's steps offset by its last step."""
from __future__ import annotations

import json

import pytest

from benchmarks import t2i_teacher_curve as curve
from common.cli import UserError


def fake_run(tmp_path, name: str, steps: list[int]):
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"model": "checkpoints/t2i_shapes"}}))
    for s in steps:
        (run / "checkpoints" / f"step_{s:07d}.pt").write_bytes(b"")
    return run


@pytest.fixture
def measured(monkeypatch):
    calls = []
    monkeypatch.setattr(curve, "pipeline_at", lambda run, path: (None, int(path.stem.split("_")[1])))

    def measure(pipe, prompts, metrics, clip, **kw):
        calls.append(len(prompts))
        acc = {k: 0.1 * len(calls) for k in ("all", "count", "kinds", "colours", "background", "pairs")}
        return {"attribute_accuracy": acc, "fd_shapes": 40.0 - len(calls), "clip_shapes_score": 60.0 + len(calls),
                "clip_shapes_mean_cosine": 0.2, "seconds_per_image": 0.1}

    monkeypatch.setattr(curve, "measure", measure)
    import metrics.clip_score
    import metrics.t2i_shapes
    monkeypatch.setattr(metrics.t2i_shapes.ShapesMetrics, "build", staticmethod(lambda n: None))
    monkeypatch.setattr(metrics.clip_score, "load_clip_scorer", lambda name: None)
    monkeypatch.setattr(curve, "plot", lambda rows, path: path.write_text(json.dumps([r["step"] for r in rows])))
    return calls


def test_a_continued_run_counts_on_from_the_earlier_curve(tmp_path, measured):
    first = fake_run(tmp_path, "first", [1500, 3000])
    out1 = tmp_path / "curve.json"
    curve.main(curve.parse_args(["--run", str(first), "--num-prompts", "4", "--out", str(out1)]))
    assert measured == [4, 4]
    again = curve.main(curve.parse_args(["--run", str(first), "--num-prompts", "4", "--out", str(out1)]))
    assert measured == [4, 4] and [r["step"] for r in again["rows"]] == [1500, 3000]  # nothing re-measured

    second = fake_run(tmp_path, "second", [2500, 5000])
    record = curve.main(curve.parse_args(["--run", str(second), "--num-prompts", "4", "--previous", str(out1),
                                          "--out", str(out1)]))
    assert record["step_offset"] == 3000 and record["previous"]["run"] == str(first)
    assert [(r["step"], r["run_step"]) for r in record["rows"]] == [(5500, 2500), (8000, 5000)]
    assert [r["run"] for r in record["earlier_rows"]] == [str(first)] * 2
    assert json.loads(out1.with_suffix(".png").read_text()) == [1500, 3000, 5500, 8000]
    table = out1.with_suffix(".md").read_text()
    assert "| 5500 | second |" in table and "| 1500 | first |" in table and "continues the release" in table

    third = fake_run(tmp_path, "third", [1000])                     # a third run keeps both earlier runs' rows
    record = curve.main(curve.parse_args(["--run", str(third), "--num-prompts", "4", "--previous", str(out1),
                                          "--out", str(tmp_path / "c3.json")]))
    assert [(r["step"], r["run"]) for r in record["earlier_rows"]] == [
        (1500, str(first)), (3000, str(first)), (5500, str(second)), (8000, str(second))]
    assert record["rows"][0]["step"] == 9000


def test_previous_measured_otherwise_is_refused(tmp_path, measured):
    first = fake_run(tmp_path, "first", [1500])
    out = tmp_path / "curve.json"
    curve.main(curve.parse_args(["--run", str(first), "--num-prompts", "4", "--out", str(out)]))
    with pytest.raises(UserError, match=r"\(first 4\), seed 0; this call measures the first 8 prompts"):
        curve.main(curve.parse_args(["--run", str(first), "--num-prompts", "8", "--previous", str(out),
                                     "--out", str(tmp_path / "c2.json")]))
    with pytest.raises(UserError, match="no rows at guidance 3"):
        curve.main(curve.parse_args(["--run", str(first), "--num-prompts", "4", "--guidance", "3",
                                     "--previous", str(out), "--out", str(tmp_path / "c2.json")]))


def test_settings_are_part_of_a_rows_key_and_of_the_default_file(tmp_path, measured):
    """Rows at another prompt count or seed are measured, not reused; a record of other settings is never
    replaced; rows stored under the older step@guidance key are read with their count and seed 0."""
    run = fake_run(tmp_path, "r", [1000])
    out = tmp_path / "curve.json"
    curve.main(curve.parse_args(["--run", str(run), "--num-prompts", "4", "--out", str(out)]))
    curve.main(curve.parse_args(["--run", str(run), "--num-prompts", "4", "--seed", "1", "--out",
                                 str(tmp_path / "s1.json")]))
    assert measured == [4, 4]  # seed 1 is measured anew
    with pytest.raises(UserError, match="holds a curve with other settings"):
        curve.main(curve.parse_args(["--run", str(run), "--num-prompts", "2", "--out", str(out)]))
    store = run / "teacher_curve.json"
    rows = json.loads(store.read_text())
    legacy = {"step_0001000@5": dict(rows["step_0001000@5x4s0"], attribute_accuracy={"all": 0.5, "n": 4})}
    store.write_text(json.dumps(legacy))
    assert list(curve.read_store(store)) == ["step_0001000@5x4s0"]
    assert curve.parse_args(["--run", "r", "--seed", "2", "--guidance", "3"]).out.endswith("t2i_teacher_curve_g3_s2.json")
    assert curve.parse_args(["--run", "r"]).out.endswith("t2i_teacher_curve.json")
    with pytest.raises(SystemExit):
        curve.parse_args(["--run", "r", "--guidance", "0.5"])
