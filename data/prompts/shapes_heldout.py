"""Write data/prompts/shapes_heldout.txt: the captions of held-out shapes images, one per line.

    python -m data.prompts.shapes_heldout                      # rewrites the shipped file (same bytes every time)
    python -m data.prompts.shapes_heldout --check              # exit 1 when the shipped file differs

Line i is the caption of image ``START + i`` of the shapes test split (data/procedural.py, seed 0), in that
image's own paraphrase (data/captions.py ``CaptionedShapes``: the variant drawn from the image's own random
stream, as the text-to-image trainers caption their training images). The text-to-image teacher, its CLIP and
its VAE train on the train split, whose random streams are disjoint from the test split's, so no image behind
these prompts was seen in training (a caption's wording can still coincide with a training caption's: the
grammar is small). Because the file holds the captions of test images [START, START + COUNT) in order,
evaluate.py's FD-shapes real side, test images [0, N), is exactly the set of images the prompts describe
when N = COUNT samples are drawn, one per prompt (metrics/t2i_shapes.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.captions import CaptionedShapes

FILE = Path(__file__).resolve().parent / "shapes_heldout.txt"
SPLIT, SEED, START, COUNT = "test", 0, 0, 128


def heldout_captions(count: int = COUNT, *, start: int = START, split: str = SPLIT, seed: int = SEED) -> list[str]:
    """The captions (own paraphrase) of images start..start+count-1 of the shapes ``split`` (``seed``)."""
    ds = CaptionedShapes(size=start + count, seed=seed, split=split)
    return [ds.caption_and_attributes(i)[0] for i in range(start, start + count)]


def text(count: int = COUNT) -> str:
    return "".join(c + "\n" for c in heldout_captions(count))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(FILE), help=f"file to write [{FILE.name} next to this script]")
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = p.parse_args(argv)
    want, out = text(), Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == want
        print(f"{out}: {'equals' if same else 'DIFFERS from'} the captions of {SPLIT} images "
              f"[{START}, {START + COUNT}) (seed {SEED})")
        return 0 if same else 1
    out.write_text(want, encoding="utf-8")
    print(f"wrote {out}: {COUNT} captions of {SPLIT} images [{START}, {START + COUNT}) (seed {SEED})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
