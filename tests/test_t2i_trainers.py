"""The tiny CLIP and VAE trainers (benchmarks/train_t2i_clip.py, train_t2i_vae.py): exact resume, shipping, loading."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from data.captions import caption_attributes
from data.procedural import ProceduralShapes
from data.rendered import rendered_split

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLIP_TINY = ["--steps", "4", "--batch-size", "4", "--width", "16", "--layers", "1", "--heads", "2",
             "--train-images", "12", "--eval-pairs", "6", "--log-every", "1", "--eval-every", "2", "--warmup", "1"]
VAE_TINY = ["--steps", "4", "--batch-size", "2", "--widths", "8", "16", "16", "--groups", "4", "--train-images", "8",
            "--eval-images", "4", "--scale-images", "4", "--log-every", "1", "--eval-every", "2", "--warmup", "1"]


def _run(module, tmp_path: Path, run: str, extra: list[str]) -> dict:
    # The CLIP runs with its hard negatives: their draws must resume exactly too.
    tiny = CLIP_TINY + ["--hard-negatives"] if module.__name__ == "train_t2i_clip" else VAE_TINY
    module.main(module.parse_args(["--run", str(tmp_path / run), "--cache", str(tmp_path / "cache"), *tiny, *extra]))
    return torch.load(tmp_path / run / "state.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train_t2i_clip", "train_t2i_vae"])
def test_two_sessions_equal_one_and_the_shipped_folder_loads(tmp_path, name):
    module = _script(name)
    straight = _run(module, tmp_path, "straight", [])
    first = _run(module, tmp_path, "resumed", ["--stop-after", "2"])
    assert first["step"] == 2
    out, results = tmp_path / "shipped", tmp_path / "results.json"
    resumed = _run(module, tmp_path, "resumed", ["--ship", str(out), "--results", str(results)])
    assert resumed["step"] == straight["step"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    record = json.loads(results.read_text())
    assert record["command"].startswith("OMP_NUM_THREADS=1 python -m benchmarks.") and record["wall_seconds"] > 0
    assert len(record["curve"]) == 4 and "machine" in record
    if name == "train_t2i_clip":
        from models.clip.load import load_clip

        model = load_clip(out)
        assert type(model).__name__ == "CLIPModel" and model.config.text.max_position_embeddings == 32
        assert 0.0 <= record["heldout_retrieval"]["image_to_text_top1"] <= 1.0
        checks = record["heldout_retrieval"]
        assert set(checks["word_sensitivity"]) == set(checks["text_state_change"]) == {"colour", "kind", "count",
                                                                                      "background"}
        text = load_clip(out, kind="CLIPTextModelWithProjection")  # the teacher's text encoder is this tower
        ids = torch.tensor([[600, 353, 535, 562, 550, 353, 570, 521, 601]])  # "a red disc on a grey background"
        torch.testing.assert_close(text(ids).text_embeds, model.text_embeds(ids))
    else:
        from models.pipelines.component import load_component

        vae = load_component(out)
        assert vae.config.scaling_factor == record["test_split"]["scaling_factor"] > 0
        z = vae.encode(torch.zeros(1, 3, 32, 32)).mean
        assert z.shape == (1, 4, 8, 8)
    # A resumed run refuses other settings, and shipping never overwrites.
    with pytest.raises(ValueError, match="started with other settings"):
        _run(module, tmp_path, "resumed", ["--lr", "0.5"])
    before = sorted(p.stat().st_mtime_ns for p in out.iterdir())
    _run(module, tmp_path, "resumed", ["--ship", str(out), "--results", str(tmp_path / "again.json")])
    assert sorted(p.stat().st_mtime_ns for p in out.iterdir()) == before


class _FixedLogits(torch.nn.Module):
    """A stand-in CLIP whose text-image logits are a fixed (texts, images) matrix, to check the loss by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def logits_per_text(self, ids, pixels):
        assert len(ids) == len(self.logits) and len(pixels) == self.logits.shape[1]
        return self.logits


def test_contrastive_loss_with_and_without_hard_negatives_by_hand():
    module = _script("train_t2i_clip")
    torch.manual_seed(0)
    n, m = 3, 6
    logits = torch.randn(n + m, n)  # rows: 3 true captions, then 6 negatives; columns: 3 images
    ids, negatives, pixels = torch.zeros(n, 2), torch.zeros(m, 2), torch.zeros(n, 1)

    def ce(rows: torch.Tensor, target: int) -> float:  # -log softmax(rows)[target]
        return float(rows.logsumexp(0) - rows[target])

    plain = module.contrastive_loss(_FixedLogits(logits[:n]), ids, pixels)
    by_hand = 0.5 * (sum(ce(logits[i, :n], i) for i in range(n)) / n + sum(ce(logits[:n, j], j) for j in range(n)) / n)
    assert abs(float(plain) - by_hand) < 1e-5
    # With negatives: an image's row (its logits against every text) also holds the 6 negatives; a text's row
    # (against the 3 images) is as before for the true captions, and a negative caption has no row at all.
    hard = module.contrastive_loss(_FixedLogits(logits), ids, pixels, negatives)
    by_hand = 0.5 * (sum(ce(logits[i, :n], i) for i in range(n)) / n + sum(ce(logits[:, j], j) for j in range(n)) / n)
    assert abs(float(hard) - by_hand) < 1e-5
    assert float(hard) > float(plain)  # more competitors in every image's row


def test_rendered_cache_round_trips(tmp_path):
    images, attrs = rendered_split("test", 3, start=5, cache_dir=tmp_path)
    again, attrs_again = rendered_split("test", 3, start=5, cache_dir=tmp_path)  # read from the cache
    assert len(list(tmp_path.iterdir())) == 1
    ds = ProceduralShapes(size=8, split="test")
    for j in range(3):
        assert (again[j] == ds.image_uint8(5 + j)).all() and (images[j] == again[j]).all()
        assert attrs[j] == attrs_again[j] == caption_attributes(ds.attributes(5 + j))


SHIPPED = REPO / "checkpoints" / "t2i_shapes"


def test_shipped_clip_ranks_own_captions_first():
    from data.captions import caption
    from metrics.clip_score import pair_cosines
    from models.clip.load import load_clip
    from models.clip.tokenizer import CLIPTokenizer

    if not (SHIPPED / "clip" / "config.json").is_file():
        pytest.skip("checkpoints/t2i_shapes/clip not shipped yet")
    model, tok = load_clip(SHIPPED / "clip"), CLIPTokenizer.from_folder(SHIPPED / "tokenizer")
    images, attrs = rendered_split("test", 16, start=2000)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 (N, 3, 32, 32)
    texts = [caption(a, 0) for a in attrs]
    own, other = pair_cosines(model, tok, x, texts), pair_cosines(model, tok, x, texts[1:] + texts[:1])
    assert own.mean() > 0.5 > other.mean() + 0.3


def test_shipped_vae_reconstructs_test_images():
    from models.pipelines.component import load_component

    if not (SHIPPED / "vae" / "config.json").is_file():
        pytest.skip("checkpoints/t2i_shapes/vae not shipped yet")
    vae = load_component(SHIPPED / "vae")
    images, _ = rendered_split("test", 16, start=2000)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        q = vae.encode(x)
        recon = vae.decode(q.mean).clamp(-1, 1)
        latents = vae.to_latent(q.sample(torch.Generator().manual_seed(0)))
    assert q.mean.shape == (16, 4, 16, 16)  # the pipeline's 16x16x4 latents
    mse = ((x - recon) / 2).pow(2).mean(dim=(1, 2, 3))
    assert (10 * torch.log10(1 / mse)).mean() > 30  # dB; the recorded PSNR (34.2) is benchmarks/results/t2i_vae_16x16.json's
    assert 0.5 < latents.std() < 2.0  # scaling_factor = 1 / std of training latents


def test_make_t2i_pipeline_parts_write_the_clip_text_tower_as_the_text_encoder(tmp_path):
    from benchmarks.make_t2i_pipeline import write_parts
    from models.clip.load import load_clip, save_clip
    from models.clip.tokenizer import CLIPTokenizer
    from models.pipelines.component import load_component

    module = _script("train_t2i_clip")
    tok = CLIPTokenizer.from_folder(SHIPPED / "tokenizer")
    torch.manual_seed(0)
    clip = module.CLIPModel(module.clip_config(tok, width=16, layers=1, heads=2))
    module.init_weights(clip)
    save_clip(clip.eval(), tmp_path / "clip")
    assert write_parts(tmp_path) == ["text_encoder", "scheduler"]
    assert write_parts(tmp_path) == []  # nothing is overwritten
    text = load_component(tmp_path / "text_encoder")
    ids = torch.tensor([[600, 353, 535, 562, 550, 353, 570, 521, 601]])  # "a red disc on a grey background"
    clip = load_clip(tmp_path / "clip")
    with torch.no_grad():  # the text encoder's pooled EOS state, projected, is the CLIP's text embedding
        torch.testing.assert_close(clip.text_projection(text(ids).pooled), clip.text_embeds(ids), rtol=0, atol=0)
        assert text(ids).last_hidden_state.shape == (1, 9, 16)


def test_a_pipeline_with_another_clip_is_a_new_folder_whose_text_encoder_is_that_clip(tmp_path):
    from benchmarks.make_t2i_pipeline import new_clip_folder
    from common.cli import UserError
    from models.clip.load import load_clip, save_clip
    from models.clip.tokenizer import CLIPTokenizer
    from models.pipelines.pipeline import load_pipeline

    module = _script("train_t2i_clip")
    tok = CLIPTokenizer.from_folder(SHIPPED / "tokenizer")
    for width in (16, 64):
        torch.manual_seed(0)
        clip = module.CLIPModel(module.clip_config(tok, width=width, layers=1, heads=2))
        module.init_weights(clip)
        save_clip(clip.eval(), tmp_path / f"clip{width}")
    with pytest.raises(UserError, match="holds a CLIPTextModel, not a CLIPModel"):
        new_clip_folder(SHIPPED, SHIPPED / "text_encoder", tmp_path / "tower", warm_start=True)
    with pytest.raises(UserError, match="text width 16, but .* reads 64-wide"):
        new_clip_folder(SHIPPED, tmp_path / "clip16", tmp_path / "narrow", warm_start=True)
    assert not (tmp_path / "narrow").exists()  # refused before anything was written
    new_clip_folder(SHIPPED, tmp_path / "clip64", tmp_path / "init", warm_start=True)
    with pytest.raises(UserError, match="exists"):
        new_clip_folder(SHIPPED, tmp_path / "clip64", tmp_path / "init", warm_start=True)
    pipe, clip = load_pipeline(tmp_path / "init"), load_clip(tmp_path / "clip64")
    ids = torch.tensor([[600, 353, 535, 562, 550, 353, 570, 521, 601]])
    with torch.no_grad():
        torch.testing.assert_close(clip.text_projection(pipe.text_encoder(ids).pooled), clip.text_embeds(ids))
    old = load_pipeline(SHIPPED)
    for a, b in zip(old.unet.state_dict().values(), pipe.unet.state_dict().values()):
        assert torch.equal(a, b)  # the warm start's U-Net is the old one
    new_clip_folder(SHIPPED, tmp_path / "clip64", tmp_path / "parts", warm_start=False)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["clip", "scheduler", "text_encoder",
                                                                       "tokenizer", "vae"]


def test_the_class_token_start_is_the_text_unet_with_the_class_table(tmp_path):
    from benchmarks.make_t2i_pipeline import class_token_folder
    from common.cli import UserError
    from models.pipelines.pipeline import load_pipeline
    from training.class_conditioning import shapes_class_embedder

    class_token_folder(SHIPPED, tmp_path / "cls")
    pipe, old = load_pipeline(tmp_path / "cls"), load_pipeline(SHIPPED)
    assert pipe.kind == "ldm" and not pipe.has_text and pipe.num_classes == 4 and pipe.has_unconditional
    assert torch.equal(pipe.class_embedder.embedding.weight, shapes_class_embedder().embedding.weight)
    for a, b in zip(old.unet.state_dict().values(), pipe.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == ["class_embedder", "model_index.json",
                                                                     "scheduler", "unet", "vae"]
    with pytest.raises(UserError, match="exists"):
        class_token_folder(SHIPPED, tmp_path / "cls")


def test_t2i_text_words_tables_both_shipped_clips(tmp_path):
    from benchmarks import t2i_text_words

    record = t2i_text_words.main(t2i_text_words.parse_args(["--count", "8", "--out", str(tmp_path / "w.json")]))
    assert [r["clip"] for r in record["rows"]] == ["checkpoints/t2i_shapes/clip", "checkpoints/t2i_clip_negatives"]
    for row in record["rows"]:
        assert set(row["word_sensitivity"]) == set(row["text_state_change"]) == {"colour", "kind", "count",
                                                                                "background"}
        assert all(0 <= v["own_higher"] <= 1 for v in row["word_sensitivity"].values())
    md = (tmp_path / "w.md").read_text()
    assert md.count("| `checkpoints/") == 2 and json.loads((tmp_path / "w.json").read_text())["count"] == 8
    with pytest.raises(SystemExit, match="not a CLIPModel folder"):
        t2i_text_words.main(t2i_text_words.parse_args(["--clips", str(tmp_path), "--out", str(tmp_path / "x.json")]))
    with pytest.raises(SystemExit, match="a CLIPTextModel, not a CLIPModel"):
        t2i_text_words.main(t2i_text_words.parse_args(["--clips", str(SHIPPED / "clip"), str(SHIPPED / "text_encoder"),
                                                       "--out", str(tmp_path / "x.json")]))
    assert not (tmp_path / "x.json").exists()
