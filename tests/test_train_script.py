"""train.py as a user meets it: a run folder is found by the marker the run wrote, never by path arithmetic;
non-finite weights, EMA weights or held-out loss stop training and "last good" is a verified checkpoint;
--steps is the total and a finished run says so; one process per run folder; flips as data/__init__.py promises.
(tests/test_train.py holds exact resume, data parallelism and fine-tuning.)"""
from __future__ import annotations

import shutil

import pytest
import torch

import train
from training import families
from common import cli
from common.runs import RunLock, RunLocked
from models.checkpoint import read_checkpoint
from script_helpers import run_cli, small_checkpoint, train_config


def test_resume_of_a_checkpoint_copied_out_of_its_run_is_refused(tmp_path):
    model = small_checkpoint(tmp_path / "init.pt")
    run = train.main(train_config(tmp_path, model, steps=1, ckpt_every=1, heldout_images=0))
    # The copy sits two levels below a folder that holds files the resume must never overwrite.
    elsewhere = tmp_path / "mine" / "backup"
    elsewhere.mkdir(parents=True)
    (tmp_path / "mine" / "model.pt").write_text("precious")
    (tmp_path / "mine" / "config.json").write_text("precious")
    shutil.copy(run / "checkpoints" / "latest.pt", elsewhere / "latest.pt")
    with pytest.raises(cli.UserError, match="not inside the run folder that wrote it"):
        train.main(train.TrainConfig(steps=4), resume=str(elsewhere / "latest.pt"))
    assert (tmp_path / "mine" / "model.pt").read_text() == "precious"
    assert (tmp_path / "mine" / "config.json").read_text() == "precious"
    # A checkpoint inside another run's checkpoints/ folder is refused by the run id.
    other = train.main(train_config(tmp_path, model, steps=1, ckpt_every=1, heldout_images=0))
    shutil.copy(run / "checkpoints" / "latest.pt", other / "checkpoints" / "latest.pt")
    with pytest.raises(cli.UserError, match="written by another run"):
        train.main(train.TrainConfig(steps=4), resume=str(other / "checkpoints" / "latest.pt"))
    # The run folder itself (or its own latest.pt) resumes, in place.
    assert train.main(train.TrainConfig(steps=2), resume=str(run)) == run
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]["step"] == 2


def test_non_finite_ema_weights_stop_the_run_and_last_good_is_verified(tmp_path, monkeypatch):
    model = small_checkpoint(tmp_path / "init.pt")
    real_update, calls = train.EMA.update, {"n": 0}

    def poisoned_update(self, m):
        real_update(self, m)
        calls["n"] += 1
        if calls["n"] == 3:  # the EMA of step 3 goes bad; the raw weights and the loss stay finite
            next(self.model.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(train.EMA, "update", poisoned_update)
    with pytest.raises(FloatingPointError, match=r"non-finite EMA weight .* at step 4.*latest\.pt \(step 2\)"):
        train.main(train_config(tmp_path, model, steps=4, ckpt_every=2, heldout_images=0))
    run = next((tmp_path / "runs").iterdir())
    last = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert last["train_state"]["step"] == 2 and last["meta"]["verified_finite"]
    assert all(torch.isfinite(v).all() for v in last["ema_state_dict"].values())
    assert not (run / "model.pt").exists()


def test_non_finite_heldout_loss_stops_the_run(tmp_path, monkeypatch):
    model = small_checkpoint(tmp_path / "init.pt")
    monkeypatch.setattr(train.HeldOutLoss, "__call__", lambda self, m, batch_size=64: float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite held-out loss nan at step 2.*none yet"):
        train.main(train_config(tmp_path, model, steps=4, ckpt_every=2))
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "checkpoints" / "latest.pt").exists()  # an unverified state is never saved


def test_steps_is_the_total_and_a_finished_run_says_so(tmp_path, capsys):
    model = small_checkpoint(tmp_path / "init.pt")
    run = train.main(train_config(tmp_path, model, steps=3, ckpt_every=3, heldout_images=0))
    released = (run / "model.pt").read_bytes()
    assert read_checkpoint(run / "model.pt")["meta"]["steps"] == 3
    with pytest.raises(cli.UserError, match="--steps 2 is the TOTAL.*already at step 3"):
        train.main(train.TrainConfig(steps=2), resume=str(run / "checkpoints" / "latest.pt"))
    capsys.readouterr()
    assert train.main(train.TrainConfig(steps=None), resume=str(run)) == run
    assert "already finished" in capsys.readouterr().out
    assert (run / "model.pt").read_bytes() == released  # nothing rewritten
    # The command line: --resume with only --steps / --device; other flags are an error, not ignored.
    assert train.parse_args(["--resume", str(run)])[0].steps is None
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", str(run), "--lr", "1"])


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    model = small_checkpoint(tmp_path / "init.pt")
    run = train.main(train_config(tmp_path, model, steps=1, ckpt_every=1, heldout_images=0))
    with RunLock(run, "training this run"):  # another live process holds the run
        with pytest.raises(RunLocked, match="in use by another process"):
            train.main(train.TrainConfig(steps=2), resume=str(run))
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]["step"] == 1
    # The lock dies with its holder: now the resume proceeds, and cleans up what a kill left half-written.
    stale = run / "checkpoints" / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train.main(train.TrainConfig(steps=2), resume=str(run))
    assert not stale.exists()
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]["step"] == 2


@pytest.mark.parametrize("flag", ["--batch-size", "--ckpt-every", "--steps", "--log-every"])
def test_train_counts_must_be_at_least_one(flag, capsys):
    status, _, err = run_cli(train, [flag, "0"], capsys)
    assert status == 2 and flag in err and ">= 1" in err


def test_train_flips_half_the_batch_when_asked(tmp_path, monkeypatch):
    """data/__init__.py's promise: datasets do not augment, train.py flips (one mask per global batch)."""
    model = small_checkpoint(tmp_path / "init.pt")
    batches = []
    real = families.eps_loss  # the image family's loss (training/families.py)

    def spy(net, schedule, x0, *args, **kwargs):
        batches.append(x0.clone())
        return real(net, schedule, x0, *args, **kwargs)

    monkeypatch.setattr(families, "eps_loss", spy)
    for flip in (False, True):
        train.main(train_config(tmp_path, model, steps=1, batch_size=16, heldout_images=0, random_flip=flip))
    plain, flipped = batches
    same = [torch.equal(a, b) for a, b in zip(plain, flipped)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(plain, flipped)]
    assert all(s or m for s, m in zip(same, mirrored))  # each image is itself or its mirror image
    assert 0 < sum(not s for s in same) < 16  # and some, not all, were flipped
