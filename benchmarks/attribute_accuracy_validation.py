"""Validate attribute accuracy (metrics/attributes.py) as FD-shapes was validated: real images with their own
captions give the ceiling, mismatched captions the floor, and disturbances of the images lower it steadily.

    python -m benchmarks.attribute_accuracy_validation

On ``--images`` real test-split images (data/captions.py captions, canonical variant), with the attribute
reader checkpoints/shapes_net_t2i.pt, it scores:
- own captions: the ceiling a generator that follows its prompts perfectly reaches with this reader;
- the caption of the next image (every pair mismatched): the floor of unrelated prompts;
- one word changed in every caption: a shape colour (colours and pairs should drop, the rest stay), a shape
  kind, or a background colour name;
- the images disturbed (benchmarks/fd_shapes_validation.py's noise, blur and colour shift, quantised to uint8)
  at rising levels, each series checked for a monotone fall of "all".
Writes benchmarks/results/attribute_accuracy_validation.json and .md (command, wall time, machine).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.fd_shapes_validation import disturb
from common.resumable import machine
from data.captions import CaptionAttributes
from data.rendered import rendered_split, to_minus_one_one
from metrics.attributes import ATTRIBUTES, attribute_accuracy, load_attribute_reader

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = {
    "gaussian_noise_std": [0.0, 0.05, 0.1, 0.2, 0.4],
    "gaussian_blur_sigma_px": [0.0, 0.75, 1.5, 2.0, 3.0],
    "colour_shift_delta": [0.0, 0.1, 0.2, 0.3, 0.5],
}


def changed(ca: CaptionAttributes, what: str) -> CaptionAttributes:
    """``ca`` with one word changed: the first shape's colour or kind, or the first background name."""
    (kind, colour), rest = ca.shapes[0], ca.shapes[1:]
    if what == "colour":
        return CaptionAttributes(shapes=tuple(sorted(((kind, (colour + 1) % 8),) + rest)), background=ca.background)
    if what == "kind":
        return CaptionAttributes(shapes=tuple(sorted((((kind + 1) % 4, colour),) + rest)), background=ca.background)
    first = (ca.background[0] + 1) % 7
    background = (first,) + ca.background[1:]
    return CaptionAttributes(shapes=ca.shapes, background=background[:1] if len(set(background)) == 1 else background)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    net = load_attribute_reader(args.checkpoint)
    images, attrs = rendered_split("test", args.images, start=args.start, cache_dir=args.cache)
    x01 = (to_minus_one_one(images) + 1) / 2
    rows = {"own captions (ceiling)": attribute_accuracy(net, x01, attrs),
            "captions of other images (floor)": attribute_accuracy(net, x01, attrs[1:] + attrs[:1])}
    for what in ("colour", "kind", "background"):
        rows[f"one {what} word changed"] = attribute_accuracy(net, x01, [changed(a, what) for a in attrs])
    disturbances = {}
    for kind, levels in LEVELS.items():
        series = [{"level": lv, **attribute_accuracy(net, disturb(x01, kind, lv, seed=0), attrs)} for lv in levels]
        alls = [r["all"] for r in series]
        disturbances[kind] = {"rows": series, "all_monotone": all(a >= b for a, b in zip(alls, alls[1:]))}
    result = {"command": "python -m benchmarks.attribute_accuracy_validation " + shlex.join(args.argv),
              "reader": str(args.checkpoint or "checkpoints/shapes_net_t2i.pt"), "reader_sha256": net.weights_sha256,
              "images": f"ProceduralShapes(split='test', seed=0)[{args.start}:{args.start + args.images}]",
              "rows": rows, "disturbances": disturbances, "wall_seconds": round(time.perf_counter() - start, 1),
              "machine": machine()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    head = "| " + " | ".join(ATTRIBUTES) + " |"
    lines = ["# Attribute accuracy validation\n",
             f"`{r['command']}` ({r['wall_seconds']:.0f} s wall; load average {r['machine']['load_average_1m']}; "
             f"torch {r['machine']['torch']}). Reader {r['reader']} (sha256 `{r['reader_sha256'][:16]}...`); "
             f"images {r['images']}. Fractions of images whose read attribute equals the caption's; `all` = count, "
             "kinds and colours together (background and pairs, the colour-kind binding, reported apart).\n",
             "| captions " + head, "|---" * (len(ATTRIBUTES) + 1) + "|"]
    cells = lambda row: " | ".join(f"{row[k]:.3f}" for k in ATTRIBUTES)  # noqa: E731
    lines += [f"| {name} | {cells(row)} |" for name, row in r["rows"].items()]
    for kind, d in r["disturbances"].items():
        lines += ["", f"**{kind}** (all monotone: {d['all_monotone']})\n", "| level " + head,
                  "|---" * (len(ATTRIBUTES) + 1) + "|"]
        lines += [f"| {row['level']:g} | {cells(row)} |" for row in d["rows"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="attribute reader [checkpoints/shapes_net_t2i.pt]")
    p.add_argument("--images", type=int, default=1024, help="real test-split images [1024]")
    p.add_argument("--start", type=int, default=0, help="first test index [0]")
    p.add_argument("--cache", default=str(Path(__file__).resolve().parents[1] / "runs" / "t2i_cache"),
                   help="rendered-images cache folder")
    p.add_argument("--threads", type=int, default=1, help="[1]")
    p.add_argument("--out", default=str(RESULTS / "attribute_accuracy_validation.json"), help="result .json (and .md)")
    a = p.parse_args(argv)
    if a.images < 2:
        p.error("--images must be >= 2")
    a.argv = argv
    return a


if __name__ == "__main__":
    main(parse_args())
