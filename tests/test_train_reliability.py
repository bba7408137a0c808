"""train.py's reliability: a run killed at step k of n and resumed with --steps k writes the model of step k
(the last verified checkpoint) instead of saying "already finished" with no model.pt; a --data folder with a
truncated image is refused before the first step, naming the file."""
from __future__ import annotations

import pytest
import torch

import train
from models.checkpoint import read_checkpoint
from script_helpers import small_checkpoint, train_config


class Killed(BaseException):
    """Stands for kill -9 right after a checkpoint."""


def test_a_run_killed_at_step_2_of_4_resumed_with_steps_2_writes_the_model_of_step_2(tmp_path, monkeypatch, capsys):
    model = small_checkpoint(tmp_path / "init.pt")
    real = train.checkpoint

    def checkpoint_then_die(state, *args, **kwargs):
        real(state, *args, **kwargs)
        if state.step == 2:
            raise Killed

    monkeypatch.setattr(train, "checkpoint", checkpoint_then_die)
    with pytest.raises(Killed):
        train.main(train_config(tmp_path, model, steps=4, ckpt_every=2, heldout_images=0))
    monkeypatch.setattr(train, "checkpoint", real)
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "model.pt").exists()
    capsys.readouterr()
    assert train.main(train.TrainConfig(steps=2), resume=str(run)) == run
    out = capsys.readouterr().out
    assert "model.pt" in out and "step 2" in out
    released, latest = read_checkpoint(run / "model.pt"), read_checkpoint(run / "checkpoints" / "latest.pt")
    assert released["meta"]["steps"] == 2 and released["meta"]["train_config"]["steps"] == 2
    assert all(torch.equal(v, latest["state_dict"][k]) for k, v in released["state_dict"].items())
    assert all(torch.equal(v, latest["ema_state_dict"][k]) for k, v in released["ema_state_dict"].items())
    before = (run / "model.pt").read_bytes()
    train.main(train.TrainConfig(steps=2), resume=str(run))  # now finished: nothing rewritten
    assert "already finished" in capsys.readouterr().out and (run / "model.pt").read_bytes() == before


def test_a_truncated_png_in_the_data_folder_is_refused_before_training(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    whole = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(whole[: len(whole) // 2])  # cut off mid-stream
    steps = []
    monkeypatch.setattr(train, "train_step", lambda *a, **k: steps.append(1))
    model = small_checkpoint(tmp_path / "init.pt")
    with pytest.raises(OSError, match=r"2\.png"):
        train.main(train_config(tmp_path, model, data="folder", data_root=str(folder), steps=4, heldout_images=0))
    assert steps == []


def test_a_teacher_that_cannot_teach_is_named(tmp_path, capsys):
    from models.checkpoint import save_checkpoint
    from models.ddpm.config import ModelConfig
    from models.ddpm.unet import UNet
    from script_helpers import SMALL
    from training.distill import build_distiller

    student_path = small_checkpoint(tmp_path / "student.pt")
    student = train.load_with_info(str(student_path), ema=True, device="cpu")[0]
    lambdas = {"task": None, "out": None, "feat": None}
    build_distiller("output", str(student_path), student, lambdas=lambdas, seed=0, device="cpu")
    assert "holds the student's own weights" in capsys.readouterr().out
    from pruning import prune

    pruned, _ = prune(train.load_with_info(str(student_path), device="cpu")[0], student.example_inputs(),
                      method="magnitude", ratio=0.5, progress=False)
    save_checkpoint(tmp_path / "pruned.pt", config=pruned.config, state_dict=pruned.state_dict())
    build_distiller("output", str(tmp_path / "pruned.pt"), student, lambdas=lambdas, seed=0, device="cpu")
    assert "is smaller than the student" in capsys.readouterr().out  # the pruned model given as the teacher
    bad = UNet(ModelConfig(**SMALL))
    with torch.no_grad():
        bad.state_dict()["temb.dense.1.bias"][0] = float("nan")
    save_checkpoint(tmp_path / "bad.pt", config=bad.config, state_dict=bad.state_dict())
    with pytest.raises(ValueError, match=r"--teacher .*'temb.dense.1.bias'"):
        build_distiller("output", str(tmp_path / "bad.pt"), student, lambdas=lambdas, seed=0, device="cpu")


def test_sample_steps_beyond_the_schedule_are_named_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_state", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(train.UserError, match=r"--sample-steps must be <= the schedule's 1000 timesteps"):
        train.main(train_config(tmp_path, small_checkpoint(tmp_path / "m.pt"), sample_steps=5000))
