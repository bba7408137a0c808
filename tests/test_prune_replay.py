"""prune.py's run folder says exactly how its model was made, and ``--replay`` remakes it: the pruned checkpoint's
meta and spec.json hold the spec and what it came to (the ratio a target reached, never an unused default), and
``python prune.py --replay RUN`` writes the bit-identical state dict into a NEW folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prune as prune_script
from common import cli
from models.checkpoint import read_checkpoint, save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from pruning import ChannelPruning
from pruning.layers import LayerPruning


def small_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                         norm_groups=4)
    save_checkpoint(path, config=config, state_dict=UNet(config).state_dict())
    return path


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


CASES = {
    "channel": ["--method", "diff-pruning", "--target-params", "0.4", "--batch-size", "4", "--micro-batch", "8",
                "--max-timesteps", "3", "--ignored", "conv_out"],
    "layer": ["--method", "layer", "--criterion", "output-loss", "--target-params", "0.3", "--calib-size", "4",
              "--additivity-subsets", "0"],
}


@pytest.mark.slow  # two prune.py runs each (load, prune, write): a few CPU-seconds
@pytest.mark.parametrize("case", sorted(CASES))
def test_meta_holds_the_spec_and_replay_is_bit_identical(tmp_path, case, capsys):
    teacher = small_teacher(tmp_path / "teacher.pt")
    out = tmp_path / "runs"
    argv = ["--model", str(teacher), "--num-samples", "0", "--out", str(out), "--seed", "3"] + CASES[case]
    cfg = prune_script.parse_args(argv)
    run = prune_script.main(cfg)
    meta = read_checkpoint(run / "pruned.pt")["meta"]
    saved = json.loads((run / "spec.json").read_text())
    assert meta["pipeline"] == saved["pipeline"] == case
    assert meta["spec"] == saved["spec"] == cfg.spec.to_dict() and meta["spec"]["seed"] == 3
    if case == "channel":
        assert meta["spec"]["ratio"] is None and meta["spec"]["target_params"] == 0.4  # asked: a target, no ratio
        applied = meta["applied"]["ratio"]
        assert applied == saved["applied"]["ratio"] == meta["ratio"] != 0.3  # what the target came to
        report = json.loads((run / "report.json").read_text())
        assert report["target"]["ratio"] == applied and abs(report["target"]["achieved"] - 0.4) < 0.05
        assert meta["applied"]["timesteps"] == 3 and meta["applied"]["order_source"] == "ddim"
    else:
        assert meta["spec"]["solver"] == "knapsack" and meta["applied"]["removed"]  # the solver applied, filled in
    assert saved["settings"]["model"] == str(teacher) and "out" not in saved["settings"]

    capsys.readouterr()
    assert cli.run(prune_script.main, prune_script.parse_args, ["--replay", str(run)]) == 0
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 2 and runs[0] == run  # a NEW folder beside it; the first one untouched
    assert same_weights(run / "pruned.pt", runs[1] / "pruned.pt")
    assert json.loads((runs[1] / "spec.json").read_text())["spec"] == saved["spec"]


def test_replay_of_a_folder_without_a_spec_is_one_line(tmp_path, capsys):
    assert cli.run(prune_script.main, prune_script.parse_args, ["--replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --replay") and "spec.json" in err and "\n" not in err


def test_replay_reads_the_out_folder_and_device(tmp_path):
    run = tmp_path / "runs" / "00001-x"
    run.mkdir(parents=True)
    spec = LayerPruning(criterion="random", target_params=0.3)
    (run / "spec.json").write_text(json.dumps({"pipeline": "layer", "spec": spec.to_dict(),
                                               "settings": {"model": "tiny", "data": "shapes"}}))
    cfg = prune_script.parse_args(["--replay", str(run)])
    assert cfg.spec == spec and cfg.model == "tiny" and Path(cfg.out) == (tmp_path / "runs").resolve()
    cfg = prune_script.parse_args(["--replay", str(run), "--out", str(tmp_path / "elsewhere")])
    assert cfg.out == str(tmp_path / "elsewhere") and isinstance(prune_script.PruneConfig().spec, ChannelPruning)
