"""Train the tiny CLIP of the embedded text-to-image world on captioned shapes; resumable; ships a CLIPModel folder.

    OMP_NUM_THREADS=1 nohup python -m benchmarks.train_t2i_clip --run runs/t2i_clip \\
        --ship checkpoints/t2i_shapes/clip > runs/t2i_clip.log 2>&1 &       # the shipped model's command

Both towers are models/clip's (transformers' CLIPModel semantics): a causal text transformer pooled at the
EOS token and a ViT on 4x4 patches of the 32x32 image, each with a linear projection to a shared space, and the
learned temperature. The loss is CLIP's (Radford et al. 2021, Fig. 3): logits_ij = exp(t) cos(T_i, I_j) over
a batch of N pairs, cross-entropy over rows and over columns with label i for row i, averaged; exp(t) is
clipped at 100 as in Sec. 2.5. Each step draws N train images (data/rendered.py) and gives each a random
paraphrase of its caption (data/captions.py), so the text tower sees every template. Images are normalised as
metrics/clip_score.py's ``preprocess`` does for 32 px input (CLIP's mean and std), with no flips: a flip
would swap the ends of the background the caption names in order.

``--hard-negatives`` adds, for each image, its caption with one colour, kind, count or background word changed
(data/captions.py ``hard_negatives``) to the texts its row of the image -> text cross-entropy competes with
(NegCLIP, Yuksekgonul et al. 2023, Sec. 4). Without them the shipped model's text tower learnt to ignore the
kind and count words, which its image tower could not yet see (nothing in a batch of random captions asked it
to): the hidden states a U-Net reads then barely change between "a red disc" and "a red square".

    OMP_NUM_THREADS=1 nohup python -m benchmarks.train_t2i_clip --run runs/t2i_clip_neg --batch-size 64 \
        --steps 2400 --hard-negatives --ship checkpoints/t2i_clip_negatives \
        --results benchmarks/results/t2i_clip_negatives.json > runs/logs/t2i_clip_neg.log 2>&1 &

Held-out retrieval (test split, its own captions, ``--eval-pairs`` pairs): top-1 / top-5 accuracy of
image -> text and text -> image in the full pair matrix, and "same attributes" top-1 (the retrieved caption
states the same attributes; many held-out captions coincide in content); per word, CLIP-shapes word
sensitivity (own caption scored above the one-word-changed caption; 0.5 = blind) and the text tower's
hidden-state change for that word (metrics/t2i_shapes.py ``text_state_change``). The text tower of this model
is the teacher's frozen text encoder, as CLIP's is for SD. Re-running the command resumes ``--run``; when the run is
complete, ``--ship`` writes the folder (never over an existing one) and benchmarks/results/t2i_clip.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.resumable import add_run_args, may_ship, open_run, parse_run_args, resume, run_settings, train, write_record
from data.captions import NUM_VARIANTS, caption, hard_negatives
from data.rendered import rendered_split
from metrics.clip_score import CLIP_MEAN, CLIP_STD
from models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from models.clip.tokenizer import CLIPTokenizer

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "checkpoints" / "t2i_shapes" / "tokenizer"
MAX_LOGIT_SCALE = float(np.log(100.0))


def clip_config(tok: CLIPTokenizer, *, width: int, layers: int, heads: int) -> CLIPConfig:
    """The tiny CLIP: both towers ``layers`` deep and ``width`` wide, 4x4 patches, context = the tokenizer's."""
    text = CLIPTextConfig(vocab_size=len(tok.vocab), hidden_size=width, intermediate_size=4 * width,
                          projection_dim=width, num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=tok.model_max_length, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, projection_dim=width,
                              num_hidden_layers=layers, num_attention_heads=heads, image_size=32, patch_size=4)
    return CLIPConfig(text=text, vision=vision, projection_dim=width)


def init_weights(model: CLIPModel) -> None:
    """Small normal initialisation (std 0.02 for weights and embeddings, as CLIP's reference code starts
    its towers; zero biases): PyTorch's default Embedding N(0, 1) would swamp the positions."""
    for name, p in model.named_parameters():
        if name == "logit_scale":
            continue
        if p.dim() >= 2 or "embedding" in name:
            torch.nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)


def pixels(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> CLIP-normalised (N, 3, 32, 32) (metrics/clip_score.py preprocess at 32 px)."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def contrastive_loss(model: CLIPModel, ids: torch.Tensor, pix: torch.Tensor,
                     negative_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy over the (N, N) text-image logits (Radford et al. 2021, Fig. 3). With
    ``negative_ids`` (M, L) hard-negative captions, each image's row of the image -> text cross-entropy runs
    over the N true captions and the M negatives (NegCLIP, Yuksekgonul et al. 2023, Sec. 4); the text -> image
    side keeps the N true captions, as a negative caption has no image of its own."""
    texts = ids if negative_ids is None else torch.cat([ids, negative_ids])
    logits = model.logits_per_text(texts, pix)  # (N_text [+ M], N_image)
    labels = torch.arange(len(ids))
    return 0.5 * (F.cross_entropy(logits[:len(ids)], labels) + F.cross_entropy(logits.T, labels))


@torch.no_grad()
def retrieval(model: CLIPModel, tok: CLIPTokenizer, images: np.ndarray, attrs: list) -> dict:
    """Held-out retrieval accuracies over all pairs (canonical captions, variant 0)."""
    model.eval()
    texts = [caption(a, 0) for a in attrs]
    t = torch.cat([F.normalize(model.text_embeds(tok(texts[i:i + 256])), dim=-1) for i in range(0, len(texts), 256)])
    im = torch.cat([F.normalize(model.image_embeds(pixels(images[i:i + 256])), dim=-1)
                    for i in range(0, len(images), 256)])
    sim = im @ t.T  # (N_image, N_text)
    n = len(attrs)
    truth = torch.arange(n)
    top5_i2t, top5_t2i = sim.topk(5, dim=1).indices, sim.T.topk(5, dim=1).indices
    i2t, t2i = sim.argmax(1), sim.argmax(0)
    same = lambda pred: float(np.mean([attrs[int(p)] == attrs[k] for k, p in enumerate(pred)]))  # noqa: E731
    model.train()
    return {"pairs": n, "image_to_text_top1": (i2t == truth).float().mean().item(),
            "image_to_text_top5": (top5_i2t == truth[:, None]).any(1).float().mean().item(),
            "text_to_image_top1": (t2i == truth).float().mean().item(),
            "text_to_image_top5": (top5_t2i == truth[:, None]).any(1).float().mean().item(),
            "image_to_text_same_attributes_top1": same(i2t), "text_to_image_same_attributes_top1": same(t2i),
            "chance_top1": 1.0 / n}


def word_checks(model: CLIPModel, tok: CLIPTokenizer, count: int) -> dict:
    """metrics/t2i_shapes.py ``word_checks`` in eval mode: what each caption word reaches, in the CLIP-shapes
    score (0.5 = blind) and in the text states a U-Net conditioned on this tower would read."""
    from metrics.t2i_shapes import word_checks as measure
    model.eval()
    out = measure(model, tok, count)
    model.train()
    return out


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    folder, state = open_run(args.run, run_settings(args))
    tok = CLIPTokenizer.from_folder(TOKENIZER)
    torch.manual_seed(args.seed)
    model = CLIPModel(clip_config(tok, width=args.width, layers=args.layers, heads=args.heads))
    init_weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    s = resume(folder, state, tag="clip", model=model, optimizer=opt, generator=gen)
    cache = Path(args.cache)
    train_images, train_attrs = rendered_split("train", args.train_images, cache_dir=cache)
    val_images, val_attrs = rendered_split("test", args.eval_pairs, cache_dir=cache)
    print(f"[clip] data ready ({s.seconds():.0f} s); {sum(p.numel() for p in model.parameters())} "
          f"parameters", flush=True)

    def step() -> dict:
        idx = torch.randint(len(train_attrs), (args.batch_size,), generator=gen)
        variants = torch.randint(NUM_VARIANTS, (args.batch_size,), generator=gen)
        ids = tok([caption(train_attrs[i], int(v)) for i, v in zip(idx.tolist(), variants)])
        negatives = None
        if args.hard_negatives:  # drawn from ``gen`` through one seed, so a resumed run draws the same ones
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
            negatives = tok([caption(c, int(v)) for i, v in zip(idx.tolist(), variants)
                             for c in hard_negatives(train_attrs[i], rng)])
        loss = contrastive_loss(model, ids, pixels(train_images[idx.numpy()]), negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)  # exp(t) <= 100 (Radford et al. 2021, Sec. 2.5)
        return {"loss": round(loss.item(), 4), "temperature": round(model.logit_scale.exp().item(), 2)}

    model.train()
    def evaluate() -> dict:
        return {**retrieval(model, tok, val_images, val_attrs), **word_checks(model, tok, args.eval_pairs)}

    if not train(s, args, step, evaluate, evaluate_last=True):
        return
    wall = s.seconds()
    final = evaluate()
    print("[clip] held-out retrieval: " + json.dumps(final), flush=True)
    if args.ship and may_ship(Path(args.ship), "clip"):
        from models.clip.load import save_clip

        save_clip(model.eval(), Path(args.ship))
        write_record(s, args, script="train_t2i_clip", out=Path(args.ship), wall=wall,
                     results={"heldout_retrieval": final})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(p, repo=REPO, name="t2i_clip", ship_help="CLIPModel folder to write when done (never overwritten)")
    p.add_argument("--batch-size", type=int, default=128, help="pairs per contrastive batch [128]")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate [1e-3]")
    p.add_argument("--weight-decay", type=float, default=0.05, help="[0.05]")
    p.add_argument("--width", type=int, default=64, help="both towers' width and the projection dim [64]")
    p.add_argument("--layers", type=int, default=3, help="[3]")
    p.add_argument("--heads", type=int, default=4, help="[4]")
    p.add_argument("--eval-pairs", type=int, default=512, help="held-out test-split pairs [512]")
    p.add_argument("--hard-negatives", action="store_true",
                   help="add, per image, its caption with one colour / kind / count / background word changed as "
                        "negatives (NegCLIP); without them the text tower may learn to ignore a word")
    a = parse_run_args(p, argv, positive=("batch_size", "width", "layers", "heads"))
    if a.eval_pairs < 5:
        p.error("--eval-pairs must be >= 5 (top-5 retrieval)")
    return a


if __name__ == "__main__":
    main(parse_args())
