"""What each caption word reaches: CLIP-shapes word sensitivity and text-state change of tiny CLIPs, side by side.

    python -m benchmarks.t2i_text_words                       # the shipped CLIP against the hard-negative one
    python -m benchmarks.t2i_text_words --clips A B --count 512 --out runs/words.json

For each CLIPModel folder and each word of data/captions.py ``WORDS`` (colour, kind, count, background), on the
captions of shapes test images [0, --count) and the same captions with that word changed
(``word_changed``, the evaluation's fixed change):

  word sensitivity   the fraction of images whose own caption scores a higher CLIP cosine than the changed one
                     (0.5: the CLIP cannot see the word; metrics/t2i_shapes.py ``word_sensitivity``);
  text-state change  mean ||H - H'|| / ||H|| of the text tower's last hidden states over the caption's tokens
                     (``text_state_change``): what a U-Net conditioned on that tower, as SD-1 on CLIP's, can
                     read of the word. A word whose change barely moves H cannot be followed by any U-Net
                     trained on it, however long it trains.

Writes --out (.json and .md) with the command, wall time and machine.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from common.resumable import machine
from common.runs import write_text

REPO = Path(__file__).resolve().parents[1]
CLIPS = [REPO / "checkpoints" / "t2i_shapes" / "clip", REPO / "checkpoints" / "t2i_clip_negatives"]
TOKENIZER = REPO / "checkpoints" / "t2i_shapes" / "tokenizer"
OUT = REPO / "benchmarks" / "results" / "t2i_text_words.json"


def load(folder: Path):
    """The CLIPModel of ``folder``; a single tower or anything else is refused in one line."""
    from models.clip import CLIPModel
    from models.clip.load import load_clip
    if not (folder / "config.json").is_file():
        raise SystemExit(f"t2i_text_words: --clips {folder}: not a CLIPModel folder (no config.json)")
    clip = load_clip(folder).eval()
    if not isinstance(clip, CLIPModel):
        raise SystemExit(f"t2i_text_words: --clips {folder}: a {type(clip).__name__}, not a CLIPModel with both "
                         "towers (word sensitivity needs the image tower)")
    return clip


def measure(folder: Path, clip, count: int) -> dict:
    from metrics.t2i_shapes import word_checks
    from models.clip.tokenizer import CLIPTokenizer

    return {"clip": str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder),
            **word_checks(clip, CLIPTokenizer.from_folder(TOKENIZER), count)}


def table(rows: list[dict]) -> list[str]:
    words = list(rows[0]["word_sensitivity"])
    head = "| CLIP | " + " | ".join(f"{w}: sensitivity / state change" for w in words) + " |"
    lines = [head, "|---" * (len(words) + 1) + "|"]
    for r in rows:
        cells = [f"{r['word_sensitivity'][w]['own_higher']:.3f} / {r['text_state_change'][w]['relative_change']:.3f}"
                 for w in words]
        lines.append(f"| `{r['clip']}` | " + " | ".join(cells) + " |")
    return lines


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    folders = [Path(f).resolve() for f in args.clips]
    clips = [load(f) for f in folders]  # every folder is checked before any measurement
    start = time.perf_counter()
    rows = [measure(f, clip, args.count) for f, clip in zip(folders, clips)]
    command = "python -m benchmarks.t2i_text_words " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"command": command.strip(), "count": args.count, "rows": rows,
              "wall_seconds": round(time.perf_counter() - start, 1), "machine": machine()}
    out = Path(args.out)
    write_text(out, json.dumps(record, indent=2) + "\n")
    md = ["# What each caption word reaches in the tiny CLIPs", "",
          f"`{record['command']}`: captions of shapes test images [0, {args.count}) against the same caption with "
          "one word changed (data/captions.py `word_changed`). Sensitivity: the fraction where the own caption "
          "scores the higher CLIP cosine (0.5 = blind). State change: mean ||H - H'|| / ||H|| of the text "
          "tower's last hidden states over the caption's tokens, what a text-conditional U-Net reads "
          f"(metrics/t2i_shapes.py). {record['wall_seconds']} s.", "", *table(rows), ""]
    write_text(out.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", nargs="+", default=[str(c) for c in CLIPS], help="CLIPModel folders")
    p.add_argument("--count", type=int, default=512, help="test images [512]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.count < 2:
        p.error("--count must be >= 2")
    return a


if __name__ == "__main__":
    main(parse_args())
