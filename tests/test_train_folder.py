"""train.py's latent family on a captioned image folder (data/captioned_folder.py, training/latent.py) and on an
SDXL-layout pipeline: the three caption layouts train and release a loadable pipeline, the captions are what the
text encoder conditions on, cached and per-step posteriors agree, a resume is exact and refuses changed data,
distillation reads the same folder, and every bad input is a one-line error naming it. Tiny random pipelines
(tests/tiny_pipeline.py): latent 16 x the VAE's factor 2 = 32 px images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from common.cli import UserError
from models.checkpoint import read_checkpoint
from models.pipelines import load_latent
from models.pipelines.text_to_image import text_conditioning
from tiny_pipeline import write_tiny_pipeline
from training import latent

pytestmark = pytest.mark.filterwarnings("ignore:.*truncat")

CAPTIONS = ["a red circle", "a blue square", "a green triangle on white", "two red circles", "a large blue disc",
            "a small green square"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folder_pipes")
    return {"sd": write_tiny_pipeline(root / "sd", sample_size=16),
            "sdxl": write_tiny_pipeline(root / "sdxl", sdxl=True, sample_size=16)}


def write_images(folder: Path, n: int = 6) -> list[str]:
    """n small non-square PNGs (the center crop has work to do); their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"img_{i:02d}.png" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(folder / name)
    return names


def captioned(folder: Path, layout: str) -> Path:
    """A folder of 6 images captioned by metadata.jsonl, metadata.csv or sidecar .txt files."""
    names = write_images(folder)
    if layout == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n"
                                                       for f, t in zip(names, CAPTIONS)))
    elif layout == "csv":
        rows = "".join(f'{f},"{t}"\n' for f, t in zip(names, CAPTIONS))
        (folder / "metadata.csv").write_text("file_name,text\n" + rows)
    else:
        for f, t in zip(names, CAPTIONS):
            (folder / f).with_suffix(".txt").write_text(t + "\n")
    return folder


def config(tmp_path: Path, model: Path, data_root: Path, **kw) -> train.TrainConfig:
    base = dict(model=str(model), data="folder", data_root=str(data_root), steps=2, batch_size=2, lr=1e-3,
                ckpt_every=2, log_every=1, heldout_images=0, ema_decay=0.9, out=str(tmp_path / "runs" / "train"))
    return train.TrainConfig(**{**base, **kw})


def family(pipe: Path, data_root: Path, tmp_path: Path, **kw) -> latent.LatentFamily:
    model, _, parts = latent.build_latent_model(str(pipe), 0)
    return latent.LatentFamily(model, parts, **{"caption_dropout": 0.0, "loss_reduction": None, "seed": 0,
                                                "cache_dir": tmp_path / "cache", "source": str(pipe),
                                                "data": "folder", "data_root": str(data_root), **kw})


@pytest.mark.parametrize("layout", ["jsonl", "csv", "txt"])
def test_each_caption_layout_gives_every_image_its_caption(tmp_path, layout):
    from data.captioned_folder import CaptionedFolder

    folder = CaptionedFolder(captioned(tmp_path / "data", layout), image_size=32)
    assert folder.captions == CAPTIONS and folder.load([0, 5]).shape == (2, 3, 32, 32)


def test_a_folder_of_all_three_layouts_trains_and_releases_a_pipeline(tmp_path, pipes):
    """One run over three subfolders, captioned by metadata.jsonl, metadata.csv and sidecar .txt files."""
    for layout in ("jsonl", "csv", "txt"):
        captioned(tmp_path / "data" / layout, layout)
    run = train.main(config(tmp_path, pipes["sd"], tmp_path / "data"))
    pipe = load_latent(run / "pipeline")
    ema = read_checkpoint(run / "model.pt")["ema_state_dict"]
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())
    record = json.loads((run / "config.json").read_text())["family"]
    assert record["data"] == "folder" and record["data_root"] == str(tmp_path / "data")
    assert record["train_images"] == 18 and record["pixel_size"] == 32 and record["posterior"] == "cached"


def test_the_folder_captions_are_what_the_batch_conditions_on(tmp_path, pipes):
    fam = family(pipes["sd"], captioned(tmp_path / "data", "jsonl"), tmp_path)
    assert fam.folder.captions == CAPTIONS
    idx = [4, 1, 5, 0]
    z0, cond = fam.batch(idx, slice(0, 4), torch.Generator().manual_seed(0), "cpu")
    expected = text_conditioning(fam.pipe, [CAPTIONS[i] for i in idx], (32, 32)).encoder_hidden_states
    assert z0.shape == (4, 4, 16, 16) and torch.equal(cond["encoder_hidden_states"], expected)
    other = text_conditioning(fam.pipe, [CAPTIONS[i] for i in [1, 4, 5, 0]], (32, 32)).encoder_hidden_states
    assert not torch.equal(cond["encoder_hidden_states"], other)  # the rows follow the images


def test_per_step_encoding_draws_the_cached_posterior_sample(tmp_path, pipes, monkeypatch):
    data = captioned(tmp_path / "data", "txt")
    cached = family(pipes["sd"], data, tmp_path)
    monkeypatch.setattr(latent, "CACHE_LIMIT_BYTES", 0)
    per_step = family(pipes["sd"], data, tmp_path)
    assert cached.cached and not per_step.cached and per_step.mean is None
    a, _ = cached.batch([3, 2, 0], slice(0, 3), torch.Generator().manual_seed(1), "cpu")
    b, _ = per_step.batch([3, 2, 0], slice(0, 3), torch.Generator().manual_seed(1), "cpu")
    assert torch.allclose(a, b, atol=1e-5)


def test_resume_is_exact_and_refuses_changed_captions(tmp_path, pipes):
    data = captioned(tmp_path / "data", "jsonl")
    straight = train.main(config(tmp_path / "a", pipes["sd"], data, steps=2))
    first = train.main(config(tmp_path / "b", pipes["sd"], data, steps=1))
    resumed = train.main(train.TrainConfig(steps=2), resume=str(first))
    a = read_checkpoint(straight / "checkpoints" / "latest.pt")
    b = read_checkpoint(resumed / "checkpoints" / "latest.pt")
    for kind in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(v, b[kind][k]) for k, v in a[kind].items()), kind
    (data / "metadata.jsonl").write_text((data / "metadata.jsonl").read_text().replace("a red circle", "a red disc"))
    with pytest.raises(UserError, match="captioned images under --data-root .* changed since the run started"):
        train.main(train.TrainConfig(steps=3), resume=str(first))


def test_micro_conditions_are_each_files_size_and_its_crop_corner(tmp_path):
    from data.captioned_folder import CaptionedFolder
    from data.transforms import resize_shorter_side

    folder = tmp_path / "sizes"
    folder.mkdir()
    sizes = {"a_wide.png": (44, 36), "b_tall.png": (20, 50), "c_square.png": (32, 32)}  # (W, H)
    for name, (w, h) in sizes.items():
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        (folder / name).with_suffix(".txt").write_text(name)
    data = CaptionedFolder(folder, image_size=16)
    micro = data.micro_conditions()
    # 44x36 -> 19x16, crop left round(1.5) = 2; 20x50 -> 16x40, crop top 12; a square is neither resized off nor cut
    assert micro.tolist() == [[36, 44, 0, 2], [50, 20, 12, 0], [32, 32, 0, 0]]
    for i, (name, (w, h)) in enumerate(sizes.items()):  # the corner is where load() really cut the square
        with Image.open(folder / name) as img:
            big = np.asarray(resize_shorter_side(img.convert("RGB"), 16), dtype=np.float32) / 127.5 - 1
        top, left = micro[i, 2:].tolist()
        expected = torch.from_numpy(big[top:top + 16, left:left + 16]).permute(2, 0, 1)
        torch.testing.assert_close(data.load([i])[0], expected, rtol=0, atol=1e-6)


def test_an_sdxl_pipeline_trains_with_each_images_size_and_crop_in_the_time_ids(tmp_path, pipes):
    data = captioned(tmp_path / "data", "csv")
    fam = family(pipes["sdxl"], data, tmp_path)
    assert fam.pipe.kind == "sdxl" and fam.pipe.text_encoder_2 is not None
    _, cond = fam.batch([0, 1], slice(0, 2), torch.Generator().manual_seed(0), "cpu")
    # 44x36 files at 32 px: original (36, 44), resized to 39x32, crop corner (0, round(3.5) = 4), target (32, 32)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[36, 44, 0, 4, 32, 32]] * 2
    assert cond["encoder_hidden_states"].shape[-1] == 64  # both 32-wide encoders side by side
    sd1 = latent.parts_checksum({k: fam.parts[k] for k in ("vae", "text_encoder")})
    assert fam.checksum != sd1  # text_encoder_2 is in the resume checksum
    run = train.main(config(tmp_path, pipes["sdxl"], data))
    pipe = load_latent(run / "pipeline")
    assert pipe.kind == "sdxl" and pipe.force_zeros_for_empty_prompt
    assert json.loads((run / "config.json").read_text())["family"]["pipeline_kind"] == "sdxl"


def test_distillation_reads_the_same_folder(tmp_path, pipes):
    data = captioned(tmp_path / "data", "txt")
    run = train.main(config(tmp_path, pipes["sd"], data, steps=1, distill="output", teacher=str(pipes["sd"])))
    assert (run / "pipeline" / "model_index.json").is_file()
    scalars = (run / "scalars.jsonl").read_text()
    assert "kd_out" in scalars


def test_bad_folders_are_one_line_errors_naming_the_file(tmp_path, pipes):
    def refused(root: Path, match: str):
        with pytest.raises(UserError, match=match) as err:
            train.main(config(tmp_path, pipes["sd"], root))
        assert "\n" not in str(err.value)

    refused(tmp_path / "nowhere", "--data-root must be an existing folder .*nowhere")  # before any load
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "contains no images")
    bare = tmp_path / "bare"
    names = write_images(bare, 2)
    (bare / names[0]).with_suffix(".txt").write_text("a caption")
    refused(bare, "img_01.png: no caption")
    ghost = captioned(tmp_path / "ghost", "jsonl")
    with open(ghost / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "missing.png", "text": "gone"}) + "\n")
    refused(ghost, "metadata.jsonl:7: names 'missing.png'")
    broken = captioned(tmp_path / "broken", "txt")
    (broken / "img_03.png").write_bytes(b"not a png")
    refused(broken, "cannot load image .*img_03.png")
    with pytest.raises(UserError, match="--data-root must be an existing folder of captioned images"):
        train.main(train.TrainConfig(**{**vars(config(tmp_path, pipes["sd"], broken)), "data_root": None}))
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_prune_calibrates_on_the_same_folder_layouts(tmp_path, pipes):
    """pruning/pipelines.py reads its --data folder captions with the same reader (here a metadata.csv)."""
    from pruning.pipelines import calibration_pairs

    data = captioned(tmp_path / "data", "csv")
    z0, captions, _ = calibration_pairs(load_latent(pipes["sd"]), 3, data="folder", data_root=str(data), prompts=None,
                                        seed=0, cache_dir=tmp_path)
    assert z0.shape == (3, 4, 16, 16) and set(captions) <= set(CAPTIONS) and len(set(captions)) == 3
