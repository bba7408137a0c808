"""train.py on a latent text-to-image pipeline (training/latent.py): exact resume, caption dropout, the
released pipeline folder, and the one-line refusals. A tiny random pipeline (tests/tiny_pipeline.py) stands in
for the shipped one; its VAE maps the 32 px shapes to 16x16x4 latents like the shipped VAE."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from common.cli import UserError
from models.checkpoint import read_checkpoint
from tiny_pipeline import write_tiny_pipeline
from training import latent

pytestmark = pytest.mark.filterwarnings("ignore:.*truncat")


@pytest.fixture(scope="module")
def pipe_folder(tmp_path_factory) -> Path:
    return write_tiny_pipeline(tmp_path_factory.mktemp("latent") / "pipe", sample_size=16)  # 32 px images


@pytest.fixture(autouse=True)
def few_images(monkeypatch):
    monkeypatch.setattr(latent, "TRAIN_IMAGES", 24)  # the cache encodes the first 24 train images


def config(tmp_path: Path, model: Path, **kw) -> train.TrainConfig:
    base = dict(model=str(model), steps=4, batch_size=4, lr=1e-3, ckpt_every=2, log_every=1, heldout_images=0,
                ema_decay=0.9, out=str(tmp_path / "runs" / "train"))
    return train.TrainConfig(**{**base, **kw})


def latest(run: Path) -> dict:
    ckpt = read_checkpoint(run / "checkpoints" / "latest.pt")
    return {"raw": ckpt["state_dict"], "ema": ckpt["ema_state_dict"], "step": ckpt["train_state"]["step"]}


def test_two_step_resume_is_exact(tmp_path, pipe_folder):
    straight = train.main(config(tmp_path / "a", pipe_folder, steps=4))
    first = train.main(config(tmp_path / "b", pipe_folder, steps=2))
    start = read_checkpoint(first / "checkpoints" / "latest.pt")["state_dict"]
    resumed = train.main(train.TrainConfig(steps=4), resume=str(first))
    a, b = latest(straight), latest(resumed)
    assert a["step"] == b["step"] == 4
    for kind in ("raw", "ema"):
        for k in a[kind]:
            assert torch.equal(a[kind][k], b[kind][k]), (kind, k)
    assert any(not torch.equal(start[k], a["raw"][k]) for k in start)  # steps 3-4 changed the weights


def test_released_pipeline_loads_and_generates(tmp_path, pipe_folder):
    from models.pipelines import load_latent
    from models.pipelines.text_to_image import Request, generate

    run = train.main(config(tmp_path, pipe_folder, steps=2))
    pipe = load_latent(run / "pipeline")
    ema = read_checkpoint(run / "model.pt")["ema_state_dict"]
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())  # the EMA weights ship
    images = generate(pipe, Request(prompt="a red disc on a blue background", steps=2), indices=[0, 1])
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    record = __import__("json").loads((run / "config.json").read_text())["family"]
    assert record["family"] == "latent" and record["latent_shape"] == [4, 16, 16]
    assert record["schedule"]["schedule"] == "scaled_linear" and record["schedule"]["loss_reduction"] == "mean"


def test_caption_dropout_replaces_captions_by_the_empty_prompt(tmp_path, pipe_folder):
    from models.pipelines.text_to_image import text_conditioning

    model, _, parts = latent.build_latent_model(str(pipe_folder), 0)
    family = latent.LatentFamily(model, parts, caption_dropout=0.5, loss_reduction=None, seed=0,
                                 cache_dir=tmp_path / "cache", source=str(pipe_folder))
    g = torch.Generator().manual_seed(0)
    z0, cond = family.batch(list(range(16)), slice(0, 16), g, "cpu")
    empty = text_conditioning(family.pipe, [""], (0, 0)).encoder_hidden_states[0]
    dropped = [bool(torch.equal(h, empty)) for h in cond["encoder_hidden_states"]]
    assert 2 <= sum(dropped) <= 14  # about half, never all or none at this seed
    g.manual_seed(0)
    torch.randint(8, (16,), generator=g)
    assert dropped == (torch.rand(16, generator=g) < 0.5).tolist()  # exactly the rows the mask drew
    assert z0.shape == (16, 4, 16, 16)
    none = latent.LatentFamily(model, parts, caption_dropout=0.0, loss_reduction=None, seed=0,
                               cache_dir=tmp_path / "cache", source=str(pipe_folder))
    _, cond = none.batch(list(range(16)), slice(0, 16), torch.Generator().manual_seed(0), "cpu")
    assert not any(torch.equal(h, empty) for h in cond["encoder_hidden_states"])


def test_latent_options_are_refused_in_one_line(tmp_path, pipe_folder):
    with pytest.raises(UserError, match="--random-flip must be off for a latent model"):
        train.main(config(tmp_path, pipe_folder, random_flip=True))
    with pytest.raises(UserError, match="--data must be shapes"):
        train.main(config(tmp_path, pipe_folder, data="cifar10"))
    with pytest.raises(UserError, match="--caption-dropout must be in \\[0, 1\\)"):
        train.main(config(tmp_path, pipe_folder, caption_dropout=1.0))
    with pytest.raises(UserError, match="--dropout must be unset for a latent model"):  # was silently ignored
        train.main(config(tmp_path, pipe_folder, dropout=0.1))
    with pytest.raises(UserError, match="--data-root must be an existing folder"):
        train.main(config(tmp_path, pipe_folder, data="folder", data_root=str(tmp_path / "typo")))
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_resume_refuses_changed_frozen_parts(tmp_path, pipe_folder):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(pipe_folder, tmp_path / "pipe")
    run = train.main(config(tmp_path, folder, steps=2))
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state = {k: v + 0.01 if k.endswith("bias") else v for k, v in state.items()}
    save_file(state, weights)
    with pytest.raises(UserError, match="frozen VAE / text encoder .* changed"):
        train.main(train.TrainConfig(steps=4), resume=str(run))
    shutil.move(folder, tmp_path / "moved")  # was an AttributeError traceback from the DDPM family
    with pytest.raises(UserError, match=r"the run's pipeline .*pipe \(its --model\) is no longer there"):
        train.main(train.TrainConfig(steps=4), resume=str(run))


def test_a_run_stopped_at_a_checkpoint_releases_its_pipeline_on_resume(tmp_path, pipe_folder):
    """A run killed after its step-2 checkpoint, resumed with --steps 2, writes model.pt and RUN/pipeline from it."""
    import shutil

    from models.pipelines import load_latent

    run = train.main(config(tmp_path, pipe_folder, steps=2))
    (run / "model.pt").unlink()
    shutil.rmtree(run / "pipeline")  # as if killed between the checkpoint and the release
    assert train.main(train.TrainConfig(steps=2), resume=str(run)) == run
    ema = read_checkpoint(run / "checkpoints" / "latest.pt")["ema_state_dict"]
    pipe = load_latent(run / "pipeline")
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())
    assert read_checkpoint(run / "model.pt")["meta"]["steps"] == 2
