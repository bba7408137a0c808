"""A sample grid per prompt of a text-to-image pipeline: one row per held-out prompt, the prompt beside it.

    python -m benchmarks.t2i_samples                                  # the shipped pipeline -> docs/t2i_teacher_samples.png
    python -m benchmarks.t2i_samples --model runs/prune/00001-t2i_shapes-layer/pipeline --out docs/t2i_pruned_samples.png

Rows are the first ``--prompts`` captions of data/prompts/shapes_heldout.txt (test images never trained on), columns
``--images`` samples of each (sample i of prompt j has the initial noise of index j * images + i of ``--seed``, as
evaluate.py draws them), at guidance ``--guidance`` with 25 DPM-Solver++(2M) steps. Two pipelines run with the same
flags draw from the same noise, so their grids compare image for image.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch

from common import cli

REPO = Path(__file__).resolve().parents[1]


def sample_grid(model: str, *, prompts: int, images: int, guidance: float, seed: int) -> tuple[torch.Tensor, list[str]]:
    from metrics.t2i_evaluation import read_prompts
    from models import load
    from models.pipelines.text_to_image import Request, generate

    texts = read_prompts(str(REPO / "data" / "prompts" / "shapes_heldout.txt"))[:prompts]
    pipe = load(model)
    request = Request(guidance_scale=guidance, steps=25, scheduler="dpmpp_2m", seed=seed, batch_size=16)
    every = [t for t in texts for _ in range(images)]
    with torch.no_grad():
        out = generate(pipe, request, indices=range(len(every)), prompts=every)
    return out.reshape(prompts, images, *out.shape[1:]), texts


def draw(grid: torch.Tensor, texts: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols + 1, figsize=(1.1 * cols + 3.2, 1.1 * rows + 0.4),
                             gridspec_kw={"width_ratios": [3.2] + [1.0] * cols})
    for r in range(rows):
        axes[r, 0].text(0, 0.5, "\n".join(textwrap.wrap(texts[r], 34)), fontsize=7, va="center")
        axes[r, 0].axis("off")
        for c in range(cols):
            axes[r, c + 1].imshow(grid[r, c].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r, c + 1].axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(REPO / "checkpoints" / "t2i_shapes"), help="pipeline folder")
    p.add_argument("--prompts", type=cli.positive_int, default=6, help="[6]")
    p.add_argument("--images", type=cli.positive_int, default=6, help="[6]")
    p.add_argument("--guidance", type=cli.finite_float, default=5.0, help="[5]")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="[0]")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "t2i_teacher_samples.png")
    args = p.parse_args(argv)
    grid, texts = sample_grid(args.model, prompts=args.prompts, images=args.images, guidance=args.guidance,
                              seed=args.seed)
    draw(grid, texts, args.out, f"{Path(args.model).name}: guidance {args.guidance:g}, DPM-Solver++(2M) 25 steps, "
                                f"seed {args.seed}")
    print(f"[t2i_samples] wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
