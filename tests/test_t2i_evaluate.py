"""evaluate.py --prompts / --class-labels (metrics/t2i_evaluation.py) on a tiny random-weight pipeline: the
report's CLIP score is metrics.clip_score's on the saved PNGs, its params are the U-Net's, bad input is refused."""
import argparse
import json

import pytest
import torch
from PIL import Image

import evaluate
from common.cli import UserError
from metrics.clip_score import clip_score
from metrics.t2i_evaluation import T2IEvalConfig, evaluate_pipeline, parse_class_labels
from models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from models.clip.load import load_clip_and_tokenizer, save_clip
from models.pipelines import load_latent
from tests.golden_recipe import load_entry
from tests.tiny_pipeline import write_tiny_pipeline, write_tokenizer

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    pipe = write_tiny_pipeline(root / "pipe")
    torch.manual_seed(0)
    cfg = CLIPConfig(text=CLIPTextConfig.from_transformers_config(load_entry("clip_text_proj")["config"]),
                     vision=CLIPVisionConfig.from_transformers_config(load_entry("clip_vision_proj")["config"]),
                     projection_dim=24)
    clip = save_clip(CLIPModel(cfg).eval(), root / "clip")
    write_tokenizer(clip)  # the same made-up 1000-token vocabulary as the pipeline's (BOS 998, EOS 999)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")  # a trailing blank line is skipped
    return root, pipe, clip, prompts


def test_report_clip_score_and_params_match_hand_computation(folders):
    root, pipe, clip, prompts = folders
    argv = ["--model", str(pipe), "--prompts", str(prompts), "--steps", "2", "--clip", str(clip),
            "--eval-size", "16", "--out", str(root / "runs")]
    cfg = evaluate.parse_args(argv)[0]  # evaluate.py dispatches --prompts here
    assert isinstance(cfg, T2IEvalConfig) and cfg.steps == 2 and cfg.num_images_per_prompt == 1
    run = evaluate.run_command(cfg)
    report = json.loads((run / "report.json").read_text())
    assert report["num_images"] == 2 and report["image_size"] == [16, 16]
    assert (run / "report.md").read_text().startswith("# Text-to-image evaluation")
    saved = [Image.open(run / "images" / f"{i:05d}.png") for i in range(2)]
    model, tokenizer = load_clip_and_tokenizer(clip, kind="CLIPModel")
    want = clip_score(model, tokenizer, saved, PROMPTS)
    assert report["clip_score"] == pytest.approx(want.score, abs=1e-6)
    assert report["clip_mean_cosine"] == pytest.approx(want.mean_cosine, abs=1e-7)
    unet = load_latent(str(pipe)).unet
    assert report["params"] == sum(p.numel() for p in unet.parameters())
    assert report["macs_full"] >= report["macs_paper"] > 0


@pytest.mark.parametrize("change, message", [
    ({"prompts": "missing.txt"}, "no such file"),
    ({"prompts": "empty.txt"}, "holds no caption"),
    ({"guidance": 0.5}, "guidance scale must be >= 1"),
    ({"prompts": None, "class_labels": (0, 1)}, "not class-conditional"),
    ({"class_labels": (0,)}, "exactly one of"),
    ({"fid_reference": "nowhere.npz"}, "--fid-reference nowhere.npz"),
    ({"prompts": None, "class_labels": (0,), "clip": "ViT-g/14"}, "need captions"),
])
def test_bad_input_is_refused_before_any_weight_is_read(folders, monkeypatch, change, message):
    root, pipe, clip, prompts = folders
    (root / "empty.txt").write_text("\n  \n")
    monkeypatch.chdir(root)
    import metrics.t2i_evaluation as t2i
    monkeypatch.setattr(t2i, "load_pipeline", lambda cfg: pytest.fail("weights read before the check"))
    cfg = T2IEvalConfig(model=str(pipe), prompts=str(prompts), steps=2, out=str(root / "runs"))
    with pytest.raises(UserError, match=message):
        evaluate_pipeline(T2IEvalConfig(**{**cfg.__dict__, **change}))


def test_class_labels_on_a_class_conditional_pipeline(tmp_path):
    pipe = write_tiny_pipeline(tmp_path / "pipe", text=False, class_cond=True)
    cfg = evaluate.parse_args(["--model", str(pipe), "--class-labels", "0,3", "--num-images-per-prompt", "2",
                               "--steps", "2", "--out", str(tmp_path / "runs")])[0]
    assert cfg.class_labels == (0, 3)
    report = json.loads((evaluate.run_command(cfg) / "report.json").read_text())
    assert report["num_images"] == 4 and "clip_score" not in report
    assert report["params"] == sum(p.numel() for p in load_latent(str(pipe)).unet.parameters())


def test_class_labels_flag():
    assert parse_class_labels("3") == (0, 1, 2)
    assert parse_class_labels("0,5,7") == (0, 5, 7) and parse_class_labels("7,") == (7,)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "x", "--class-labels", "a,b"])
    for empty in ("0", "-0"):  # a count of zero images, not label 0 ("0,")
        with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
            parse_class_labels(empty)
    assert parse_class_labels("0,") == (0,)


class FakeInception:
    """A fixed random projection to 8 features: FID's arithmetic without the 20-second Inception and 2048-wide
    sqrtm (the test lowers FID_FEATURE_DIM to match)."""
    is_fid_release = False

    def __call__(self, x):
        g = torch.Generator().manual_seed(0)
        return x.flatten(1) @ torch.randn(x[0].numel(), 8, generator=g)


def test_fid_of_the_same_images_is_zero_and_a_bad_reference_fails_before_sampling(folders, monkeypatch):
    root, pipe, clip, prompts = folders
    import metrics.inception
    monkeypatch.setattr(metrics.inception, "load_fid_inception", lambda *a, **k: FakeInception())
    monkeypatch.setattr(metrics.inception, "FID_FEATURE_DIM", 8)
    argv = ["--model", str(pipe), "--prompts", str(prompts), "--steps", "2", "--eval-size", "16",
            "--num-images-per-prompt", "6", "--out", str(root / "fid")]  # 12 images: a full-rank 8x8 covariance
    first = evaluate.run_command(evaluate.parse_args(argv)[0])
    # The same seed and settings redraw the same images: FID against them is 0 (up to sqrtm's round-off).
    assert json.loads((first / "report.json").read_text())["num_images"] == 12
    again = evaluate.run_command(evaluate.parse_args(argv + ["--fid-reference", str(first / "images")])[0])
    report = json.loads((again / "report.json").read_text())
    assert report["fd_custom_inception"] == pytest.approx(0.0, abs=1e-3) and report["fid_images"] == 12
    import numpy as np
    np.savez(root / "small.npz", mu=np.zeros(3), sigma=np.eye(3))
    import metrics.t2i_evaluation as t2i
    monkeypatch.setattr(t2i, "load_pipeline", lambda cfg: pytest.fail("weights read before the check"))
    with pytest.raises(UserError, match="8-dimensional"):
        evaluate.run_command(evaluate.parse_args(argv + ["--fid-reference", str(root / "small.npz")])[0])
