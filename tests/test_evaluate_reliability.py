"""evaluate.py's reliability: a model with a non-finite weight is refused before sampling, naming the tensor;
non-finite samples are never scored; --resume continues the same evaluation only (models by weights hash,
same settings) and never rewrites a finished report; a reference of another resolution, and requests too
large for the disk or memory, fail before sampling; --steps is bounded at parse time."""
from __future__ import annotations

import shutil

import pytest
import torch

import evaluate
from common import cli
from metrics import evaluation
from models.checkpoint import save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from script_helpers import SMALL, eval_config, small_checkpoint


def poisoned_checkpoint(path, name: str):
    torch.manual_seed(0)
    model = UNet(ModelConfig(**SMALL))
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = float("inf")
    save_checkpoint(path, config=model.config, state_dict=model.state_dict())
    return path


def never_sample(*args, **kwargs):
    raise AssertionError("sampling started")


@pytest.mark.parametrize("name", ["down.0.block.0.temb_proj.weight", "temb.dense.1.bias"])
def test_a_model_with_a_non_finite_weight_is_refused_before_sampling(tmp_path, monkeypatch, name):
    monkeypatch.setattr(evaluate, "generate_samples", never_sample)
    bad = poisoned_checkpoint(tmp_path / "bad.pt", name)
    with pytest.raises(cli.UserError, match=rf"non-finite.*'{name}'"):
        evaluate.main(eval_config(tmp_path, [small_checkpoint(tmp_path / "ok.pt"), bad]))


def test_non_finite_samples_are_never_scored(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "sample", lambda *a, indices, image_shape, **k: torch.full((len(indices), *image_shape), float("nan")))
    with pytest.raises(FloatingPointError, match=r"non-finite samples"):
        evaluate.main(eval_config(tmp_path, [small_checkpoint(tmp_path / "ok.pt")]))
    assert not list((tmp_path / "eval").rglob("report.json"))


@pytest.fixture
def finished(tmp_path):
    teacher, student = small_checkpoint(tmp_path / "teacher.pt", seed=0), small_checkpoint(tmp_path / "student.pt", seed=1)
    run = evaluate.main(eval_config(tmp_path, [teacher, student], num_samples=4))
    return run, teacher, student, (run / "report.json").read_bytes()


def test_resuming_a_finished_run_with_another_model_is_refused(tmp_path, finished):
    run, teacher, student, report = finished
    other = small_checkpoint(tmp_path / "other name.pt", seed=2)
    with pytest.raises(cli.UserError, match=r"continues the same evaluation only.*the models") as err:
        evaluate.main(eval_config(tmp_path, [teacher, other], num_samples=4), resume=str(run))
    assert "\n" not in str(err.value) and (run / "report.json").read_bytes() == report


def test_resuming_a_finished_run_with_other_settings_is_refused(tmp_path, finished):
    run, teacher, student, report = finished
    with pytest.raises(cli.UserError, match=r"num_samples 4 vs 2"):
        evaluate.main(eval_config(tmp_path, [teacher, student], num_samples=2, heldout_images=0), resume=str(run))
    assert (run / "report.json").read_bytes() == report


def test_the_same_model_under_another_name_resumes_and_a_finished_report_stands(tmp_path, finished, capsys):
    run, teacher, student, report = finished
    renamed = shutil.copy(student, tmp_path / "renamed.pt")  # same weights: the same evaluation
    assert evaluate.main(eval_config(tmp_path, [teacher, renamed], num_samples=4), resume=str(run)) == run
    assert "already finished" in capsys.readouterr().out and (run / "report.json").read_bytes() == report


def test_a_reference_of_another_resolution_fails_before_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "generate_samples", never_sample)
    small, big = small_checkpoint(tmp_path / "s.pt"), small_checkpoint(tmp_path / "b.pt", image_size=32)
    with pytest.raises(cli.UserError, match=r"--reference .*\(3, 32, 32\).*\(3, 16, 16\)"):
        evaluate.main(eval_config(tmp_path, [small], reference=str(big)))


def test_a_request_too_large_for_the_machine_is_refused_before_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "generate_samples", never_sample)
    with pytest.raises(cli.UserError, match=r"--num-samples 100000000: .*GiB"):
        evaluate.main(eval_config(tmp_path, [small_checkpoint(tmp_path / "s.pt")], num_samples=100_000_000))
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())


def test_steps_beyond_the_schedule_fail_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["x.pt", "--steps", "5000"])
    assert "argument --steps" in capsys.readouterr().err


def test_a_latent_pipeline_given_as_a_ddpm_gets_the_pipeline_command(tmp_path, monkeypatch):
    """A pipeline folder given positionally (the DDPM path) or as --reference is refused in one line that
    names it and the command that evaluates it, before anything is loaded; --model goes to the pipeline path."""
    from tiny_pipeline import write_tiny_pipeline

    folder = write_tiny_pipeline(tmp_path / "pipe", text=False, class_embedder=True, sample_size=8)
    monkeypatch.setattr(evaluate, "load_with_info", never_sample)
    for models, reference in (([str(folder)], None), ([small_checkpoint(tmp_path / "ok.pt")], str(folder))):
        cfg = eval_config(tmp_path, models, reference=reference)
        with pytest.raises(cli.UserError, match=rf"{folder} is a latent diffusion pipeline.*--model {folder} "
                                                rf"--prompts FILE.*--class-labels"):
            evaluate.main(cfg)
    cfg, _ = evaluate.parse_args(["--model", str(folder), "--class-labels", "3"])
    assert type(cfg).__name__ == "T2IEvalConfig" and cfg.model == str(folder)
    ddpm = small_checkpoint(tmp_path / "ddpm.pt")
    with pytest.raises(cli.UserError, match=rf"--model {ddpm}: .*a DDPM checkpoint is given positionally: "
                                            rf"`python evaluate.py {ddpm}`"):
        evaluate.parse_args(["--model", str(ddpm)])
    missing = tmp_path / "nope" / "pipeline"  # a typo is named as such, not taken for a DDPM checkpoint
    with pytest.raises(cli.UserError, match=rf"--model {missing}: no such file or folder, nor a known pipeline"):
        evaluate.parse_args(["--model", str(missing)])
