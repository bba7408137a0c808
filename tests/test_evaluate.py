"""evaluate.py: the JSON report, resume, sharding, FID through a supplied Inception file, fid-stats."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from metrics.evaluation import SamplerConfig
from models.checkpoint import save_checkpoint
from models.ddpm.config import ModelConfig
from metrics.inception import FIDInceptionV3
from models.ddpm.unet import UNet

REPO = Path(__file__).resolve().parents[1]
REPORT_FIELDS = {"name", "source", "format", "ema", "params", "params_M", "macs_paper", "macs_paper_G", "macs_full",
                 "macs_full_G", "seconds_per_image", "seconds_per_step", "model_calls_per_image", "num_samples",
                 "samples", "grid", "fid", "fid_skipped", "ssim_consistency", "ssim_skipped", "heldout_loss",
                 "heldout_skipped"}


def small_model(path: Path, seed: int, widths=()) -> str:
    torch.manual_seed(seed)
    config = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                         norm_groups=2, widths=widths)
    save_checkpoint(path, config=config, state_dict=UNet(config).state_dict())
    return str(path)


def config(tmp_path: Path, models, reference=None, **kw) -> evaluate.EvalConfig:
    base = dict(models=tuple(models), reference=reference, num_samples=4, sampler=SamplerConfig(steps=3),
                batch_size=3, heldout_images=4, out=str(tmp_path / "eval"))
    base.update(kw)
    return evaluate.EvalConfig(**base)


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_report_has_every_field_and_sensible_values(tmp_path):
    teacher = small_model(tmp_path / "teacher.pt", 0)
    student = small_model(tmp_path / "student.pt", 1, widths={"down.0.block.0.conv1": 4, "temb.dense.0": 20})
    run = evaluate.main(config(tmp_path, [teacher, student], reference=teacher))
    report = json.loads((run / "report.json").read_text())
    assert [r["source"] for r in report["models"]] == [teacher, student]
    for row in report["models"]:
        assert REPORT_FIELDS <= set(row), REPORT_FIELDS - set(row)
        assert Path(row["grid"]).is_file() and len(list(Path(row["samples"]).glob("*.png"))) == 4
        assert row["fid"] is None and "no --fid-stats" in row["fid_skipped"]
        assert row["macs_full"] > row["macs_paper"] > 0 and row["heldout_loss"] > 0
    teacher_row, student_row = report["models"]
    assert teacher_row["ssim_consistency"] == pytest.approx(1.0)  # its own samples
    assert student_row["ssim_consistency"] < 0.999  # another network from the same noise
    assert student_row["params"] < teacher_row["params"] and student_row["macs_paper"] < teacher_row["macs_paper"]
    assert report["environment"]["torch"].startswith("2.")


def test_resume_regenerates_only_missing_samples_identically(tmp_path):
    model = small_model(tmp_path / "m.pt", 0)
    run = evaluate.main(config(tmp_path, [model]))
    folder = next(run.glob("*/samples"))
    before = pngs(folder)
    (folder / "000001.png").unlink()
    (folder / "000003.png").unlink()
    (run / "report.json").unlink()  # killed while sampling: no report yet (a finished one is never rewritten)
    evaluate.main(config(tmp_path, [model]), resume=str(run))
    after = pngs(folder)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # the full-size Inception on real 299x299 inputs: about 20 CPU-seconds
def test_fid_with_a_supplied_inception_file_and_fid_stats_command(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    stats = tmp_path / "stats.npz"
    evaluate.run_command(*evaluate.parse_args(["fid-stats", str(images), "--out", str(stats),
                                               "--inception-weights", str(weights)]))
    with np.load(stats) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
    model = small_model(tmp_path / "m.pt", 0)
    run = evaluate.main(config(tmp_path, [model], fid_stats=str(stats), inception_weights=str(weights)))
    row = json.loads((run / "report.json").read_text())["models"][0]
    # Random weights are not the FID release: the number is a Frechet distance under another name.
    assert row["fid"] is None and np.isfinite(row["fd_custom_inception"]) and row["fd_custom_inception"] > 0
    assert "not the FID Inception release" in row["fid_skipped"]
    # Statistics record the weights they were computed with: other weights at evaluation time are refused.
    torch.manual_seed(1)
    other = tmp_path / "other_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), other)
    with pytest.raises(ValueError, match="computed with other Inception weights"):
        evaluate.main(config(tmp_path, [model], fid_stats=str(stats), inception_weights=str(other)))


def test_missing_inception_weights_are_an_error_before_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import metrics.inception as inception

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    model = small_model(tmp_path / "m.pt", 0)
    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(inception.InceptionWeightsUnavailable, match=inception.FID_WEIGHTS_URL):
        evaluate.main(config(tmp_path, [model], fid_stats=str(stats)))
    assert not (tmp_path / "eval").exists()  # nothing sampled or written


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["m.pt", "--num-samples", "1"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        evaluate.main(config(tmp_path, [str(tmp_path / "missing.pt")]))
    assert not (tmp_path / "eval").exists()  # nothing written for a model that does not load
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate.main(config(tmp_path, [small_model(tmp_path / "m.pt", 0)]), resume=str(tmp_path / "nope"))


@pytest.mark.slow
def test_sharded_sampling_equals_one_process(tmp_path):
    model = small_model(tmp_path / "m.pt", 0)
    args = [model, "--num-samples", "5", "--steps", "3", "--batch-size", "2", "--heldout-images", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "evaluate.py"), *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = evaluate.main(evaluate.parse_args([*args, "--out", str(tmp_path / "one")])[0])
    sharded = next((tmp_path / "ddp").iterdir())
    a, b = pngs(next(single.glob("*/samples"))), pngs(next(sharded.glob("*/samples")))
    assert a.keys() == b.keys() and len(a) == 5
    assert all(np.array_equal(a[k], b[k]) for k in a)
