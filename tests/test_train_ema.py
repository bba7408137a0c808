"""train.py's EMA warm-up setting: recorded in the run's config, and kept by an exact resume -- also for a
run saved before the setting existed (it was started without the warm-up and continues without it)."""
from __future__ import annotations

from pathlib import Path

import torch

import train
from models import ModelConfig, UNet
from models.checkpoint import read_checkpoint, save_checkpoint


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                         norm_groups=2)
    save_checkpoint(path, config=config, state_dict=UNet(config).state_dict())
    return path


def config(tmp_path: Path, model: Path, **kw) -> train.TrainConfig:
    base = dict(model=str(model), data="shapes", steps=4, batch_size=4, lr=1e-3, ckpt_every=2, log_every=1,
                heldout_images=0, ema_decay=0.9, out=str(tmp_path / "runs"))
    return train.TrainConfig(**{**base, **kw})


def ema_weights(run: Path) -> dict:
    return read_checkpoint(run / "model.pt")["ema_state_dict"]


def test_resume_of_a_run_saved_without_the_field_keeps_the_old_ema(tmp_path):
    model = tiny_model(tmp_path / "init.pt")
    old = ema_weights(train.main(config(tmp_path, model, ema_warmup=False)))
    new = ema_weights(train.main(config(tmp_path, model)))
    assert any(not torch.equal(old[k], new[k]) for k in old)  # the warm-up changes the EMA weights
    half = train.main(config(tmp_path, model, steps=2, ema_warmup=False))
    latest = half / "checkpoints" / "latest.pt"
    ckpt = read_checkpoint(latest)
    assert ckpt["meta"]["train_config"]["ema_warmup"] is False
    del ckpt["meta"]["train_config"]["ema_warmup"]  # as written before the field existed
    meta = {k: v for k, v in ckpt["meta"].items() if k != "environment"}
    save_checkpoint(latest, config=ModelConfig.from_dict(ckpt["model_config"]), state_dict=ckpt["state_dict"],
                    ema_state_dict=ckpt["ema_state_dict"], train_state=ckpt["train_state"], meta=meta)
    resumed = ema_weights(train.main(train.TrainConfig(steps=4), resume=str(latest)))
    for k in old:
        assert torch.equal(resumed[k], old[k]), k
