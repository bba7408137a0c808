"""Shared by the script tests (test_train_script.py, test_evaluate_script.py, test_prune_script.py,
test_script_cli.py): a very small U-Net checkpoint, tiny train/evaluate configs, and a script's command line
run in-process."""
from __future__ import annotations

from pathlib import Path

import torch

import evaluate
import train
from common import cli
from metrics.evaluation import SamplerConfig
from models.checkpoint import save_checkpoint
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, norm_groups=2)


def small_checkpoint(path: Path, seed: int = 0, **kw) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(**{**SMALL, **kw})
    save_checkpoint(path, config=config, state_dict=UNet(config).state_dict())
    return path


def train_config(tmp_path: Path, model: Path, **kw) -> train.TrainConfig:
    base = dict(model=str(model), data="shapes", steps=4, batch_size=2, lr=1e-3, ckpt_every=2, log_every=1,
                heldout_images=2, ema_decay=0.9, out=str(tmp_path / "runs"))
    return train.TrainConfig(**{**base, **kw})


def eval_config(tmp_path: Path, models, **kw) -> evaluate.EvalConfig:
    base = dict(models=tuple(str(m) for m in models), num_samples=2, sampler=SamplerConfig(steps=2), batch_size=2,
                heldout_images=0, out=str(tmp_path / "eval"))
    return evaluate.EvalConfig(**{**base, **kw})


def run_cli(script, argv, capsys) -> tuple[int, str, str]:
    """Run a script's command line in-process: (exit status, stdout, stderr)."""
    main = script.run_command if script is evaluate else script.main
    try:
        status = cli.run(main, script.parse_args, argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def ddim_state_dict_with_8_groups(tmp_path: Path) -> tuple[Path, UNet]:
    torch.manual_seed(0)
    model = UNet(ModelConfig(image_size=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                             dropout=0.0, norm_groups=8)).eval()
    path = tmp_path / "ddim_8groups.ckpt"
    torch.save(model.state_dict(), path)  # a plain DDIM-codebase state dict: the group count is not stored
    return path, model
