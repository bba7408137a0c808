"""train.py: exact resume, data-parallel equivalence, NaN handling, fine-tuning a pruned-width checkpoint."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from training import families
from models.checkpoint import read_checkpoint, save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet

REPO = Path(__file__).resolve().parents[1]


def small_checkpoint(path: Path, *, dropout: float = 0.1, widths=()) -> Path:
    """A very small U-Net (16x16, two levels, attention at 8) saved in the project format."""
    torch.manual_seed(0)
    config = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                         dropout=dropout, norm_groups=2, widths=widths)
    model = UNet(config)
    save_checkpoint(path, config=config, state_dict=model.state_dict())
    return path


def base_config(tmp_path: Path, model: Path, **kw) -> train.TrainConfig:
    defaults = dict(model=str(model), data="shapes", steps=6, batch_size=4, lr=1e-3, ckpt_every=3, log_every=1,
                    heldout_images=4, ema_decay=0.9, out=str(tmp_path / "runs"))
    defaults.update(kw)
    return train.TrainConfig(**defaults)


def weights(path: Path) -> dict:
    ckpt = read_checkpoint(path)
    return {"raw": ckpt["state_dict"], "ema": ckpt["ema_state_dict"]}


def assert_same_weights(a: dict, b: dict, atol: float = 0.0, skip: tuple[str, ...] = ()) -> None:
    for kind in ("raw", "ema"):
        assert a[kind].keys() == b[kind].keys()
        for k in a[kind]:
            if k.endswith(skip):
                continue
            torch.testing.assert_close(a[kind][k], b[kind][k], rtol=0, atol=atol, msg=f"{kind} {k} differs")


def test_resume_is_exact(tmp_path):
    """An interrupted (3 steps) and resumed (3 more) run ends with the same weights, bit for bit, as an
    uninterrupted 6-step run: data order, timesteps, noise, flips, dropout masks and Adam state are restored."""
    model = small_checkpoint(tmp_path / "init.pt", dropout=0.1)
    full = train.main(base_config(tmp_path, model))
    half = train.main(base_config(tmp_path, model, steps=3))
    assert read_checkpoint(half / "checkpoints" / "latest.pt")["train_state"]["step"] == 3
    resumed = train.main(base_config(tmp_path, model, steps=6), resume=str(half / "checkpoints" / "latest.pt"))
    assert resumed == half  # continues in its own run folder
    assert_same_weights(weights(full / "checkpoints" / "latest.pt"), weights(resumed / "checkpoints" / "latest.pt"))
    # ... and training did move the weights.
    before = read_checkpoint(model)["state_dict"]
    after = weights(full / "model.pt")["raw"]
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_run_folders_are_numbered_and_config_saved(tmp_path):
    model = small_checkpoint(tmp_path / "init.pt")
    a = train.main(base_config(tmp_path, model, steps=1, ckpt_every=1, sample_every=1, sample_steps=2))
    b = train.main(base_config(tmp_path, model, steps=1, ckpt_every=1))
    assert a != b and a.name.startswith("00001-") and b.name.startswith("00002-")
    assert (a / "samples" / "step_0000001.png").is_file()  # DDIM grid from fixed noise
    assert any((a / "tb").iterdir())  # TensorBoard event file
    import json
    saved = json.loads((a / "config.json").read_text())
    assert saved["train"]["steps"] == 1 and saved["model"]["ch"] == 8 and "torch" in saved["environment"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    model = small_checkpoint(tmp_path / "init.pt")
    calls = {"n": 0}
    real = families.eps_loss  # the image family's loss (training/families.py)

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss  # the third step (index 2) goes bad

    monkeypatch.setattr(families, "eps_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step 2.*latest\.pt"):
        train.main(base_config(tmp_path, model, steps=6, ckpt_every=1))
    run = next((tmp_path / "runs").iterdir())
    last = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert last["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_finetunes_a_checkpoint_with_nonuniform_widths(tmp_path):
    widths = {"down.0.block.0.conv1": 6, "temb.dense.0": 19, "down.1.attn.0.q": 6, "down.1.attn.0.k": 6,
              "down.1.attn.0.v": 10, "up.1.block.1.conv1": 4}
    model = small_checkpoint(tmp_path / "pruned.pt", widths=widths)
    run = train.main(base_config(tmp_path, model, steps=2, ckpt_every=2))
    ckpt = read_checkpoint(run / "model.pt")
    assert dict(ModelConfig.from_dict(ckpt["model_config"]).widths) == widths
    assert ckpt["state_dict"]["down.0.block.0.conv1.weight"].shape[0] == 6


def test_bad_arguments_are_named(tmp_path):
    small_checkpoint(tmp_path / "init.pt")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        train.main(base_config(tmp_path, tmp_path / "does-not-exist.pt"))
    with pytest.raises(SystemExit):
        train.parse_args(["--optimizer", "sgd"])


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): ranks stay in sync (train.py checks it at every checkpoint)
    and the result equals the 1-process run with the same global batch, up to float summation order."""
    model = small_checkpoint(tmp_path / "init.pt", dropout=0.0)
    args = ["--model", str(model), "--steps", "4", "--batch-size", "4", "--lr", "1e-3", "--ckpt-every", "2",
            "--heldout-images", "0", "--ema-decay", "0.9"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "train.py"), *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks in sync" in proc.stdout + proc.stderr
    single = train.main(dataclasses.replace(train.parse_args(args)[0], out=str(tmp_path / "single")))
    ddp_run = next((tmp_path / "ddp").iterdir())
    # The key bias of attention gets an analytically zero gradient (q.b_k is the same for every key, and
    # softmax ignores a constant shift), so Adam turns pure rounding noise into lr-sized steps there: it
    # differs between any two summation orders and is left out of the comparison.
    assert_same_weights(weights(single / "model.pt"), weights(ddp_run / "model.pt"), atol=1e-5, skip=("k.bias",))
