"""train.py on class-conditional latent pipelines (training/class_conditioning.py): the shapes' kind labels, the
frozen class table of ``class-shapes``, class dropout to the "no class" row, exact resume, the released pipeline,
distillation between class pipelines, and the one-line refusals. Tiny random pipelines (tests/tiny_pipeline.py)
in the ImageNet LDM's layout (a class token read by cross-attention) and diffusers' num_class_embeds layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train
from common.cli import UserError
from data.captions import CaptionAttributes
from models.checkpoint import read_checkpoint
from tiny_pipeline import write_tiny_pipeline
from training import latent, latent_data
from training.class_conditioning import class_condition, shapes_class_embedder, shapes_class_labels


@pytest.fixture(scope="module")
def cin_folder(tmp_path_factory) -> Path:  # 10 classes + "no class", 32 px images -> 16x16x4 latents
    return write_tiny_pipeline(tmp_path_factory.mktemp("cin") / "pipe", text=False, class_embedder=True,
                               sample_size=16)


@pytest.fixture(autouse=True)
def few_images(monkeypatch):
    monkeypatch.setattr(latent, "TRAIN_IMAGES", 24)  # the cache encodes the first 24 train images


def config(tmp_path: Path, model, **kw) -> train.TrainConfig:
    base = dict(model=str(model), steps=4, batch_size=4, lr=1e-3, ckpt_every=2, log_every=1, heldout_images=0,
                ema_decay=0.9, sample_every=0, out=str(tmp_path / "runs" / "train"))
    return train.TrainConfig(**{**base, **kw})


def test_labels_are_the_kind_of_single_kind_images():
    attrs = [CaptionAttributes(shapes=((0, 1),), background=(0,)),          # one disc: class 0
             CaptionAttributes(shapes=((0, 1), (1, 1)), background=(0,)),   # disc and square: no single label
             CaptionAttributes(shapes=((3, 2), (3, 5), (3, 5)), background=(1, 2)),  # three rings: class 3
             CaptionAttributes(shapes=((2, 0), (2, 7)), background=(6,))]   # two triangles: class 2
    assert shapes_class_labels(attrs) == ([0, 2, 3], [0, 3, 2])


def test_the_class_shapes_table_is_fixed_frozen_and_has_a_no_class_row():
    a, b = shapes_class_embedder(), shapes_class_embedder()
    assert torch.equal(a.embedding.weight, b.embedding.weight)  # the same table in every process
    assert a.embedding.weight.shape == (5, 64) and not a.embedding.weight.requires_grad
    assert a.num_classes == 4 and a.config.unconditional_class == 4
    assert torch.linalg.matrix_rank(a.embedding.weight) == 5  # independent codes: nothing lost by freezing


def test_class_dropout_gives_the_no_class_token_and_a_class_embedding_model_gets_labels():
    embedder = shapes_class_embedder()
    pipe = type("P", (), {"class_embedder": embedder})()
    labels, dropped = torch.tensor([0, 1, 2, 3]), torch.tensor([False, True, False, True])
    h = class_condition(pipe, labels, dropped)["encoder_hidden_states"]
    assert h.shape == (4, 1, 64)
    assert torch.equal(h[:, 0], embedder.embedding.weight[torch.tensor([0, 4, 2, 4])])
    pipe.class_embedder = None  # num_class_embeds: no unconditional row, the labels go to the U-Net as they are
    assert torch.equal(class_condition(pipe, labels, dropped)["class_labels"], labels)


def test_two_step_resume_is_exact_and_the_release_samples_each_class(tmp_path, cin_folder):
    from models.pipelines import load_latent
    from models.pipelines.text_to_image import Request, generate

    straight = train.main(config(tmp_path / "a", cin_folder, steps=4))
    first = train.main(config(tmp_path / "b", cin_folder, steps=2))
    resumed = train.main(train.TrainConfig(steps=4), resume=str(first))
    a, b = (read_checkpoint(r / "checkpoints" / "latest.pt") for r in (straight, resumed))
    for kind in ("state_dict", "ema_state_dict"):
        for k in a[kind]:
            assert torch.equal(a[kind][k], b[kind][k]), (kind, k)
    family = json.loads((straight / "config.json").read_text())["family"]
    assert family["condition"] == "class" and family["num_classes"] == 10
    assert family["train_images"] == len(shapes_class_labels(latent_data.cached_posterior(
        load_latent(cin_folder).vae, count=24, seed=0, cache_dir=tmp_path / "c", key="k")[2])[0])
    pipe = load_latent(straight / "pipeline")
    original = load_latent(cin_folder)
    assert torch.equal(pipe.class_embedder.embedding.weight, original.class_embedder.embedding.weight)  # frozen
    images = generate(pipe, Request(steps=2, guidance_scale=3.0), indices=[0, 1], class_labels=[0, 3])
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_batches_carry_each_images_own_kind_in_every_shard(tmp_path, cin_folder):
    model, _, parts = latent.build_latent_model(str(cin_folder), 0)
    family = latent.LatentFamily(model, parts, caption_dropout=0.5, loss_reduction=None, seed=0,
                                 cache_dir=tmp_path / "cache", source=str(cin_folder))
    B = len(family)
    idx = torch.randperm(B, generator=torch.Generator().manual_seed(1)).tolist()
    g = torch.Generator().manual_seed(0)  # the batch's draws: the dropout mask, then the posterior noise
    drop = torch.rand(B, generator=g) < 0.5
    n = torch.randn((B, 4, 16, 16), generator=g)
    assert 0 < int(drop.sum()) < B
    table = family.pipe.class_embedder
    for shard in (slice(0, B // 2), slice(B // 2, B)):  # two processes' shares of one global batch
        z0, cond = family.batch(idx, shard, torch.Generator().manual_seed(0), "cpu")
        mine = idx[shard]
        rows = torch.tensor([family.rows[i] for i in mine])
        assert torch.equal(z0, family.scale * (family.mean[rows] + family.std[rows] * n[shard]))  # own images
        want = torch.tensor([10 if d else family.labels[i] for i, d in zip(mine, drop[shard])])
        assert torch.equal(cond["encoder_hidden_states"], table(want))  # own kinds; dropped rows: "no class" (10)


def test_the_class_shapes_preset_trains_and_releases_a_class_pipeline(tmp_path):
    from models.pipelines import load_latent

    run = train.main(config(tmp_path, "class-shapes", steps=1, ckpt_every=1))
    pipe = load_latent(run / "pipeline")
    assert pipe.kind == "ldm" and pipe.num_classes == 4 and pipe.has_unconditional
    assert torch.equal(pipe.class_embedder.embedding.weight, shapes_class_embedder().embedding.weight)
    assert sum(p.numel() for p in pipe.unet.parameters()) == 2_205_828  # the t2i-shapes U-Net


def test_a_class_embedding_unet_trains_without_dropout(tmp_path):
    folder = write_tiny_pipeline(tmp_path / "cls", text=False, class_cond=True, sample_size=16)
    model, _, parts = latent.build_latent_model(str(folder), 0)
    family = latent.LatentFamily(model, parts, caption_dropout=0.5, loss_reduction=None, seed=0,
                                 cache_dir=tmp_path / "cache", source=str(folder))
    _, cond = family.batch([0, 1, 2], slice(0, 3), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(cond["class_labels"], torch.tensor(family.labels[:3]))  # no "no class" label to drop to
    run = train.main(config(tmp_path, folder, steps=2))
    assert (run / "pipeline" / "unet").is_dir()


def test_class_conditional_refusals_and_distillation(tmp_path, cin_folder):
    with pytest.raises(UserError, match="--data folder gives captions, but .* is class-conditional"):
        train.main(config(tmp_path, cin_folder, data="folder", data_root=str(tmp_path)))
    with pytest.raises(UserError, match=r"the model has 2 classes, but the shapes data labels images by shape kind "
                                        r"\(4 classes"):
        folder = write_tiny_pipeline(tmp_path / "two", text=False, class_embedder=True, sample_size=16)
        index = json.loads((folder / "class_embedder" / "config.json").read_text())
        index.update(n_classes=3, unconditional_class=2)
        (folder / "class_embedder" / "config.json").write_text(json.dumps(index))
        from safetensors.torch import load_file, save_file
        weights = folder / "class_embedder" / "diffusion_pytorch_model.safetensors"
        save_file({k: v[:3].contiguous() for k, v in load_file(weights).items()}, weights)
        train.main(config(tmp_path, folder))
    text = write_tiny_pipeline(tmp_path / "text", sample_size=16)
    with pytest.raises(UserError, match="class embedder are not the student's"):
        train.main(config(tmp_path, cin_folder, distill="output", teacher=str(text)))
    run = train.main(config(tmp_path, cin_folder, steps=2, distill="feature-normalized", teacher=str(cin_folder)))
    assert (run / "pipeline" / "class_embedder").is_dir()


def test_the_class_curve_measures_each_kept_checkpoint_once(tmp_path, cin_folder, monkeypatch):
    from benchmarks import class_teacher_curve

    run = train.main(config(tmp_path, cin_folder, steps=2, keep_every=1, ckpt_every=1))
    out = tmp_path / "curve.json"
    argv = ["--run", str(run), "--per-class", "1", "--batch-size", "4", "--out", str(out)]
    record = class_teacher_curve.main(class_teacher_curve.parse_args(argv))
    assert [r["step"] for r in record["rows"]] == [1, 2]
    assert all(r["kind_accuracy"]["n"] == 4 and set(r["kind_accuracy"]["per_class"]) ==
               {"disc", "square", "triangle", "ring"} for r in record["rows"])
    assert "| 2 |" in out.with_suffix(".md").read_text()
    assert record["real_kind_accuracy"] == 1.0 and "read under them: 1.000" in out.with_suffix(".md").read_text()
    monkeypatch.setattr(class_teacher_curve, "measure", lambda *a, **k: pytest.fail("measured twice"))
    assert class_teacher_curve.main(class_teacher_curve.parse_args(argv))["rows"] == record["rows"]
    # another setting never replaces this record: refused by --out, and by default it gets its own file
    with pytest.raises(UserError, match="holds a curve with other settings"):
        class_teacher_curve.main(class_teacher_curve.parse_args(argv + ["--guidance", "1"]))
    default = class_teacher_curve.parse_args(["--run", str(run), "--guidance", "1", "--seed", "2"]).out
    assert default.endswith("class_teacher_curve_g1_s2.json")
    assert class_teacher_curve.parse_args(["--run", str(run)]).out.endswith("class_teacher_curve.json")
    with pytest.raises(SystemExit):  # below 1 is not a guidance scale: refused before any checkpoint is read
        class_teacher_curve.parse_args(["--run", str(run), "--guidance", "0.5"])
