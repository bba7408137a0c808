"""prune.py on latent text-to-image pipelines (reports/pipeline_prune.py, pruning/pipelines.py): a channel method, a
gradient method and a layer criterion each write a pruned pipeline folder that models.load and generation read,
whose U-Net is smaller and whose frozen parts are the source's; SDXL's layout; the one-line refusals, before any
run folder exists. A tiny random pipeline (tests/tiny_pipeline.py) maps the 32 px shapes to 16x16x4 latents."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prune
from common.cli import UserError
from models.pipelines import load_latent
from tiny_pipeline import write_tiny_pipeline
from training import latent, latent_data

pytestmark = pytest.mark.filterwarnings("ignore:.*truncat")
FAST = ["--num-samples", "2", "--sample-steps", "2"]



@pytest.fixture(scope="module")
def pipe_folder(tmp_path_factory) -> Path:
    return write_tiny_pipeline(tmp_path_factory.mktemp("prune_pipe") / "pipe", sample_size=16)


@pytest.fixture(autouse=True)
def few_images(monkeypatch):
    monkeypatch.setattr(latent, "TRAIN_IMAGES", 24)  # the cached posterior of the first 24 train images


def run_prune(tmp_path: Path, model: Path, *args: str) -> Path:
    return prune.main(prune.parse_args(["--model", str(model), "--out", str(tmp_path / "runs" / "prune"), *FAST,
                                        *args]))


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_pruned_pipeline(run: Path, source: Path) -> torch.nn.Module:
    """The run's pipeline folder loads (load_latent and models.load), its U-Net is the report's and smaller, its
    frozen parts are the source's bit for bit, and it generates finite images; returns its U-Net."""
    from models.loading import load
    from models.pipelines.text_to_image import Request, generate

    pipe, dense = load_latent(run / "pipeline"), load_latent(source)
    report = json.loads((run / "report.json").read_text())
    assert params(pipe.unet) == report["params_after"] < report["params_before"] == params(dense.unet)
    assert "_diffprune_config" in json.loads((run / "pipeline" / "unet" / "config.json").read_text())
    for name in ("vae", "text_encoder"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(dense, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    loaded = load(str(run / "pipeline"))
    unet = getattr(loaded, "unet", loaded)
    assert params(unet) == report["params_after"]
    images = generate(pipe, Request(prompt="a red disc on a blue background", steps=2), indices=[0, 1])
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    spec = json.loads((run / "spec.json").read_text())
    assert spec["source_model"] == str(source) and spec["settings"]["model"] == str(source)
    for name in ("samples_before.png", "samples_after.png", "grid_prompts.txt"):
        assert (run / name).is_file(), name
    heldout = (Path(prune.__file__).parent / "data" / "prompts" / "shapes_heldout.txt").read_text().splitlines()
    assert (run / "grid_prompts.txt").read_text().splitlines() == heldout[:2]  # the shapes world's first prompts
    return pipe.unet


def test_magnitude_writes_a_smaller_pipeline_and_replays_exactly(tmp_path, pipe_folder):
    run = run_prune(tmp_path, pipe_folder, "--method", "magnitude", "--ratio", "0.3")
    unet = check_pruned_pipeline(run, pipe_folder)
    widths = (run / "widths.txt").read_text()
    assert "conv_in" in widths and "32 ->      24" in widths  # 30% of conv_in's 32 channels, GroupNorm-rounded
    replay = prune.main(prune.parse_args(["--replay", str(run)]))
    again = load_latent(replay / "pipeline").unet.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in unet.state_dict().items())


def test_diff_pruning_reads_latents_with_their_captions(tmp_path, pipe_folder):
    run = run_prune(tmp_path, pipe_folder, "--method", "diff-pruning", "--ratio", "0.3", "--batch-size", "4",
                    "--max-timesteps", "4")
    check_pruned_pipeline(run, pipe_folder)
    report = json.loads((run / "report.json").read_text())
    assert report["calibration"]["data"] == "shapes" and report["calibration"]["count"] == 4
    assert len(report["calibration"]["captions"]) == 4 and (run / "timestep_losses.png").is_file()


def test_layer_output_loss_removes_units_and_reports_additivity(tmp_path, pipe_folder):
    run = run_prune(tmp_path, pipe_folder, "--method", "layer", "--target-params", "0.3", "--calib-size", "4",
                    "--additivity-subsets", "1")
    unet = check_pruned_pipeline(run, pipe_folder)
    removed = json.loads((run / "spec.json").read_text())["applied"]["removed"]
    assert removed and sorted(unet.config.removed) == sorted(removed)
    report = json.loads((run / "report.json").read_text())
    assert report["params_after"] <= 0.7 * report["params_before"]  # the target is reached
    assert (run / "units.txt").is_file() and "output-loss" in json.loads((run / "additivity.json").read_text())["criteria"]


def test_calibration_pairs_are_train_latents_with_their_captions(tmp_path, pipe_folder):
    from pruning.pipelines import calibration_pairs

    pipe = load_latent(pipe_folder)
    z0, captions, record = calibration_pairs(pipe, 3, data="shapes", data_root=None, prompts=None, seed=5,
                                             cache_dir=tmp_path)
    mean, std, attrs = latent_data.cached_posterior(pipe.vae, count=24, seed=0, cache_dir=tmp_path,
                                               key=latent.parts_checksum({"vae": pipe.vae,
                                                                          "text_encoder": pipe.text_encoder}))
    s = float(pipe.vae.config.scaling_factor)
    for row, i in enumerate(record["indices"]):  # z0 is one draw of image i's posterior: within a few sigma
        assert ((z0[row] / s - mean[i]).abs() <= 6 * std[i]).all()
        assert captions[row] in _variants(attrs[i])  # one paraphrase of image i's own caption
    again = calibration_pairs(pipe, 3, data="shapes", data_root=None, prompts=None, seed=5, cache_dir=tmp_path)
    assert torch.equal(again[0], z0) and again[1] == captions  # seeded


def _variants(attrs) -> list[str]:
    from data.captions import NUM_VARIANTS, caption

    return [caption(attrs, v) for v in range(NUM_VARIANTS)]


def test_captioned_image_folder_with_a_prompts_file(tmp_path, pipe_folder):
    from PIL import Image

    from pruning.pipelines import calibration_pairs

    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 40), colour).save(images / f"{i:05d}.png")
    (tmp_path / "captions.txt").write_text("a red square\na blue square\na green square\n")
    z0, captions, _ = calibration_pairs(load_latent(pipe_folder), 3, data="folder", data_root=str(images),
                                        prompts=str(tmp_path / "captions.txt"), seed=0, cache_dir=tmp_path)
    assert z0.shape == (3, 4, 16, 16) and sorted(captions) == ["a blue square", "a green square", "a red square"]
    (images / "00000.txt").write_text("sibling caption")  # no sibling .txt for the others, no prompts file
    with pytest.raises(UserError, match="no caption file"):
        calibration_pairs(load_latent(pipe_folder), 3, data="folder", data_root=str(images), prompts=None,
                          seed=0, cache_dir=tmp_path)


def test_sdxl_pipeline_prunes_with_its_added_conditions(tmp_path):
    folder = write_tiny_pipeline(tmp_path / "sdxl", sdxl=True)
    run = run_prune(tmp_path, folder, "--method", "layer", "--target-params", "0.2", "--calib-size", "4",
                    "--granularity", "block", "--additivity-subsets", "0")
    pipe = load_latent(run / "pipeline")
    assert pipe.kind == "sdxl" and pipe.text_encoder_2 is not None
    assert params(pipe.unet) < params(load_latent(folder).unet)


@pytest.mark.parametrize("args, match", [
    (["--method", "layer", "--target-params", "0.95"], "--target-params 0.95: the target is not reachable.*at least one unit of every down and up stage"),
    (["--method", "layer", "--criterion", "handcrafted", "--architecture", "bk-sdm-small"], "--architecture bk-sdm-small"),
    (["--method", "magnitude", "--data", "cifar10"], "--data cifar10: a text-to-image pipeline"),
    (["--method", "magnitude", "--data", "folder"], "--data folder needs --data-root"),
    (["--method", "magnitude", "--data", "folder", "--data-root", "no/such/dir"], "--data-root no/such/dir: no such"),
    (["--method", "magnitude", "--sample-steps", "600"], "--sample-steps 600: .* partly noised image"),
])
def test_bad_input_is_one_line_before_any_run_folder(tmp_path, pipe_folder, args, match):
    with pytest.raises(UserError, match=match) as e:
        run_prune(tmp_path, pipe_folder, *args)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "runs" / "prune").glob("0*"))


def test_an_empty_prompts_file_is_refused_before_loading(tmp_path, pipe_folder, monkeypatch):
    import models.pipelines

    (tmp_path / "empty.txt").write_text("\n  \n")
    monkeypatch.setattr(models.pipelines, "load_latent", lambda *a, **k: pytest.fail("the pipeline was read"))
    with pytest.raises(UserError, match="empty.txt: the file holds no caption"):
        run_prune(tmp_path, pipe_folder, "--method", "magnitude", "--prompts", str(tmp_path / "empty.txt"))


def test_prompts_with_a_ddpm_model_is_an_error(tmp_path):
    (tmp_path / "p.txt").write_text("a red disc\n")
    with pytest.raises(UserError, match="--prompts .*: captions apply to text-to-image pipelines"):
        prune.main(prune.parse_args(["--model", "tiny", "--method", "magnitude", "--prompts", str(tmp_path / "p.txt"),
                                     "--out", str(tmp_path / "runs")]))


def test_a_class_conditional_pipeline_prunes_data_free_and_refuses_captioned_calibration(tmp_path, monkeypatch):
    folder = write_tiny_pipeline(tmp_path / "ldm", text=False, class_embedder=True)  # the ImageNet LDM's layout
    run = run_prune(tmp_path, folder, "--method", "magnitude")
    assert (run / "grid_prompts.txt").read_text().splitlines() == ["class 0", "class 1"]  # class-labelled grids
    assert params(load_latent(run / "pipeline").unet) < params(load_latent(folder).unet)
    with pytest.raises(UserError, match="--data folder has captions, not class labels"):
        run_prune(tmp_path, folder, "--method", "layer", "--target-params", "0.2", "--data", "folder",
                  "--data-root", str(tmp_path))
    # more pairs than the train split's 8,748 single-kind images: refused naming the flag, before any encoding
    import pruning.pipelines as pp

    def never(*args, **kwargs):
        raise AssertionError("the train split was read before the count was checked")
    monkeypatch.setattr(pp, "_train_posterior", never)
    monkeypatch.setattr(pp, "rendered_split", never, raising=False)
    with pytest.raises(UserError, match="--batch-size 9000: a class-conditional pipeline .* has 8748"):
        run_prune(tmp_path, folder, "--method", "diff-pruning", "--batch-size", "9000")
    with pytest.raises(UserError, match="--calib-size 9000: "):
        run_prune(tmp_path, folder, "--method", "layer", "--target-params", "0.2", "--calib-size", "9000")
    # a "no class" row that is a kind's label would train that kind as the unconditional input
    config = folder / "class_embedder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "unconditional_class": 0}))
    with pytest.raises(UserError, match="unconditional_class is 0, which is the label of the kind 'disc'"):
        run_prune(tmp_path, folder, "--method", "diff-pruning", "--batch-size", "4")
    bare = write_tiny_pipeline(tmp_path / "uncond", text=False)  # neither text nor classes: nothing to condition on
    with pytest.raises(UserError, match="neither a text encoder nor classes, so no captioned or labelled image can "
                                        "condition layer pruning"):
        run_prune(tmp_path, bare, "--method", "layer", "--target-params", "0.2")


def test_a_class_conditional_pipeline_is_calibrated_on_labelled_shapes(tmp_path):
    """(z0, y) pairs: latents of single-kind train images with their kind, read through the class token."""
    import pruning.pipelines as pp
    from pruning.spec import ChannelPruning
    from training.class_conditioning import shapes_class_labels
    from training.latent import parts_checksum
    from training.latent_data import cached_posterior

    folder = write_tiny_pipeline(tmp_path / "ldm", text=False, class_embedder=True, sample_size=16)
    pipe = load_latent(folder)
    spec = ChannelPruning(method="diff-pruning", batch_size=4, seed=3)
    z0, cond, record = pp.calibration(pipe, spec, data="shapes", data_root=None, prompts=None,
                                      cache_dir=tmp_path / "cache", device="cpu")
    mean, std, attrs = cached_posterior(pipe.vae, count=24, seed=0, cache_dir=tmp_path / "cache",
                                        key=parts_checksum({"vae": pipe.vae, "class_embedder": pipe.class_embedder}))
    assert len(list((tmp_path / "cache").glob("t2i_latents_*"))) == 1  # train.py's cache, not a second copy
    rows, labels = shapes_class_labels(attrs)
    assert set(record["indices"]) <= set(rows) and len(record["indices"]) == 4
    wanted = [labels[rows.index(i)] for i in record["indices"]]
    assert record["class_labels"] == wanted
    assert torch.equal(cond["encoder_hidden_states"], pipe.class_embedder(torch.tensor(wanted)))
    assert z0.shape == (4, 4, 16, 16)
    run = run_prune(tmp_path, folder, "--method", "layer", "--target-params", "0.2", "--calib-size", "4")
    assert len(json.loads((run / "report.json").read_text())["calibration"]["class_labels"]) == 4
    (tmp_path / "p.txt").write_text("a red disc on a blue background\n")
    with pytest.raises(UserError, match="--prompts .*: the ldm pipeline .* has no text encoder to read captions"):
        run_prune(tmp_path, folder, "--method", "magnitude", "--prompts", str(tmp_path / "p.txt"))


def test_class_pairs_at_another_pixel_size_encode_the_chosen_images_at_that_size(tmp_path):
    import numpy as np

    import pruning.pipelines as pp
    from data.procedural import ProceduralShapes
    from data.rendered import rendered_split, to_minus_one_one
    from training.class_conditioning import shapes_class_labels

    pipe = load_latent(write_tiny_pipeline(tmp_path / "ldm", text=False, class_embedder=True, sample_size=8))
    z0, y, record = pp.class_pairs(pipe, 3, seed=5, cache_dir=tmp_path / "cache")
    assert record["pixels"] == 16 and z0.shape == (3, 4, 8, 8)
    rows, labels = shapes_class_labels(rendered_split("train", 24, seed=0)[1])
    g = torch.Generator().manual_seed(5)
    pick = torch.randperm(len(rows), generator=g)[:3].tolist()
    assert record["indices"] == [rows[k] for k in pick] and y.tolist() == [labels[k] for k in pick]
    shapes = ProceduralShapes(image_size=16, size=24, seed=0, split="train")
    x = to_minus_one_one(np.stack([shapes.image_uint8(i) for i in record["indices"]]))
    assert torch.equal(z0, pp._encode(pipe.vae, x, g))  # the same posterior draw of the 16 px renders


def test_evaluate_reports_the_pruned_unets_params_and_macs(tmp_path, pipe_folder):
    import evaluate

    run = run_prune(tmp_path, pipe_folder, "--method", "magnitude", "--ratio", "0.3", "--num-samples", "0")
    (tmp_path / "p.txt").write_text("a red disc on a blue background\n")
    cfg = evaluate.parse_args(["--model", str(run / "pipeline"), "--prompts", str(tmp_path / "p.txt"), "--steps", "2",
                               "--shapes-metrics", "off", "--out", str(tmp_path / "runs" / "eval")])[0]
    report = json.loads((evaluate.run_command(cfg) / "report.json").read_text())
    pruned = json.loads((run / "report.json").read_text())
    assert report["params"] == pruned["params_after"] < pruned["params_before"]
    assert report["macs_paper"] == pruned["macs_paper_after"] < pruned["macs_paper_before"]


@pytest.mark.parametrize("kind", ["class", "unconditional"])
def test_the_printed_generate_and_evaluate_hints_are_accepted(tmp_path, capsys, kind):
    """prune.py's "next:" lines follow what the pipeline reads: a class label, or nothing (they used to pass the
    grid's "class 0" / "(unconditional)" line as a prompt, which generate.py refuses)."""
    import shlex

    import evaluate
    import generate

    folder = write_tiny_pipeline(tmp_path / kind, text=False, class_embedder=kind == "class")
    run_prune(tmp_path, folder, "--method", "magnitude")
    lines = [shlex.split(x.split("#")[0]) for x in capsys.readouterr().out.splitlines()
             if x.strip().startswith(("python generate.py", "python evaluate.py"))]
    assert any(x[1] == "generate.py" for x in lines)
    for x in lines:
        if x[1] == "generate.py":
            generate.precheck(generate.parse_args(x[2:] + ["--out", str(tmp_path / "gen")]))
        else:
            evaluate.parse_args(x[2:])

