"""benchmarks/reproduce_t2i.py on a tiny random pipeline (tests/tiny_pipeline.py) standing in for the t2i-shapes
teacher: a layer row, a KD row and a channel row each run end to end (prune.py -> train.py -> measured), a
rerun recomputes nothing, an interrupted fine-tune is resumed in its own folder; the relative-drop table and
the verdicts are checked on constructed numbers against hand computation and scipy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import reproduce_t2i_report as rep
from benchmarks.reproduce_t2i_config import default_rows, parse_row, prune_args
from tiny_pipeline import write_tiny_pipeline
from training import latent

pytestmark = pytest.mark.filterwarnings("ignore:.*truncat")
ROWS = ["layer:handcrafted@0.3", "layer:output-loss@0.3+feature-normalized", "channel:taylor@0.3"]


@pytest.fixture(autouse=True)
def few_images(monkeypatch):
    monkeypatch.setattr(latent, "TRAIN_IMAGES", 24)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    folder = write_tiny_pipeline(tmp_path_factory.mktemp("t2i_study") / "teacher", sample_size=16)
    return folder


def argv(tmp_path: Path, teacher: Path, *extra: str) -> list[str]:
    return ["--teacher", str(teacher), "--rows", *ROWS, "--seeds", "0", "--steps", "2", "--batch-size", "4",
            "--ckpt-every", "1", "--calib-size", "4", "--gradient-batch", "4", "--max-timesteps", "2",
            "--num-prompts", "2", "--sample-batch", "2", "--threads", "1", "--work", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--docs", str(tmp_path / "RESULTS.md"), *extra]


@pytest.mark.slow
def test_one_cell_of_each_kind_runs_end_to_end_and_resumes(tmp_path, teacher, monkeypatch):
    import prune
    import train
    from benchmarks import reproduce_t2i as study

    docs = tmp_path / "RESULTS.md"
    docs.write_text(f"# Results\n\nHand-written.\n\n{rep.BEGIN}\nold\n{rep.END}\n\nAfter.\n")
    # An interrupted fine-tune: the KD row's run stopped after its first checkpoint (step 1 of 2).
    cfg = study.parse_args(argv(tmp_path, teacher, "--steps", "1"))
    s = study.T2IStudy(cfg)
    kd = parse_row(ROWS[1])
    partial = s.finetune(kd, 0, str(Path(s.pruned(kd, 0)["run"]) / "pipeline"))

    result = study.main(study.parse_args(argv(tmp_path, teacher)))
    cells = tmp_path / "work" / "cells"
    assert result["cells_done"] == result["cells_expected"] == 3 and not result["partial"]
    for name in ROWS:
        cell = json.loads((cells / f"{name}-s0.json").read_text())
        assert cell["steps"] == 2 and cell["params"] < cell["params_before"]
        assert set(cell["timing"]) >= {"prune_s", "finetune_s", "measure_s", "finetune_cpu_s"} and cell["seconds"] > 0
        assert 0 <= cell["attribute_accuracy"]["all"] <= 1 and np.isfinite(cell["fd_shapes"])
        assert result["rows"][name]["drop"]["fd_shapes"]["n"] == 1  # (the random teacher's accuracy may be 0)
    # the layer rows are at the target; the KD row shares the plain row's pruned model (one prune per base)
    layer = json.loads((cells / "layer:handcrafted@0.3-s0.json").read_text())
    assert layer["params"] <= 0.7 * layer["params_before"]
    kd_cell = json.loads((cells / f"{ROWS[1]}-s0.json").read_text())
    assert Path(kd_cell["run"]) == partial  # resumed in the interrupted run's folder, not a new one
    assert len(list((tmp_path / "work" / "runs" / f"{ROWS[1]}-s0").glob("0*"))) == 1
    from models.checkpoint import read_checkpoint
    ckpt = read_checkpoint(partial / "checkpoints" / "latest.pt")
    assert ckpt["train_state"]["step"] == 2 and ckpt["train_state"]["distill"]["teacher_checksum"]
    pruned = json.loads((cells / "pruned-layer:output-loss@0.3-s0.json").read_text())
    assert pruned["prune_argv"][pruned["prune_argv"].index("--criterion") + 1] == "output-loss"
    text = docs.read_text()
    assert "Hand-written" in text and "After." in text and "old" not in text and "Relative drop" in text

    # a rerun recomputes nothing (prune.py / train.py are never called) and writes the same rows
    monkeypatch.setattr(prune, "main", lambda *a, **k: pytest.fail("pruned again"))
    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("fine-tuned again"))
    again = study.main(study.parse_args(argv(tmp_path, teacher)))
    assert again["rows"] == result["rows"] and again["teacher_metrics"] == result["teacher_metrics"]


def test_default_rows_and_their_prune_flags():
    rows = default_rows()
    assert len(rows) == 15 and len(set(rows)) == 15
    assert [r for r in rows if "+" in r] == [f"layer:output-loss@0.5+{k}" for k in ("output", "feature",
                                                                                    "feature-normalized")]
    taylor = prune_args(parse_row("channel:taylor@0.3"), seed=2, calib_size=64, batch_size=32, thr=0.05,
                        max_timesteps=None)
    assert taylor == ["--seed", "2", "--num-samples", "0", "--method", "diff-pruning", "--ratio", "0.3",
                      "--batch-size", "32", "--thr", "0.0"]  # the paper's taylor: diff-pruning over every t
    hand = prune_args(parse_row("layer:handcrafted@0.5"), seed=0, calib_size=64, batch_size=32, thr=0.05,
                      max_timesteps=None)
    assert "--architecture" not in hand and hand[hand.index("--target-params") + 1] == "0.5"
    assert "--batch-size" not in prune_args(parse_row("channel:magnitude@0.3"), seed=0, calib_size=4, batch_size=4,
                                            thr=0.05, max_timesteps=None)
    from benchmarks.reproduce_t2i_config import distill_settings
    for mode in ("output", "feature", "feature-normalized"):  # equal weights across the KD variants
        d = distill_settings(parse_row(f"layer:output-loss@0.5+{mode}"), "T")
        assert d["lambda_task"] == d["lambda_out"] == 1.0 and d.get("lambda_feat", 1.0) == 1.0
    assert distill_settings(parse_row("layer:output-loss@0.5"), "T") == {}
    for bad in ("layer:magnitude@0.3", "channel:random@0.3+output", "layer:random@1.5", "layer:random"):
        with pytest.raises(ValueError, match="row"):
            parse_row(bad)


def _cell(name: str, seed: int, acc: float, clip: float, fd: float) -> dict:
    attrs = {a: acc for a in rep.ATTRIBUTES}
    return {"row": name, "seed": seed, "params": 700, "params_before": 1000, "attribute_accuracy": attrs,
            "clip_score": clip, "fd_shapes": fd, "kid_shapes": 0.01 * fd, "seconds": 60.0}


def test_relative_drops_and_verdicts_on_constructed_numbers():
    from scipy import stats

    teacher = _cell("teacher", 0, 0.8, 30.0, 10.0)
    a, b, c = "layer:output-loss@0.3", "layer:random@0.3", "layer:taylor@0.3"
    acc = {a: [0.76, 0.78, 0.74], b: [0.60, 0.62, 0.64], c: [0.70, 0.71, 0.69]}
    cells = {"teacher": teacher}
    for name, values in acc.items():
        for s, v in enumerate(values):
            cells[f"{name}-s{s}"] = _cell(name, s, v, 27.0 + s, 12.0 + s)
    rows = rep.rows_for(cells, [a, b, c], [0, 1, 2], teacher)
    # drops by hand: accuracy (0.8 - x) / 0.8; CLIP (30 - x) / 30; FD rises (x - 10) / 10
    assert rows[a]["drop"]["attribute_accuracy.all"]["values"] == pytest.approx([0.05, 0.025, 0.075])
    assert rows[b]["drop"]["clip_score"]["values"] == pytest.approx([0.1, 0.1 - 1 / 30, 0.1 - 2 / 30])
    assert rows[c]["drop"]["fd_shapes"]["mean"] == pytest.approx(0.3)
    # KID-shapes (unbiased, can be <= 0): its drop is the plain rise, 0.01 * (12 + s) - 0.1
    assert rows[c]["drop"]["kid_shapes"]["values"] == pytest.approx([0.02, 0.03, 0.04])
    negative = rep.rows_for(cells, [c], [0, 1, 2], {**teacher, "kid_shapes": -0.05})
    assert min(negative[c]["drop"]["kid_shapes"]["values"]) > 0  # worse than the teacher stays a positive drop
    assert rows[a]["params_removed"] == pytest.approx(0.3)
    table = rep.drop_table(rows)
    assert table[2].startswith(f"| {a} | 30.0% | 5.0 ± 2.5 |") and table[2].endswith("| 3 | 1 |")

    claim = rep.verdict(rows, a, [b, c])
    da = rows[a]["drop"]["attribute_accuracy.all"]["values"]
    p = [stats.ttest_ind(da, rows[o]["drop"]["attribute_accuracy.all"]["values"], equal_var=False).pvalue
         for o in (b, c)]
    holm = sorted(p)  # Holm over 2: min(1, 2 p_(1)), max(that, p_(2))
    holm = [min(1, 2 * holm[0]), max(min(1, 2 * holm[0]), holm[1])]
    got = sorted(v["p_holm"] for v in claim["comparisons"].values())
    assert got == pytest.approx(holm)
    assert claim["verdict"] == "supported" and all(v["a_better"] for v in claim["comparisons"].values())
    d = claim["comparisons"][f"{a} vs {b} (attribute_accuracy.all drop)"]
    assert d["diff"] == pytest.approx(np.mean(da) - np.mean([0.25, 0.225, 0.2]))
    assert set(claim["secondary"]) == {f"{a} vs {o} ({m} drop)" for o in (b, c) for m in ("clip_score", "fd_shapes")}
    # the other way round is contradicted; a missing row leaves the claim untested
    assert rep.verdict(rows, b, [a])["verdict"] == "contradicted"
    assert rep.verdict(rows, a, ["layer:handcrafted@0.3"])["verdict"].startswith("untested (rows missing")
    claims = rep.claims(rows)
    assert claims[next(k for k in claims if k.startswith("C5' (30%)"))]["verdict"].startswith("untested")
    # a teacher at 0 (an untrained stand-in) has no relative drop of that metric: '-' and an untested claim
    zero = {**teacher, "attribute_accuracy": {k: 0.0 for k in rep.ATTRIBUTES}}
    rows0 = rep.rows_for(cells, [a, b], [0, 1, 2], zero)
    assert rows0[a]["drop"]["attribute_accuracy.all"] is None and rows0[a]["drop"]["fd_shapes"]["n"] == 3
    assert rep.drop_table(rows0)[2].startswith(f"| {a} | 30.0% | - |")
    assert rep.verdict(rows0, a, [b])["verdict"].startswith("untested (the teacher's attribute_accuracy.all is 0")


def test_the_results_doc_commands_parse_and_the_block_is_in_place():
    import shlex

    from benchmarks import reproduce_t2i as study

    text = (Path(study.REPO) / "docs" / "RESULTS.md").read_text()
    section = text.split("## The text-to-image study (C5', C6', C1')", 1)[1].split(rep.END, 1)[0]
    assert rep.BEGIN in section
    commands = [c.strip() for c in section.replace("\\\n", " ").splitlines() if "-m benchmarks.reproduce_t2i" in c]
    assert len(commands) == 5  # two CPU shards, the GPU run, the report, the report after unpacking GPU cells
    for command in commands:
        words = shlex.split(command.split("#")[0])
        args = study.parse_args(words[words.index("benchmarks.reproduce_t2i") + 1:])
        assert args.rows == default_rows() and args.seeds == [0, 1, 2]
    shards = [study.parse_args(shlex.split(c)[4:]) for c in commands if "--shards" in c]
    assert sorted(a.shard for a in shards) == [0, 1] and all(a.threads == 1 for a in shards)


@pytest.mark.slow
def test_a_class_conditional_teacher_is_measured_by_kind_accuracy(tmp_path):
    """The ImageNet LDM's layout as the teacher: the channel row prunes on (latent, kind) pairs, fine-tunes with
    class labels, and every cell and table reads kind accuracy (metrics/class_shapes.py), not prompts."""
    from benchmarks import reproduce_t2i as study

    cls = write_tiny_pipeline(tmp_path / "cls", text=False, class_embedder=True, sample_size=16)
    args = argv(tmp_path, cls)
    args[args.index("--rows") + 1:args.index("--seeds")] = ["channel:diff-pruning@0.3"]
    args[args.index("--num-prompts") + 1] = "4"  # one sample per kind
    result = study.main(study.parse_args(args))
    teacher = result["teacher_metrics"]
    assert set(teacher["kind_accuracy"]) == {"all", "disc", "square", "triangle", "ring"} and "clip_score" not in teacher
    cell = json.loads((tmp_path / "work" / "cells" / "channel:diff-pruning@0.3-s0.json").read_text())
    assert cell["params"] < cell["params_before"] and np.isfinite(cell["fd_shapes"])
    row = result["rows"]["channel:diff-pruning@0.3"]
    assert set(row["values"]) == set(rep.CLASS_LOWER_IS_BETTER)
    md = (tmp_path / "results" / "reproduce_t2i.md").read_text()
    assert "kind acc all" in md and "CLIP-shapes" not in md
    bad = write_tiny_pipeline(tmp_path / "uncond", text=False)
    with pytest.raises(SystemExit, match="neither a text encoder nor a class for each of the 4 shape kinds"):
        study.main(study.parse_args(argv(tmp_path, bad)))


def test_class_cells_are_judged_on_kind_accuracy_with_fd_shapes_beside_it():
    def cell(name, seed, acc, fd):
        return {"row": name, "seed": seed, "params": 70, "params_before": 100, "seconds": 60,
                "kind_accuracy": {k: acc for k in ("all", "disc", "square", "triangle", "ring")},
                "fd_shapes": fd, "kid_shapes": 0.1}
    teacher = {**cell("teacher", 0, 0.8, 20.0), "params": 100}
    a, b = "channel:diff-pruning@0.3", "channel:random@0.3"
    cells = {f"{n}-s{s}": cell(n, s, v, 25.0 + s) for n, vals in ((a, [0.7, 0.72, 0.71]), (b, [0.5, 0.52, 0.48]))
             for s, v in enumerate(vals)}
    rows = rep.rows_for(cells, [a, b], [0, 1, 2], teacher)
    assert rows[a]["drop"]["kind_accuracy.all"]["values"] == pytest.approx([0.125, 0.1, 0.1125])
    claim = rep.verdict(rows, a, [b])
    assert list(claim["comparisons"]) == [f"{a} vs {b} (kind_accuracy.all drop)"] and claim["verdict"] == "supported"
    assert list(claim["secondary"]) == [f"{a} vs {b} (fd_shapes drop)"]
    assert rep.drop_table(rows)[0].startswith("| row | params removed | kind acc all | kind acc disc |")
    assert rep.value_table(rows, teacher)[2].startswith("| teacher (dense) | 0.000M | 0.800 | 0.800 |")


def test_cells_made_with_other_settings_are_refused_and_missing_pruned_folders_redone(tmp_path, teacher, monkeypatch):
    """A saved cell is reused only under the settings it depends on (teacher files, pruning, fine-tune,
    measurement), refused in one line otherwise; a pruned cell restored without its folder is pruned again;
    the cache link works for a second study on the same --work; bad numbers are refused before any work."""
    import prune
    from benchmarks import reproduce_t2i as study

    cfg = study.parse_args(argv(tmp_path, teacher))
    first = study.T2IStudy(cfg)
    study.T2IStudy(cfg)  # the runs/cache link (dangling until something caches) does not break a second shard
    row = parse_row("layer:handcrafted@0.3")
    cell = first.pruned(row, 0)
    assert cell["settings"]["prune"]["calib_size"] == 4 and cell["device"] == "cpu"
    assert Path(cell["run"]).parent == tmp_path / "work" / "prune" / "pruned-layer:handcrafted@0.3-s0"
    other = study.T2IStudy(study.parse_args(argv(tmp_path, teacher, "--calib-size", "8")))
    with pytest.raises(SystemExit, match=r"was made with other settings \(prune.calib_size\)"):
        other.pruned(row, 0)
    assert study.T2IStudy(study.parse_args(argv(tmp_path, teacher, "--lr", "0.5"))).pruned(row, 0) == cell  # not its part
    import shutil
    shutil.rmtree(Path(cell["run"]))  # as if the cell came from another machine
    calls = []
    real = prune.main
    monkeypatch.setattr(prune, "main", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = first.pruned(row, 0)
    assert calls == [1] and again["replaces"]["run"] == cell["run"] and (Path(again["run"]) / "pipeline").is_dir()
    for bad in (["--num-prompts", "1"], ["--sample-batch", "0"], ["--budget", "0"], ["--num-prompts", "9999"],
                ["--prompts", str(tmp_path / "none.txt")]):
        with pytest.raises(SystemExit, match="reproduce_t2i: "):
            study.check_args(study.parse_args(argv(tmp_path, teacher, *bad)))

