"""Prune a pre-trained DDPM U-Net: Diff-Pruning (Fang, Ma & Wang 2023) and the baselines.

    python prune.py                                   # the embedded default: the shipped tiny teacher, shapes data
    python prune.py --model ddim_cifar10.ckpt --data cifar10 --data-root data/ --thr 0.05
    python prune.py --method magnitude --ratio 0.5
    python prune.py --method layer --criterion output-loss --target-params 0.3     # LAPTOP-Diff layer pruning
    python prune.py --replay runs/prune/00003-tiny-diff-pruning     # the same pruned weights, in a new folder

The options of the method form ONE frozen spec (``pruning.spec.ChannelPruning``, or for ``--method layer``
``pruning.layers.spec.LayerPruning``): one default each, checked before anything is loaded; an option the
method does not read is an error. Writes a new numbered folder under runs/prune/ with the pruned checkpoint
(config + per-layer widths + plain state dict; its meta holds the spec and what it came to), spec.json (the
spec and the run's settings: what ``--replay`` reads), report.json, the coupling groups (groups.txt), sample
grids of the model before and after pruning (deterministic DDIM from the same fixed noise) and, for the
gradient methods, the plot of L_t against t with the threshold marked. ``--method layer`` (LAPTOP-Diff, arXiv
2404.11098) removes whole residual branches instead (pruning/layers/): the folder then holds units.txt and
the additivity report (additivity.json, additivity.png) in place of groups.txt and the L_t plot.

A latent text-to-image pipeline (``--model`` a pipeline folder or hub name: SD-1/2, SDXL, BK-SDM) has its U-Net
pruned by the same specs, calibrated on (VAE latents, caption embeddings) of captioned images, and the run folder
holds the pruned PIPELINE folder (pipeline/) that generate.py, evaluate.py and train.py read
(reports/pipeline_prune.py, pruning/pipelines.py):

    python prune.py --model checkpoints/t2i_shapes --method diff-pruning --ratio 0.3 --batch-size 32
    python prune.py --model checkpoints/t2i_shapes --method layer --target-params 0.3

A bare diffusers U-Net folder (UNet2DConditionModel, no model_index.json) takes the data-free methods only and
gives RUN/unet/ instead of pipeline/; a gradient method that cannot fit the device's total memory is refused
before any weight is read (pruning/memory.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common import cli
from common.allocator import retain_freed_memory
from common.defaults import RUNS_DIR, TEACHER_CHECKPOINT
from common.resources import check_fits
from common.runs import RunLock, clean_interrupted_runs, new_run_dir, seed_everything, write_json, write_text
from diffusion.samplers import sample
from models.lineage import root_teacher
from pruning.layers.spec import LayerPruning
from pruning.spec import DEFAULTS, METHODS, RECIPES, ChannelPruning

SPEC_FILE = "spec.json"
GRID_BATCH = 64  # samples per forward of the sample grids (any --num-samples fits in memory; same images)
PIPELINES = {"channel": ChannelPruning, "layer": LayerPruning}
# The flags that fill a spec (the rest configure the run): their names are the specs' field names.
SPEC_FIELDS = {f.name for cls in PIPELINES.values() for f in dataclasses.fields(cls)} - {"method"}


@dataclass(frozen=True)
class PruneConfig:
    """A prune.py run: the spec (what to prune and how) and what the run needs around it."""

    spec: ChannelPruning | LayerPruning = field(default_factory=ChannelPruning)
    model: str = str(TEACHER_CHECKPOINT)  # preset, diffprune / DDIM-codebase checkpoint, diffusers folder, hub name
    preset: str | None = None             # DDIM-codebase state dicts: the preset they are read against
    norm_groups: int | None = None        # DDIM-codebase state dicts: GroupNorm groups (not in the weights)
    data: str = "shapes"                  # the gradient batch's / calibration set's images
    prompts: str | None = None            # text-to-image pipelines: the captions of --data folder's images
    data_root: str | None = None
    num_samples: int = 16                 # before/after sample grids; 0 skips them
    sample_steps: int = 50
    clip_x0: bool = True                  # sample grids: clamp x0 predictions to [-1, 1] (Ho et al.)
    out: str = str(RUNS_DIR / "prune")
    device: str = "cpu"
    additivity_subsets: int = 20          # --method layer: random unit subsets per size; 0 skips the report

    @property
    def pipeline(self) -> str:
        return "layer" if isinstance(self.spec, LayerPruning) else "channel"

    def settings(self) -> dict[str, Any]:
        """Everything but the spec and the output folder: what a replay needs to redo the run."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("spec", "out")}


def gradient_batch(cfg: PruneConfig, count: int, image_size: int) -> torch.Tensor:
    """``count`` shuffled, randomly flipped training images in [-1, 1] (the paper's x0), drawn from the spec's seed."""
    from data import build_dataset

    dataset = build_dataset(cfg.data, root=cfg.data_root, image_size=image_size, split="train")
    if len(dataset) < count:
        spec = cfg.spec
        flag = ("--calib-size", spec.calib_size) if getattr(spec, "calib_size", 0) == count else ("--batch-size", count)
        raise ValueError(f"{flag[0]} {flag[1]}: the run needs {count} images but dataset {cfg.data!r} has "
                         f"{len(dataset)}")
    g = torch.Generator().manual_seed(cfg.spec.seed)
    idx = torch.randperm(len(dataset), generator=g)[:count].tolist()
    x0 = torch.stack([dataset[i] for i in idx])
    flip = torch.rand(len(idx), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x0.flip(-1), x0)


def main(cfg: PruneConfig) -> Path:
    """Prune ``cfg.model`` as ``cfg.spec`` says; returns the new run folder."""
    from diffusion.schedule import DiffusionConfig, Schedule
    from metrics.macs import count_macs
    from models.loading import load_with_info
    from models.integrity import check_weights
    from models.pipelines import is_latent_source
    from pruning.api import check_prune, prune
    from pruning.inputs import check_layer_inputs
    from pruning.layers import check_target, prune_layers
    from pruning.layers.additivity import additivity_for_run

    cli.check_writable_dir(cfg.out, "--out")
    for stale in clean_interrupted_runs(cfg.out):  # what a killed prune.py left: never a half-written output
        print(f"[prune] removed {stale}, left by an interrupted run")
    if is_latent_source(cfg.model):  # an SD-family pipeline: its U-Net pruned, a pipeline folder written
        from reports.pipeline_prune import prune_pipeline

        return prune_pipeline(cfg)
    if cfg.prompts is not None:
        raise cli.UserError(f"--prompts {cfg.prompts}: captions apply to text-to-image pipelines, not {cfg.model}")
    spec, layer = cfg.spec, cfg.pipeline == "layer"
    seed_everything(spec.seed)
    start = time.perf_counter()
    model, info = load_with_info(cfg.model, ema=True, device=cfg.device, preset=cfg.preset, norm_groups=cfg.norm_groups)
    cli.print_load_notes(cfg.model, info, "prune")
    check_weights(model, f"--model {cfg.model}")  # a nan/inf weight or a meta model: before any other work
    if layer:  # an unreachable target fails before any sampling or scoring
        check_target(model, spec)
    example = model.example_inputs()
    macs_before = count_macs(model, example)
    schedule = Schedule(DiffusionConfig(loss_reduction="sum"))  # the paper's L_t sums over pixels
    c = model.config
    raw, png = (cfg.num_samples * c.in_channels * side ** 2 * 4 for side in (c.image_size, c.image_size + 2))
    check_fits(f"--num-samples {cfg.num_samples}", memory=2 * raw + 2 * png, disk=2 * png, folder=cfg.out,
               prefix="[prune] ")  # the grids: two float32 sample sets held, two PNGs of <= (H+2)^2 * 4 B per image
    grids = dict(indices=list(range(cfg.num_samples)), seed=spec.seed, image_shape=(c.in_channels, c.image_size, c.image_size),
                 steps=cfg.sample_steps, batch_size=min(cfg.num_samples, GRID_BATCH), device=cfg.device,
                 clip_x0=cfg.clip_x0, progress=True)
    # The data is read before any sampling: a bad --data / --data-root fails before minutes of work.
    count = spec.needs_images if layer else (spec.batch_size if spec.gradient else 0)
    images = gradient_batch(cfg, count, c.image_size).to(cfg.device) if count else None
    # Everything prune / prune_layers check before their long work, before the grid's (pruning/inputs.py).
    check_layer_inputs(model, images) if layer else check_prune(model, example, spec, images)
    t_grids = time.perf_counter()  # the grids' sampling is listed in the time breakdown
    samples_before = sample(model.eval(), schedule, **grids) if cfg.num_samples else None
    t_grids = time.perf_counter() - t_grids
    additivity = None
    if layer:
        small, report = prune_layers(model, spec, images, schedule=schedule)
        if cfg.additivity_subsets:
            additivity = additivity_for_run(model, report, spec, images, schedule=schedule,
                                            per_size=cfg.additivity_subsets)
    else:
        small, report = prune(model, example, spec, images, schedule=schedule)
    t_after = time.perf_counter()
    samples_after = sample(small.eval(), schedule, **grids) if cfg.num_samples else None
    report.seconds["sample_grids"] = t_grids + time.perf_counter() - t_after
    macs_after = count_macs(small, small.example_inputs())
    macs = {"macs_paper_before": macs_before.macs_paper, "macs_paper_after": macs_after.macs_paper,
            "macs_full_before": macs_before.macs_full, "macs_full_after": macs_after.macs_full}
    seconds = time.perf_counter() - start
    run = write_run(cfg, small, report, info=info, macs=macs, seconds=seconds, additivity=additivity,
                    samples=(samples_before, samples_after))
    from reports.prune_summary import print_summary

    print_summary(cfg, report, macs, seconds, additivity, run)
    return run


def write_run(cfg: PruneConfig, model, report, *, info: dict, macs: dict, seconds: float, additivity: dict | None,
              samples: tuple) -> Path:
    """A new numbered run folder with everything the module docstring lists; nothing existing is overwritten.
    A kill leaves whole files only, and the temporaries a later prune.py removes (``clean_interrupted_runs``)."""
    label = f"layer-{cfg.spec.criterion}" if cfg.pipeline == "layer" else cfg.spec.method
    run = new_run_dir(cfg.out, f"{Path(root_teacher(cfg.model) or cfg.model).stem}-{label}")  # named by the root
    with RunLock(run, "writing this prune run") as lock:  # a later prune.py cleans only folders no one holds
        _write_files(cfg, run, model, report, info=info, macs=macs, seconds=seconds, additivity=additivity,
                     samples=samples)
        lock.path.unlink()  # the finished folder holds the outputs only
    return run


def _write_files(cfg: PruneConfig, run: Path, model, report, *, info: dict, macs: dict, seconds: float,
                 additivity: dict | None, samples: tuple) -> None:
    """Every file of the run folder, each written atomically (common/runs.py atomic_path)."""
    from common.images import save_grid
    from models.checkpoint import environment, save_checkpoint
    from reports.widths import width_table
    from reports.plots import plot_additivity, plot_timestep_losses

    layer = cfg.pipeline == "layer"
    summary = report.summary()
    spec = {"pipeline": cfg.pipeline, "spec": cfg.spec.to_dict()}
    applied = ({"removed": report.removed, "params_after": report.params_after, "macs_paper_after": report.macs_after}
               if layer else report.applied())
    save_checkpoint(run / "pruned.pt", config=model.config, state_dict=model.state_dict(),
                    meta={**spec, "applied": applied, "settings": cfg.settings(), "source_model": cfg.model,
                          "root_teacher": root_teacher(cfg.model) or cfg.model,  # models/lineage.py
                          "method": "layer" if layer else cfg.spec.method,
                          **({"criterion": cfg.spec.criterion} if layer else {"ratio": report.ratio})})
    write_json(run / SPEC_FILE, {**spec, "settings": cfg.settings(), "applied": applied})
    write_json(run / "report.json", {**summary, **macs, "settings": cfg.settings(), "environment": environment(),
                                     "source": {k: str(v) for k, v in info.items()}, "seconds_total": seconds})
    write_text(run / ("units.txt" if layer else "groups.txt"), (report.table() if layer else report.groups_text) + "\n")
    if not layer:  # the full per-layer table goes to a file; the screen gets a per-stage summary
        write_text(run / "widths.txt", width_table(report.widths_before, report.widths_after))
    if samples[0] is not None:
        save_grid(samples[0], run / "samples_before.png", nrow=8, scale=2)
        save_grid(samples[1], run / "samples_after.png", nrow=8, scale=2)
    if not layer and report.timesteps is not None:
        plot_timestep_losses(report.timesteps, run / "timestep_losses.png")
    if additivity is not None:
        write_json(run / "additivity.json", additivity)
        plot_additivity(additivity, run / "additivity.png")


def build_parser() -> argparse.ArgumentParser:
    from data import DATASETS
    from diffusion.schedule import DiffusionConfig
    from models.ddpm.config import PRESETS
    from pruning.layers.criteria import DEFAULT_CALIB_SIZE, LAYER_CRITERIA
    from pruning.layers.bksdm import ARCHITECTURES
    from pruning.layers.knapsack import SOLVERS
    from pruning.layers.sd import GRANULARITIES

    d = PruneConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_model_flags(p, PRESETS, default=d.model, help="model to prune: a preset, a diffprune / DDIM-codebase "
                        "checkpoint, a diffusers folder or a hub name such as google/ddpm-cifar10-32 (default: the "
                        "shipped tiny teacher)")
    p.add_argument("--replay", metavar="RUN_FOLDER", default=None,
                   help="redo the run of a prune.py run folder from its spec.json (same spec, model, data and seed: "
                        "the same pruned weights on the same machine) into a NEW folder; only --out, --device and "
                        "--debug may be given with it [default: the run folder's parent for --out]")
    p.add_argument("--method", choices=METHODS + ("layer",), default="diff-pruning",
                   help="channel importance criterion: random, magnitude, taylor (the paper's Taylor row: the "
                        "Diff-Pruning score over ALL timesteps), taylor-first-order (|sum w G| per channel slice), "
                        "diff-pruning, scratch; or 'layer': remove whole residual branches (LAPTOP-Diff) chosen by "
                        "--criterion [default: diff-pruning]")
    p.add_argument("--ratio", type=float, default=None,
                   help=f"channel sparsity per group, in [0, 1) (the paper's ch_sparsity); not with a target "
                        f"[default: {DEFAULTS['ratio']}]")
    p.add_argument("--thr", type=float, default=None,
                   help=f"Diff-Pruning's timestep threshold in [0, 1]: gradients over t up to the first "
                        f"L_t < thr * L_max (--method diff-pruning, or layer with --criterion taylor) "
                        f"[default: {DEFAULTS['thr']}]")
    p.add_argument("--scope", choices=("local", "global"), default=None,
                   help="remove the ratio from every group (local, the paper) or rank all channels together "
                        "[default: local]")
    p.add_argument("--scoring", choices=("sequential", "dense"), default=None,
                   help="score each group on the network the groups before it pruned, in the paper pruner's order "
                        "(sequential, the paper's code), or every group on the dense network (order-free) "
                        "[default: sequential]")
    p.add_argument("--attn-grouping", choices=("joint", "split"), default=None,
                   help="attention: q, k, v and proj_out's input as one group (joint, the paper's code) or q/k "
                        "apart from v (split) [default: joint]")
    p.add_argument("--head-mode", choices=("channels", "heads"), default=None,
                   help="attention: remove channels from every head, or whole heads [default: whole heads in SD-family "
                        "transformer blocks, channels in the DDPM U-Net]")
    p.add_argument("--attn-scale", choices=("pruned", "dense"), default=None,
                   help="softmax scale after pruning: from the pruned head width, or the dense one "
                        "[default: the model's own setting]")
    p.add_argument("--ignored", nargs="*", default=None, help="module paths whose output channels are kept")
    cli.add_data_flags(p, DATASETS, default=d.data, help="the gradient batch's data (pipelines: shapes = the "
                       "captioned shapes, folder = images captioned by metadata.jsonl / metadata.csv rows or "
                       "sibling .txt files, or --prompts)")
    p.add_argument("--prompts", default=None, help="text-to-image pipelines: a captions file, line i for image i of "
                   "--data folder; also the grids' prompts (reports/pipeline_prune.py)")
    p.add_argument("--recipe", choices=RECIPES, default=None, help="ldm-script: Diff-Pruning's LDM script (x0 "
                   "sampled by the pipeline itself, gradient methods; pruning/spec.py) [default: none]")
    p.add_argument("--x0-steps", type=cli.positive_int, default=None, help="ldm-script: DDIM steps of the x0 [default: 20]")
    p.add_argument("--x0-guidance", type=float, default=None, help="ldm-script: their guidance scale [default: 3.0]")
    p.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help=f"images of the ONE gradient batch of the gradient methods (taylor, taylor-first-order, "
                        f"diff-pruning; layer: --criterion taylor). The paper's code uses 128 CIFAR-10 images "
                        f"[default: {DEFAULTS['batch_size']}]")
    p.add_argument("--micro-batch", type=cli.positive_int, default=None,
                   help=f"samples per forward/backward of the gradient pass: micro-batch // batch-size timesteps "
                        f"per pass, or parts of one timestep's batch (same result; memory) [default: {DEFAULTS['micro_batch']}]")
    p.add_argument("--round-to", type=cli.positive_int, default=None,
                   help="keep every pruned width a multiple of N (GroupNorm groups and heads respected), for speed; "
                        "a group narrower than N keeps its paper width [default: the paper's widths]")
    p.add_argument("--max-timesteps", type=cli.positive_int, default=None,
                   help="cap on the timesteps of the gradient pass [default: no cap]")
    p.add_argument("--num-samples", type=cli.nonnegative_int, default=d.num_samples,
                   help=f"images in the before/after sample grids; 0 skips the grids [default: {d.num_samples}]")
    p.add_argument("--sample-steps", type=cli.int_in_range(1, DiffusionConfig.num_timesteps, "the schedule's timesteps"),
                   default=d.sample_steps,
                   help=f"DDIM steps of the sample grids [default: {d.sample_steps}]")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=d.clip_x0,
                   help="clamp x0 predictions to [-1, 1] in the sample grids")
    p.add_argument("--target-params", type=float, default=None,
                   help="fraction of the parameters to remove, in (0, 1): channel methods find the ratio that "
                        "reaches it by bisection; --method layer selects units to reach it")
    p.add_argument("--target-macs", type=float, default=None,
                   help="fraction of the MACs (paper convention) to remove, in (0, 1), as --target-params")
    layer = p.add_argument_group("layer pruning (--method layer)")
    layer.add_argument("--criterion", choices=tuple(LAYER_CRITERIA), default=None,
                       help="unit score: output-loss (LAPTOP-Diff), random, handcrafted (BK-SDM-style rule) or "
                            "taylor (Diff-Pruning's score summed per unit) [default: output-loss; handcrafted with "
                            "--architecture]")
    layer.add_argument("--solver", choices=SOLVERS, default=None,
                       help="knapsack (exact, minimum summed score), greedy by score per cost, ranked by score, or "
                            "exhaustive (measured L(S), <= 20 units) [default: knapsack; ranked for handcrafted]")
    layer.add_argument("--granularity", choices=GRANULARITIES, default=None, help="SD U-Nets: an attention unit is a "
                       "whole Transformer2D or each transformer block [default: transformer]")
    layer.add_argument("--architecture", choices=tuple(ARCHITECTURES), default=None, help="--criterion handcrafted "
                       "(implied) of an SD-v1 U-Net: BK-SDM's fixed architecture instead of a target")
    layer.add_argument("--calib-size", type=cli.positive_int, default=None,
                       help=f"calibration triples (x0, t, eps) of output-loss, the exhaustive solver and the additivity "
                            f"report [default: {DEFAULT_CALIB_SIZE}]")
    layer.add_argument("--calib-timesteps", choices=("stratified", "uniform"), default=None,
                       help="how the calibration timesteps are drawn [default: stratified]")
    layer.add_argument("--additivity-subsets", type=cli.nonnegative_int, default=None,
                       help=f"random unit subsets per size (2, 4, 8) in the additivity report; 0 skips it "
                            f"[default: {d.additivity_subsets}]")
    cli.add_run_flags(p, out=d.out, seed_help="seed of the gradient batch, the random criteria and the grids' noise")
    return p


def build_spec(args: dict[str, Any]) -> ChannelPruning | LayerPruning:
    """The spec of the parsed flags: only the flags given (the spec fills its own defaults); a flag the
    chosen pipeline does not read is an error."""
    layer = args["method"] == "layer"
    cls = LayerPruning if layer else ChannelPruning
    own = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in args.items() if k in SPEC_FIELDS and v is not None}
    wrong = sorted(set(given) - own)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ValueError(f"{flags}: not an option of --method {args['method']} "
                         + ("(layer pruning reaches --target-params / --target-macs)" if layer
                            else "(layer pruning's; give --method layer)"))
    if "ignored" in given:
        given["ignored"] = tuple(given["ignored"])
    if layer and "architecture" in given and "criterion" not in given:
        given["criterion"] = "handcrafted"  # a fixed BK-SDM architecture is the handcrafted criterion's only
    return cls(**given) if layer else cls(method=args["method"], **given)


def read_spec_file(run: str | os.PathLike) -> PruneConfig:
    """The PruneConfig a run folder's spec.json describes (its ``out``: the folder's parent)."""
    path = Path(run) / SPEC_FILE
    if not path.is_file():
        raise cli.UserError(f"--replay {run}: no {SPEC_FILE} (not a prune.py run folder, or written before specs)")
    saved = json.loads(path.read_text())
    if saved.get("pipeline") not in PIPELINES:
        raise cli.UserError(f"--replay {path}: unknown pipeline {saved.get('pipeline')!r}")
    spec = PIPELINES[saved["pipeline"]].from_dict(saved["spec"])
    return PruneConfig(spec=spec, out=str(Path(run).resolve().parent), **saved["settings"])


def parse_args(argv: list[str] | None = None) -> PruneConfig:
    p = build_parser()
    args = vars(p.parse_args(argv))
    args.pop("debug")  # read by cli.run
    if args["replay"] is not None:
        defaults = vars(p.parse_args([]))
        extra = sorted(k for k, v in args.items() if k not in ("replay", "out", "device") and v != defaults[k])
        if extra:
            p.error(f"--replay rebuilds every option from {SPEC_FILE}; only --out, --device and --debug may be given "
                    f"with it, got {', '.join('--' + k.replace('_', '-') for k in extra)}")
        cfg = read_spec_file(args["replay"])
        given = {k: args[k] for k in ("out", "device") if args[k] != defaults[k]}
        return dataclasses.replace(cfg, **given)
    try:
        spec = build_spec(args)
        if args["additivity_subsets"] is not None and args["method"] != "layer":
            raise ValueError("--additivity-subsets: not an option of --method " + args["method"] + " (layer pruning's)")
    except ValueError as e:
        p.error(str(e))
    run = {k: v for k, v in args.items() if k not in SPEC_FIELDS and k not in ("method", "replay")}
    if run["additivity_subsets"] is None:
        run.pop("additivity_subsets")
    return PruneConfig(spec=spec, **run)


if __name__ == "__main__":
    retain_freed_memory()  # common/allocator.py: the passes reuse freed activation memory
    sys.exit(cli.run(main, parse_args))
