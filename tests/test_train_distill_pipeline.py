"""train.py --distill on a pruned latent pipeline (training/teacher.py over training/distill_latent.py): a
feature-normalized run resumes exactly, logs every KD term and records the teacher; the student's own pipeline
as teacher starts the KD terms at 0; the one-line refusals (families, frozen parts, a changed teacher)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import train
from common.cli import UserError
from models.checkpoint import read_checkpoint
from models.pipelines import load_latent, save_pipeline
from pruning.api import prune
from pruning.spec import ChannelPruning
from tiny_pipeline import write_tiny_pipeline
from training import latent

pytestmark = pytest.mark.filterwarnings("ignore:.*truncat")



@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The dense tiny pipeline (the teacher) and its magnitude-pruned copy (the student), as prune.py writes it."""
    root = tmp_path_factory.mktemp("distill_pipe")
    dense = write_tiny_pipeline(root / "dense", sample_size=16)
    pipe = load_latent(dense)
    small, _ = prune(pipe.unet, pipe.unet.example_inputs(), ChannelPruning(method="magnitude", ratio=0.3))
    import dataclasses

    save_pipeline(dataclasses.replace(pipe, unet=small), root / "run" / "pipeline")
    (root / "run" / "spec.json").write_text(json.dumps({"source_model": str(dense)}))  # prune.py's record
    return {"dense": dense, "pruned": root / "run" / "pipeline", "root": root}


@pytest.fixture(autouse=True)
def few_images(monkeypatch):
    monkeypatch.setattr(latent, "TRAIN_IMAGES", 24)


def config(tmp_path: Path, folders: dict, **kw) -> train.TrainConfig:
    base = dict(model=str(folders["pruned"]), steps=2, batch_size=4, lr=1e-3, ckpt_every=1, log_every=1,
                heldout_images=0, ema_decay=0.9, distill="feature-normalized", teacher=str(folders["dense"]),
                out=str(tmp_path / "runs" / "train"))
    return train.TrainConfig(**{**base, **kw})


def test_two_steps_resume_exactly_and_log_every_kd_term(tmp_path, folders):
    straight = train.main(config(tmp_path / "a", folders, steps=2))
    first = train.main(config(tmp_path / "b", folders, steps=1))
    resumed = train.main(train.TrainConfig(steps=2), resume=str(first))
    a = read_checkpoint(straight / "checkpoints" / "latest.pt")
    b = read_checkpoint(resumed / "checkpoints" / "latest.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 2
    for kind in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(v, b[kind][k]) for k, v in a[kind].items()), kind
    distill = a["train_state"]["distill"]
    assert distill["projections"] and all(k.startswith("proj.") for k in distill["projections"])  # widths differ
    teacher = load_latent(folders["dense"]).unet
    assert distill["teacher_checksum"] == pytest.approx(sum(p.double().sum().item() for p in teacher.parameters()))
    tags = {json.loads(line)["tag"] for line in (straight / "scalars.jsonl").read_text().splitlines()}
    taps = {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"}
    assert {"train/loss_task", "train/kd_out", "train/kd_feat"} | {f"train/kd_feat/{t}" for t in taps} <= tags
    assert load_latent(straight / "pipeline").unet.config.widths  # the release is the pruned pipeline


def test_the_default_teacher_of_a_pruned_pipeline_is_its_source(folders):
    cfg, _ = train.parse_args(["--model", str(folders["pruned"]), "--distill", "output"])
    assert cfg.teacher == str(folders["dense"])


def test_the_students_own_weights_start_the_kd_terms_at_zero(tmp_path, folders):
    run = train.main(config(tmp_path, folders, model=str(folders["dense"]), steps=1, distill="output"))
    rows = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert [r["value"] for r in rows if r["tag"] == "train/kd_out"] == [0.0]


def test_a_resume_with_a_changed_teacher_is_refused(tmp_path, folders):
    teacher = shutil.copytree(folders["dense"], tmp_path / "teacher")
    run = train.main(config(tmp_path, folders, steps=1, teacher=str(teacher)))
    other = load_latent(write_tiny_pipeline(tmp_path / "other", seed=3)).unet  # other U-Net weights, same parts
    weights = teacher / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    with pytest.raises(UserError, match="is not the one this run distilled from"):
        train.main(train.TrainConfig(steps=2), resume=str(run))


@pytest.mark.parametrize("student, teacher, match", [
    ("tiny", "dense", "--teacher .*: a latent text-to-image pipeline, but the student --model tiny is a DDPM"),
    ("pruned", "ddpm", "--teacher .*: a DDPM U-Net checkpoint, but the student --model .* is a latent"),
])
def test_a_teacher_of_another_family_is_refused_before_loading(tmp_path, folders, monkeypatch, student, teacher, match):
    from common.defaults import TEACHER_CHECKPOINT

    monkeypatch.setattr(latent, "build_latent_model", lambda *a, **k: pytest.fail("the student was loaded"))
    names = {"dense": str(folders["dense"]), "pruned": str(folders["pruned"]), "tiny": "tiny",
             "ddpm": str(TEACHER_CHECKPOINT)}
    with pytest.raises(UserError, match=match) as e:
        train.main(config(tmp_path, folders, model=names[student], teacher=names[teacher]))
    assert "\n" not in str(e.value)


def test_a_teacher_with_other_frozen_parts_is_refused(tmp_path, folders):
    other = write_tiny_pipeline(tmp_path / "other", seed=1, sample_size=16)  # another VAE / text encoder
    with pytest.raises(UserError, match="its VAE / text encoder / class embedder are not the student's"):
        train.main(config(tmp_path, folders, teacher=str(other)))
