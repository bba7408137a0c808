"""evaluate.py as a user meets it: samples are keyed by the weights and every sampling setting, so a resume
never mixes models or settings; one process per folder; FID inputs and image folders are checked before any
sampling; fid-stats is a subcommand. (tests/test_evaluate.py holds the report and metric checks.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from common import cli
from common.runs import RunLock, RunLocked
from metrics.evaluation import SamplerConfig, SampleFolderMismatch, load_samples
from script_helpers import ddim_state_dict_with_8_groups, eval_config, run_cli, small_checkpoint


def test_evaluate_resume_refuses_samples_of_another_model_with_the_same_name(tmp_path):
    a = small_checkpoint(tmp_path / "a" / "pruned.pt", seed=0)
    run = evaluate.main(eval_config(tmp_path, [a]))
    b = small_checkpoint(tmp_path / "b" / "pruned.pt", seed=1)  # same file name, other weights
    before = {p.name: p.read_bytes() for p in (run / "0-pruned" / "samples").glob("*.png")}
    with pytest.raises(SampleFolderMismatch, match="weights"):
        evaluate.main(eval_config(tmp_path, [b]), resume=str(run))
    after = {p.name: p.read_bytes() for p in (run / "0-pruned" / "samples").glob("*.png")}
    assert before == after  # nothing overwritten, nothing reported
    # The same model resumes a run interrupted before its report (a finished run is never rewritten,
    # and a resume continues the same evaluation only, so more samples are a new evaluation).
    (run / "report.json").unlink()
    with pytest.raises(cli.UserError, match="num_samples 2 vs 3"):
        evaluate.main(eval_config(tmp_path, [a], num_samples=3), resume=str(run))
    evaluate.main(eval_config(tmp_path, [a]), resume=str(run))
    assert len(load_samples(run / "0-pruned" / "samples", 2)) == 2 and (run / "report.json").is_file()


def test_evaluate_resume_refuses_samples_drawn_with_other_settings(tmp_path):
    a = small_checkpoint(tmp_path / "a.pt")
    run = evaluate.main(eval_config(tmp_path, [a]))
    for change, named in [(dict(steps=3), "--steps 2 vs 3"), (dict(seed=1), "--seed 0 vs 1"),
                          (dict(clip_x0=True), "--clip-x0 False vs True"), (dict(eta=0.5), "--eta 0.0 vs 0.5"),
                          (dict(skip_type="quad"), "--skip-type uniform vs quad"), (dict(sampler="ddpm"), "--sampler")]:
        sampler = SamplerConfig(**{"steps": 2, **change})
        with pytest.raises(SampleFolderMismatch, match=named):
            evaluate.main(eval_config(tmp_path, [a], sampler=sampler), resume=str(run))


def test_evaluate_resume_refuses_a_folder_without_a_sampling_record(tmp_path):
    a = small_checkpoint(tmp_path / "a.pt")
    run = evaluate.main(eval_config(tmp_path, [a]))
    (run / "0-a" / "samples" / "sampling.json").unlink()  # e.g. a folder from before the record existed
    with pytest.raises(SampleFolderMismatch, match="no sampling.json"):
        evaluate.main(eval_config(tmp_path, [a]), resume=str(run))


def test_evaluate_prints_the_assumed_fields_and_uses_the_override(tmp_path, capsys):
    path, _ = ddim_state_dict_with_8_groups(tmp_path)
    cfg, _ = evaluate.parse_args([str(path), "--norm-groups", "8", "--num-samples", "2", "--steps", "1",
                                  "--heldout-images", "0", "--out", str(tmp_path / "eval")])
    run = evaluate.main(cfg)
    printed = capsys.readouterr().out
    assert "norm_groups=8 from the caller" in printed
    assert json.loads((run / "report.json").read_text())["config"]["norm_groups"] == 8


def test_evaluate_takes_the_lock_and_removes_partial_pngs(tmp_path):
    a = small_checkpoint(tmp_path / "a.pt")
    run = evaluate.main(eval_config(tmp_path, [a]))
    partial = run / "0-a" / "samples" / "000001.tmp.png"
    partial.write_bytes(b"\x89PNG half")
    (run / "report.json").unlink()  # killed while sampling: no report yet
    with RunLock(run, "evaluating"):
        with pytest.raises(RunLocked):
            evaluate.main(eval_config(tmp_path, [a]), resume=str(run))
    evaluate.main(eval_config(tmp_path, [a]), resume=str(run))
    assert not partial.exists()


def test_truncated_png_is_named(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i:06d}.png")
    data = (folder / "000001.png").read_bytes()
    (folder / "000001.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"000001\.png"):
        load_samples(folder, 2)
    from metrics.fid import ImageFolder
    with pytest.raises(OSError, match=r"000001\.png"):
        ImageFolder(sorted(folder.glob("*.png")))[1]


def test_fid_inputs_are_checked_before_any_sampling(tmp_path, capsys):
    model = small_checkpoint(tmp_path / "m.pt")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(cli.UserError, match="2048"):
        evaluate.main(eval_config(tmp_path, [model], fid_stats=str(wrong), inception_weights=str(wrong)))
    with pytest.raises(cli.UserError, match="--inception-weights .*no such file"):
        evaluate.main(eval_config(tmp_path, [model], fid_stats=str(wrong), inception_weights=str(tmp_path / "no.pth")))
    assert not (tmp_path / "eval").exists()  # nothing sampled
    status, _, err = run_cli(evaluate, [str(model), "--fid-stats", str(tmp_path / "stats.np")], capsys)
    assert status == 2 and ".npz" in err
    status, _, err = run_cli(evaluate, ["fid-stats", str(tmp_path), "--out", "s.txt"], capsys)
    assert status == 2 and ".npz" in err
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    status, _, err = run_cli(evaluate, ["fid-stats", str(tmp_path), "--out", str(wrong)], capsys)
    assert status == 2 and "exists" in err and np.load(wrong)["mu"].shape == (64,)  # never overwritten


def test_fid_stats_is_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    assert "fid-stats" in capsys.readouterr().out
    cfg, _ = evaluate.parse_args(["fid-stats", "imgs", "--out", "s.npz"])
    assert isinstance(cfg, evaluate.FidStatsConfig) and cfg.image_dir == "imgs"
    cfg, _ = evaluate.parse_args(["a.pt", "--num-samples", "4"])  # the default subcommand
    assert cfg.models == ("a.pt",) and cfg.num_samples == 4


def test_fid_data_with_a_truncated_image_fails_before_sampling(tmp_path, monkeypatch):
    import metrics.inception as inception

    class FakeInception(torch.nn.Module):  # stands in for the 91 MB network: only the data path is tested
        weights_path, weights_sha256, is_fid_release = "fake.pth", "6726825d" + "0" * 56, True

        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    monkeypatch.setattr(inception, "load_fid_inception", lambda *a, **k: FakeInception())
    images = tmp_path / "real"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    data = (images / "2.png").read_bytes()
    (images / "2.png").write_bytes(data[: len(data) // 2])
    model = small_checkpoint(tmp_path / "m.pt")
    with pytest.raises(OSError, match=r"2\.png"):
        evaluate.main(eval_config(tmp_path, [model], fid_data=str(images)))
    assert not list((tmp_path / "eval").rglob("*.png"))  # no sample was drawn
