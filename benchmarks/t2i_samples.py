"""A sample grid per prompt of a text-to-image pipeline: one row per held-out prompt, the prompt beside it.

    python -m benchmarks.t2i_samples                                  # the shipped pipeline -> docs/t2i_teacher_samples.png
    python -m benchmarks.t2i_samples --model runs/prune/00001-t2i_shapes-layer/pipeline --out docs/t2i_pruned_samples.png
    python -m benchmarks.t2i_samples --compare runs/train/00002-pipeline-shapes/pipeline --out docs/t2i_pruned_vs_teacher.png

Rows are the first ``--prompts`` captions of data/prompts/shapes_heldout.txt (test images never trained on), columns
``--images`` samples of each (sample i of prompt j has the initial noise of index j * images + i of ``--seed``, as
evaluate.py draws them), at guidance ``--guidance`` with 25 DPM-Solver++(2M) steps. Two pipelines run with the same
flags draw from the same noise, so their grids compare image for image. ``--compare`` draws a second pipeline's
grid (a pruned teacher, say) beside the first's in one figure: same prompts, same noise, image for image.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch

from common import cli

REPO = Path(__file__).resolve().parents[1]


def sample_grid(model: str, *, prompts: int, images: int, guidance: float, seed: int
                ) -> tuple[torch.Tensor, list[str], int]:
    """(prompts, images, 3, H, W) samples in [0, 1], the prompts, and the U-Net's parameter count."""
    from metrics.t2i_evaluation import read_prompts
    from models import load
    from models.pipelines.text_to_image import Request, generate

    texts = read_prompts(str(REPO / "data" / "prompts" / "shapes_heldout.txt"))[:prompts]
    pipe = load(model)
    request = Request(guidance_scale=guidance, steps=25, scheduler="dpmpp_2m", seed=seed, batch_size=16)
    every = [t for t in texts for _ in range(images)]
    with torch.no_grad():
        out = generate(pipe, request, indices=range(len(every)), prompts=every)
    return out.reshape(prompts, images, *out.shape[1:]), texts, sum(p.numel() for p in pipe.unet.parameters())


def draw(grid: torch.Tensor, texts: list[str], path: Path, title: str, *,
         panels: tuple[tuple[str, torch.Tensor], ...] = ()) -> None:
    """One row per prompt: its text, then ``grid``'s images, then each further (heading, grid) panel's, a blank
    column between panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = grid.shape[:2]
    grids = [grid] + [g for _, g in panels]
    ratios = [3.2] + [r for i, _ in enumerate(grids) for r in ([0.25] if i else []) + [1.0] * cols]
    height = 1.5 if panels else 1.1  # inches per row: wide figures leave images less height after tight_layout
    fig, axes = plt.subplots(rows, len(ratios), figsize=(sum(ratios) * 1.1, height * rows + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    for r in range(rows):
        axes[r, 0].text(0, 0.5, "\n".join(textwrap.wrap(texts[r], 34)), fontsize=7, va="center")
        for ax in axes[r]:
            ax.axis("off")
        col = 1
        for i, g in enumerate(grids):
            col += 1 if i else 0  # the spacer column
            for c in range(cols):
                axes[r, col + c].imshow(g[r, c].permute(1, 2, 0).numpy(), interpolation="nearest")
            if r == 0 and panels:
                axes[0, col].set_title("original" if i == 0 else panels[i - 1][0], fontsize=7, loc="left")
            col += cols
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
    p.add_argument("--compare", default=None, help="a second pipeline folder drawn beside --model's grid, from "
                   "the same prompts and noise (a pruned teacher beside its original)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "t2i_teacher_samples.png")
    args = p.parse_args(argv)
    for folder in (args.model, args.compare):
        if folder is not None and not Path(folder).is_dir():
            raise SystemExit(f"t2i_samples: {folder}: no such pipeline folder")
    kw = dict(prompts=args.prompts, images=args.images, guidance=args.guidance, seed=args.seed)
    grid, texts, params = sample_grid(args.model, **kw)
    names, panels = _label(args.model, params), ()
    if args.compare is not None:
        other, _, other_params = sample_grid(args.compare, **kw)
        panels = ((_label(args.compare, other_params), other),)
        names += f" | {panels[0][0]}"
    draw(grid, texts, args.out, f"{names}: guidance {args.guidance:g}, DPM-Solver++(2M) 25 steps, seed {args.seed}",
         panels=panels)
    print(f"[t2i_samples] wrote {args.out}")
    return args.out


def _label(folder: str, params: int) -> str:
    """A pipeline's heading: the run folder's name for a run's pipeline/, and its U-Net's parameter count."""
    path = Path(folder)
    return f"{path.parent.name if path.name == 'pipeline' else path.name} ({params / 1e6:.2f}M U-Net params)"


if __name__ == "__main__":
    main()
