"""models/lineage.py: a pruned model's root teacher through channel pruning, layer pruning and fine-tuning."""
from __future__ import annotations

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from models.lineage import label, lineage, root_teacher

CONFIG = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), norm_groups=2)


def _save(path, meta):
    torch.manual_seed(0)
    save_checkpoint(path, config=CONFIG, state_dict=UNet(CONFIG).state_dict(), meta=meta)
    return str(path)


def test_root_teacher_through_channel_layer_and_fine_tune(tmp_path):
    teacher = _save(tmp_path / "teacher.pt", {"train_config": {"model": "tiny"}})
    (tmp_path / "p1").mkdir(), (tmp_path / "p2").mkdir(), (tmp_path / "ft").mkdir()
    channel = _save(tmp_path / "p1" / "pruned.pt", {"source_model": teacher, "method": "diff-pruning"})
    layer = _save(tmp_path / "p2" / "pruned.pt", {"source_model": channel, "method": "layer"})
    tuned = _save(tmp_path / "ft" / "model.pt", {"train_config": {"model": layer}})
    assert [s.kind for s in lineage(tuned)] == ["train", "prune", "prune", "train"]
    assert root_teacher(tuned) == root_teacher(layer) == root_teacher(channel) == teacher
    assert root_teacher(teacher) is None  # trained from a preset: not a pruned model
    assert label(tuned) == "ft/model (from teacher)"


def test_missing_sources_and_cycles_end_the_walk(tmp_path):
    gone = _save(tmp_path / "a.pt", {"source_model": str(tmp_path / "moved_away.pt")})
    assert root_teacher(gone) == str(tmp_path / "moved_away.pt")
    loop = tmp_path / "loop.pt"
    _save(loop, {"train_config": {"model": str(loop)}})
    assert len(lineage(loop)) == 1


def test_evaluate_defaults_reference_to_the_root_teacher_and_labels_rows(tmp_path):
    import evaluate
    from metrics.evaluation import format_table

    teacher = _save(tmp_path / "teacher.pt", {"train_config": {"model": "tiny"}})
    (tmp_path / "p").mkdir(), (tmp_path / "ft").mkdir()
    pruned = _save(tmp_path / "p" / "pruned.pt", {"source_model": teacher})
    tuned = _save(tmp_path / "ft" / "model.pt", {"train_config": {"model": pruned}})
    cfg, _ = evaluate.parse_args([pruned, tuned])
    assert cfg.reference == teacher
    assert evaluate.parse_args([pruned, "--reference", tuned])[0].reference == tuned  # an explicit one wins
    preset_root = _save(tmp_path / "q.pt", {"source_model": "tiny"})
    assert evaluate.parse_args([preset_root])[0].reference is None  # a preset is no reference
    table = format_table([{"name": "1-model", "label": label(tuned)}, {"name": "0-teacher"}])
    assert "ft/model (from teacher)" in table and "0-teacher" in table


def test_train_distillation_teacher_defaults_to_the_root_teacher(tmp_path):
    import train

    teacher = _save(tmp_path / "teacher.pt", {"train_config": {"model": "tiny"}})
    (tmp_path / "p").mkdir()
    pruned = _save(tmp_path / "p" / "pruned.pt", {"source_model": teacher})
    cfg, _ = train.parse_args(["--model", pruned, "--distill", "output"])
    assert cfg.teacher == teacher
    assert train.parse_args(["--model", pruned])[0].teacher is None  # no distillation: no teacher
    assert train.parse_args(["--model", pruned, "--distill", "output", "--teacher", pruned])[0].teacher == pruned


@pytest.mark.slow  # two prune.py runs: 6 s at load average 11 on 2 cores
def test_prune_records_the_root_and_prints_next_commands_with_it(tmp_path, capsys):
    """Channel pruning then a second pruning: the second run's folder, checkpoint and next commands name the
    root teacher, not the un-fine-tuned intermediate model (which draws noise); the widths go to widths.txt."""
    import prune
    from models.checkpoint import read_checkpoint
    from tests.script_helpers import small_checkpoint

    teacher = small_checkpoint(tmp_path / "teacher.pt")
    first = prune.main(prune.parse_args(["--model", str(teacher), "--method", "magnitude", "--num-samples", "0",
                                         "--out", str(tmp_path / "p")]))
    second = prune.main(prune.parse_args(["--model", str(first / "pruned.pt"), "--method", "magnitude",
                                          "--ratio", "0.2", "--num-samples", "0", "--out", str(tmp_path / "p")]))
    assert second.name.endswith("-teacher-magnitude")
    assert read_checkpoint(second / "pruned.pt")["meta"]["root_teacher"] == str(teacher)
    out = capsys.readouterr().out
    evaluate_line = [line for line in out.splitlines() if "python evaluate.py" in line][-1]
    assert evaluate_line.split("--reference")[1].split()[0].endswith("teacher.pt")
    assert (second / "widths.txt").is_file()
    assert "stage" in out and "down.0" in out and "widths.txt" in out


def test_evaluate_labels_name_the_rows(tmp_path, capsys):
    import json

    import evaluate
    from common.cli import UserError
    from tests.script_helpers import eval_config, small_checkpoint

    a, b = small_checkpoint(tmp_path / "a.pt"), small_checkpoint(tmp_path / "b.pt", seed=1)
    assert evaluate.parse_args([str(a), str(b), "--labels", "teacher", "pruned 0.3"])[0].labels == ("teacher", "pruned 0.3")
    run = evaluate.main(eval_config(tmp_path, [a, b], labels=("teacher", "pruned 0.3")))
    rows = json.loads((run / "report.json").read_text())["models"]
    assert [r["label"] for r in rows] == ["teacher", "pruned 0.3"] and "pruned 0.3" in capsys.readouterr().out
    with pytest.raises(UserError, match="--labels gives 1 names for 2 models"):
        evaluate.main(eval_config(tmp_path, [a, b], labels=("teacher",)))
