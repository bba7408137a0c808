"""How much prompt content survives the VAE: attribute accuracy (metrics/attributes.py) of real test images and of
their reconstructions through a shipped AutoencoderKL folder, against the images' own captions.

    python -m benchmarks.t2i_vae_attributes        # writes benchmarks/results/t2i_vae_attributes.json

A latent text-to-image model can only draw what its VAE can decode, so the reconstructions' score is the
ceiling of a latent teacher's attribute accuracy with this VAE (the real images' is the reader's own ceiling).
Reconstructions decode the posterior mean and are quantised to uint8 levels, as saved samples are.
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
from data.rendered import rendered_split, to_minus_one_one
from metrics.attributes import attribute_accuracy, load_attribute_reader
from models.pipelines.component import load_component

REPO = Path(__file__).resolve().parents[1]


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    vae, net = load_component(args.vae), load_attribute_reader()
    images, attrs = rendered_split("test", args.images, cache_dir=args.cache)
    x = to_minus_one_one(images)
    with torch.no_grad():
        recon = torch.cat([vae(b).clamp(-1, 1) for b in x.split(128)])
    recon01 = torch.round((recon + 1) / 2 * 255) / 255
    result = {"command": "python -m benchmarks.t2i_vae_attributes " + shlex.join(args.argv), "vae": str(args.vae),
              "images": f"ProceduralShapes(split='test', seed=0)[0:{args.images}]",
              "real": attribute_accuracy(net, (x + 1) / 2, attrs),
              "reconstructed": attribute_accuracy(net, recon01, attrs),
              "wall_seconds": round(time.perf_counter() - start, 1), "machine": machine()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("real", "reconstructed")}, indent=2))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", default=str(REPO / "checkpoints" / "t2i_shapes" / "vae"), help="AutoencoderKL folder")
    p.add_argument("--images", type=int, default=1024, help="test-split images [1024]")
    p.add_argument("--cache", default=str(REPO / "runs" / "t2i_cache"), help="rendered-images cache folder")
    p.add_argument("--threads", type=int, default=1, help="[1]")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "t2i_vae_attributes.json"))
    a = p.parse_args(argv)
    a.argv = argv
    return a


if __name__ == "__main__":
    main(parse_args())
