"""The embedded text-to-image world's metrics in evaluate.py --prompts (metrics/t2i_shapes.py, --clip shapes):
known answers with real shapes images standing in for samples, the report of a tiny random pipeline, the
shipped held-out prompts file, and benchmarks/t2i_quality.py on a tiny pipeline. (prune.py on pipelines:
tests/test_prune_pipeline.py.)"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import evaluate
from common.cli import UserError
from data.captions import CaptionAttributes, CaptionedShapes, caption, parse_caption
from data.prompts import shapes_heldout
from metrics import t2i_shapes
from metrics.attributes import ATTRIBUTE_READER_CHECKPOINT, ATTRIBUTES, attribute_accuracy, load_attribute_reader
from metrics.clip_score import CLIP_MEAN, CLIP_STD, LOCAL_CLIPS, clip_score, load_clip_scorer, pair_cosines, preprocess
from metrics.t2i_evaluation import T2IEvalConfig, evaluate_pipeline
from tests.test_attributes import _easy
from tests.tiny_pipeline import write_tiny_pipeline

SHIPPED = LOCAL_CLIPS["shapes"][0].is_dir() and ATTRIBUTE_READER_CHECKPOINT.is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="checkpoints/t2i_shapes/clip or shapes_net_t2i.pt not shipped")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("t2i_shapes") / "pipe")


def heldout(n: int) -> list[str]:
    return shapes_heldout.FILE.read_text().splitlines()[:n]


# ------------------------------------------------------------------------------------------------ CLIP-shapes
def test_clip_shapes_preprocessing_is_the_identity_resize_at_32_px():
    images, _ = t2i_shapes.real_images_and_captions(2)
    want = (images - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(preprocess(images, size=32), want, atol=1e-6, rtol=0)


@needs_shipped
def test_real_image_with_its_own_caption_scores_the_maximum_cosine():
    """Among captions with another colour word, another background, or of other images. (The shipped tiny
    CLIP does not tell shape kinds, counts or the order of the background's ends apart: such a word changed
    scores about as the own caption on held-out images, docs/METRICS.md; attribute accuracy measures them.)"""
    model, tokenizer = load_clip_scorer("shapes")
    assert model.config.vision.image_size == 32
    ds = CaptionedShapes(size=60, split="test")
    index = next(i for i in range(60) if _easy(ds.shapes.attributes(i)))  # one large shape, two clear ends
    image, own, ca = ds[index]
    (kind, colour), = ca.shapes
    bg = ca.background
    changed = [caption(CaptionAttributes(shapes=s, background=b), ds.variant(index)) for s, b in (
        (((kind, (colour + 1) % 8),), bg), (((kind, (colour + 3) % 8),), bg),      # another colour
        (((kind, colour),), ((bg[0] + 2) % 7,)), (((kind, colour),), (bg[0], 6 if bg[0] != 6 else 0)))]
    # ... another background (the CLIP hardly tells the order of the two ends apart, so no swapped ends)
    others = [ds.caption_and_attributes(j)[0] for j in range(5) if j != index][:4]
    candidates = [own] + changed + others
    assert len(set(candidates)) == len(candidates)
    images01 = ((image[None] + 1) / 2).expand(len(candidates), -1, -1, -1)
    cos = pair_cosines(model, tokenizer, images01, candidates)
    assert int(cos.argmax()) == 0 and cos[0] > cos[1:].max() + 0.02, cos


# ------------------------------------------------------------------------------- evaluation on real images
@needs_shipped
def test_evaluation_of_real_images_gives_their_known_scores_and_a_swapped_colour_loses_only_colours(
        pipe, tmp_path, monkeypatch):
    """The 'pipeline' returns test images [0, 8): the report's scores are those of the real images with
    their own captions, FD-shapes against the same 8 real images is 0; one colour word swapped in one prompt
    costs exactly that image's colours (and the colour-kind pairs / ``all`` that hang on them)."""
    n = 8
    real, captions = t2i_shapes.real_images_and_captions(n)
    assert heldout(n) == captions  # the shipped file: captions of test images [0, 128), in order
    import models.pipelines.text_to_image as t2i_pipe
    monkeypatch.setattr(t2i_pipe, "generate", lambda pipe, request, indices, **kw: real[list(indices)])
    reader = load_attribute_reader()
    right = attribute_accuracy(reader, real, captions)
    i = next(i for i in range(n) if len(parse_caption(captions[i]).shapes) == 1
             and attribute_accuracy(reader, real[i:i + 1], captions[i:i + 1])["all"] == 1.0)
    (kind, colour), = parse_caption(captions[i]).shapes
    swapped = list(captions)
    swapped[i] = caption(CaptionAttributes(shapes=((kind, (colour + 1) % 8),),
                                           background=parse_caption(captions[i]).background),
                         CaptionedShapes(size=n, split="test").variant(i))
    reports = {}
    for name, prompts in (("own", captions), ("swapped", swapped)):
        (tmp_path / f"{name}.txt").write_text("\n".join(prompts) + "\n")
        cfg = T2IEvalConfig(model=str(pipe), prompts=str(tmp_path / f"{name}.txt"), steps=1,
                            out=str(tmp_path / name))
        reports[name] = json.loads((evaluate_pipeline(cfg) / "report.json").read_text())
    own = reports["own"]
    assert own["shapes_metrics"] is True and own["clip_model"] == "shapes"
    assert own["attribute_accuracy"] == right
    assert own["fd_shapes"] == pytest.approx(0.0, abs=1e-3) and own["fd_shapes_num_samples"] == n
    assert own["fd_shapes_reference"] == f"shapes test split (seed 0) [0, {n}), 32x32"
    model, tokenizer = load_clip_scorer("shapes")
    want = clip_score(model, tokenizer, real, captions)
    assert own["clip_score"] == pytest.approx(want.score, abs=1e-5)
    assert own["clip_mean_cosine"] == pytest.approx(want.mean_cosine, abs=1e-6)
    got = reports["swapped"]["attribute_accuracy"]
    for key in ATTRIBUTES:
        drop = 1 / n if key in ("colours", "pairs", "all") else 0.0
        assert got[key] == pytest.approx(right[key] - drop), key
    assert reports["swapped"]["clip_mean_cosine"] < own["clip_mean_cosine"]


# ----------------------------------------------------------------------------------- a tiny random pipeline
@needs_shipped
@pytest.mark.filterwarnings("ignore:The following part of your input was truncated")  # the tiny tokenizer: 16 tokens
def test_tiny_pipeline_report_has_the_shapes_keys(pipe, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(heldout(3)) + "\n")
    argv = ["--model", str(pipe), "--prompts", str(prompts), "--steps", "2", "--out", str(tmp_path / "runs")]
    run = evaluate.run_command(evaluate.parse_args(argv)[0])  # 16 x 16 samples, read at 32 x 32
    report = json.loads((run / "report.json").read_text())
    assert report["shapes_metrics"] is True and report["clip_model"] == "shapes"
    assert set(report["attribute_accuracy"]) == set(ATTRIBUTES) | {"n"} and report["attribute_accuracy"]["n"] == 3
    assert all(0.0 <= report["attribute_accuracy"][k] <= 1.0 for k in ATTRIBUTES)
    assert report["shapes_image_size"] == 32 and report["image_size"] == [16, 16]
    for key in ("fd_shapes", "kid_shapes", "clip_score", "clip_mean_cosine"):
        assert np.isfinite(report[key]), key
    assert report["fd_shapes_reference"] == "shapes test split (seed 0) [0, 3), 32x32"
    md = (run / "report.md").read_text()
    assert "| attribute_accuracy.all |" in md and "| fd_shapes |" in md and "| clip_model | shapes |" in md
    off = evaluate.run_command(evaluate.parse_args(argv + ["--shapes-metrics", "off"])[0])
    report = json.loads((off / "report.json").read_text())
    assert report["shapes_metrics"] is False and report["shapes_metrics_skipped"] == "--shapes-metrics off"
    assert "attribute_accuracy" not in report and "clip_score" not in report and "fd_shapes" not in report


def test_shapes_metrics_switch(pipe, tmp_path, monkeypatch):
    shapes = heldout(2)
    assert t2i_shapes.resolve("auto", shapes) == (True, None)
    on, why = t2i_shapes.resolve("auto", shapes + ["a cat"])
    assert not on and why == "prompt 3 ('a cat') is not a shapes caption (data/captions.py grammar)"
    assert t2i_shapes.resolve("auto", None) == (False, "class labels: --shapes-metrics on measures kind accuracy "
                                                       "(metrics/class_shapes.py)")
    assert t2i_shapes.resolve("on", None) == (True, None)  # labels are checked when the metrics are built
    (tmp_path / "p.txt").write_text("\n".join(shapes + ["a cat"]) + "\n")
    import metrics.t2i_evaluation as t2i
    monkeypatch.setattr(t2i, "load_pipeline", lambda cfg: pytest.fail("weights read before the check"))
    with pytest.raises(UserError, match=r"--shapes-metrics on: prompt 3 \('a cat'\)"):
        evaluate_pipeline(T2IEvalConfig(model=str(pipe), prompts=str(tmp_path / "p.txt"), shapes_metrics="on",
                                        out=str(tmp_path / "runs")))


def test_a_missing_shapes_clip_fails_before_generation(pipe, tmp_path, monkeypatch):
    import metrics.clip_score
    import metrics.t2i_evaluation as t2i
    monkeypatch.setitem(metrics.clip_score.LOCAL_CLIPS, "shapes", (tmp_path / "nowhere", tmp_path / "nowhere"))
    monkeypatch.setattr(t2i, "load_pipeline", lambda cfg: pytest.fail("weights read before the CLIP"))
    (tmp_path / "p.txt").write_text(heldout(1)[0] + "\n")
    with pytest.raises(FileNotFoundError, match="CLIP 'shapes': .*nowhere is missing"):
        evaluate_pipeline(T2IEvalConfig(model=str(pipe), prompts=str(tmp_path / "p.txt"), out=str(tmp_path / "r")))


# ------------------------------------------------------------------------------------------ the prompts file
def test_heldout_prompts_file_is_what_its_script_writes():
    lines = shapes_heldout.FILE.read_text(encoding="utf-8").splitlines()
    assert len(lines) == shapes_heldout.COUNT == 128 and shapes_heldout.SPLIT == "test"
    assert lines == shapes_heldout.heldout_captions()
    assert t2i_shapes.first_unparsed(lines) is None
    ds = CaptionedShapes(size=128, split="test")
    assert [parse_caption(c) for c in lines[:16]] == [ds.caption_and_attributes(i)[1] for i in range(16)]
    assert shapes_heldout.main(["--check"]) == 0


# ------------------------------------------------------------------------------------ benchmarks/t2i_quality
@needs_shipped
@pytest.mark.filterwarnings("ignore:The following part of your input was truncated")
def test_t2i_quality_benchmark_on_a_tiny_pipeline(pipe, tmp_path):
    from PIL import Image

    from benchmarks import t2i_quality
    out = tmp_path / "q" / "t2i_quality.json"
    args = t2i_quality.parse_args(["--model", str(pipe), "--num-prompts", "3", "--guidance-scales", "1", "2",
                                   "--steps", "2", "--grid-images", "2", "--out", str(out)])
    record = t2i_quality.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert [r["guidance"] for r in record["scales"]] == [1.0, 2.0] and record["best_guidance"] in (1.0, 2.0)
    best = max(r["attribute_accuracy"]["all"] for r in record["scales"])
    assert next(r for r in record["scales"] if r["guidance"] == record["best_guidance"])["attribute_accuracy"]["all"] == best
    real, captions = t2i_shapes.real_images_and_captions(3)
    assert record["prompts_describe_the_real_images"] is True and captions == heldout(3)
    assert record["real"]["attribute_accuracy"] == attribute_accuracy(load_attribute_reader(), real, captions)
    model, tokenizer = load_clip_scorer("shapes")
    assert record["real"]["clip_mean_cosine"] == pytest.approx(clip_score(model, tokenizer, real, captions).mean_cosine)
    for r in record["scales"]:
        assert r["clip_mean_cosine_ratio"] == pytest.approx(r["clip_mean_cosine"] / record["real"]["clip_mean_cosine"])
        assert r["seconds_per_image"] > 0 and np.isfinite(r["fd_shapes"])
    assert record["fd_shapes_floor"]["fd_shapes"] > 0
    assert record["fd_shapes_floor"]["sets"] == "shapes test split (seed 0) [0, 3) vs [10000, 10003)"
    assert set(record["clip_shapes_word_sensitivity"]) == {"colour", "kind", "count", "background"}
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    assert record["machine"]["torch_threads"] == 1 and record["command"].startswith(env + "python -m benchmarks.t2i_quality")
    grid = Image.open(out.with_name("t2i_quality_grid.png"))
    assert grid.size == (4 * (2 * 18 + 2), 4 * (2 * 18 + 2))  # 2 scales x 2 samples of 16 px, pad 2, scale 4
    assert "| real images |" in out.with_suffix(".md").read_text()


def test_t2i_quality_refuses_prompts_outside_the_grammar_before_loading(pipe, tmp_path, monkeypatch):
    from benchmarks import t2i_quality
    import models.pipelines
    monkeypatch.setattr(models.pipelines, "load_latent", lambda *a, **k: pytest.fail("loaded before the check"))
    (tmp_path / "p.txt").write_text(heldout(1)[0] + "\na cat\n")
    args = t2i_quality.parse_args(["--model", str(pipe), "--prompts", str(tmp_path / "p.txt"),
                                   "--out", str(tmp_path / "q.json")])
    with pytest.raises(UserError, match=r"prompt 2 \('a cat'\) is not a shapes caption"):
        t2i_quality.main(args)
    args = t2i_quality.parse_args(["--model", str(pipe), "--num-prompts", "1", "--out", str(tmp_path / "q.json")])
    with pytest.raises(UserError, match="at least 2 prompts"):
        t2i_quality.main(args)


# ------------------------------------------------------------------------------- what the text side can see
class _OneHotEncoder(torch.nn.Module):
    """A stand-in text encoder whose last hidden state is one-hot(token id), with ``merged`` token ids read as
    one id: it sees every word except those it merges."""

    def __init__(self, vocab: int, merged: set[int]):
        super().__init__()
        self.vocab, self.merged = vocab, merged

    def forward(self, ids):
        read = ids.clone()
        for t in self.merged:
            read[ids == t] = min(self.merged)
        return type("Out", (), {"last_hidden_state": torch.nn.functional.one_hot(read, self.vocab).float()})


def _one_hot_change_by_hand(tok, word: str, merged: set[int], count: int) -> float:
    """The mean relative change for _OneHotEncoder, by counting tokens: both captions padded with EOS to the
    longer one's length L (BOS to EOS), d positions differ after merging: ||H - H'|| / ||H|| = sqrt(2 d / L)."""
    from data.captions import word_changed
    ds = CaptionedShapes(size=count, split="test")
    out = []
    for i in range(count):
        text, ca = ds.caption_and_attributes(i)
        other = word_changed(ca, word)
        if other is None:
            continue
        a, b = tok.encode(text), tok.encode(caption(other, ds.variant(i)))
        length = max(len(a), len(b))
        a, b = [a + [tok.eos_token_id] * (length - len(a)), b + [tok.eos_token_id] * (length - len(b))]
        read = lambda t: min(merged) if t in merged else t  # noqa: E731
        differ = sum(read(x) != read(y) for x, y in zip(a, b))
        out.append(np.sqrt(2 * differ / length))
    return float(np.mean(out))


def test_text_state_change_known_answers_and_a_word_the_encoder_cannot_see():
    from data.procedural import SHAPES
    from models.clip.tokenizer import CLIPTokenizer
    tok = CLIPTokenizer.from_folder(LOCAL_CLIPS["shapes"][1])
    kind_tokens = {t for w in SHAPES for t in tok.encode(w)[1:-1] + tok.encode(w + "s")[1:-1]}
    assert len(kind_tokens) == 2 * len(SHAPES)  # one token per kind word, singular and plural
    sees_all = t2i_shapes.text_state_change(_OneHotEncoder(len(tok.vocab), set()), tok, 24)
    kind_blind = t2i_shapes.text_state_change(_OneHotEncoder(len(tok.vocab), kind_tokens), tok, 24)
    assert set(sees_all) == {"colour", "kind", "count", "background"}
    for word in sees_all:
        assert sees_all[word]["relative_change"] == pytest.approx(_one_hot_change_by_hand(tok, word, set(), 24))
        assert kind_blind[word]["relative_change"] == pytest.approx(
            _one_hot_change_by_hand(tok, word, kind_tokens, 24))
    # Blind to kind words, the encoder still sees a kind change where it reorders or merges the groups
    # ("a red disc and a red square" -> "two red squares"), and nothing where the caption has one shape.
    assert kind_blind["kind"]["relative_change"] < 0.5 * sees_all["kind"]["relative_change"]
