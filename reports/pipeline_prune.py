"""prune.py on a latent text-to-image pipeline: prune its U-Net, keep its frozen parts, write the run folder.

    python prune.py --model checkpoints/t2i_shapes --method diff-pruning --ratio 0.3
    python prune.py --model checkpoints/t2i_shapes --method layer --target-params 0.3 --granularity block
    python prune.py --model sd15/ --method layer --criterion handcrafted --architecture bk-sdm-small

The spec is prune.py's (``pruning.spec.ChannelPruning``, ``pruning.layers.spec.LayerPruning``), read against the
pipeline's SD-family U-Net; the calibration / gradient batch is (VAE latents, caption embeddings) of captioned
images (``pruning/pipelines.py``) and the loss is the pipeline's own training schedule's. The run folder holds

    pipeline/            the pruned pipeline: the pruned U-Net (unet/config.json carries ``_diffprune_config``)
                         and the frozen VAE, text encoder(s), tokenizer(s), scheduler unchanged; generate.py,
                         evaluate.py --prompts, train.py --model and ``models.load`` read it
    unet/                instead of pipeline/ when --model is a bare UNet2DConditionModel folder (config.json +
                         weights, no model_index.json; data-free methods only): the pruned U-Net alone, which
                         ``models.load`` reads; no calibration data, sample grids or additivity report then
    spec.json            the spec and the run's settings (``prune.py --replay``)
    report.json          params and MACs before/after, the calibration batch's record, times
    widths.txt, groups.txt             channel pruning: every layer's width before/after, the coupled groups
    units.txt, additivity.json/.png    layer pruning: the units with their scores and which went; the additivity
                                       report of the criterion (not for a fixed BK-SDM architecture)
    samples_before.png, samples_after.png, grid_prompts.txt   one image per fixed prompt, same noise
    timestep_losses.png  the gradient methods' L_t against t with the threshold marked

Before any weight is read, a gradient method's pass is checked against the device's total memory
(``pruning/memory.py``: SDXL's weights and gradients alone are 20 GB in float32).
"""
from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path

from common.cli import UserError
from common.resources import check_fits
from common.runs import RunLock, new_run_dir, write_json, write_text
from pruning import pipelines as pp
from pruning.layers.spec import LayerPruning
from pruning.memory import folder_parameters

SPEC_FILE = "spec.json"
BARE_UNET_NOTE = ("a bare U-Net folder: no VAE / text encoder / scheduler, so no calibration data, no sample grids "
                  "and no additivity report; unet/ is the pruned U-Net alone (models.load reads it; put it in a "
                  "pipeline folder as unet/ to generate)")


def _load(cfg):
    """(pipeline, U-Net) of ``cfg.model`` on ``cfg.device``, in float32. A bare UNet2DConditionModel folder gives
    (None, U-Net), for the data-free methods only (refused before any weight is read otherwise); another component
    folder or a non-SD U-Net is refused."""
    from models.integrity import check_weights
    from models.pipelines import Pipeline, load_component, load_latent
    from models.pipelines.component import class_name, read_config
    from models.sd.unet import UNet2DConditionModel

    folder = Path(cfg.model)
    if folder.is_dir() and not (folder / "model_index.json").is_file():  # refused before minutes of reading
        pp.check_bare_unet(cfg.spec, cfg.model, class_name(read_config(folder)))
        unet = load_component(folder).to(cfg.device)
        check_weights(unet, f"--model {cfg.model}")
        return None, unet
    pipe = load_latent(cfg.model)
    if not isinstance(pipe, Pipeline):
        raise UserError(f"--model {cfg.model}: a single component ({type(pipe).__name__}); prune.py prunes the U-Net "
                        "of a whole pipeline folder (model_index.json) so that the result can generate")
    if not isinstance(pipe.unet, UNet2DConditionModel):
        raise UserError(f"--model {cfg.model}: its U-Net is a {type(pipe.unet).__name__}, not an SD-family "
                        "UNet2DConditionModel")
    pipe = pipe.to(cfg.device)
    check_weights(pipe.unet, f"--model {cfg.model} (unet)")
    return pipe, pipe.unet


def _check_memory(cfg, counts: dict[str, int]) -> None:
    """The gradient pass fits the device's total memory (pruning/memory.py); ``counts``: {component: elements}."""
    from pruning.memory import check_gradient_memory

    spec = cfg.spec
    if not pp.gradient_pass(spec):
        return
    what = f"layer --criterion {spec.criterion}" if isinstance(spec, LayerPruning) else f"method {spec.method!r}"
    check_gradient_memory(cfg.model, what, unet_params=counts["unet"],
                          frozen_params=sum(n for k, n in counts.items() if k != "unet"),
                          micro_batch=spec.micro_batch, batch_size=spec.batch_size, device=cfg.device)


def _target_error(spec, e: Exception) -> UserError:
    what, fraction = spec.target or ("architecture", spec.architecture)
    flag = f"--target-{what} {fraction}" if spec.target else f"--architecture {fraction}"
    why = (" (layer pruning keeps at least one unit of every down and up stage: a target beyond that would empty "
           "a whole stage; BK-SDM-Tiny's --architecture bk-sdm-tiny removes one by design)") if "reachable" in str(e) else ""
    return UserError(f"{flag}: {e}{why}")


def prune_pipeline(cfg) -> Path:
    """Prune the U-Net of the pipeline ``cfg.model`` as ``cfg.spec`` says (cfg: prune.py's PruneConfig); returns
    the new run folder."""
    from diffusion.schedule import training_schedule
    from metrics.macs import count_macs
    from pruning.api import check_prune, prune
    from pruning.layers import check_target, prune_layers
    from pruning.layers.additivity import additivity_for_run

    spec, layer = cfg.spec, isinstance(cfg.spec, LayerPruning)
    pp.check_source(data=cfg.data, data_root=cfg.data_root, prompts=cfg.prompts)  # before any weight is read
    start = time.perf_counter()
    counts = folder_parameters(cfg.model) if pp.gradient_pass(spec) else None  # from the configs: nothing read
    if counts is not None:
        _check_memory(cfg, counts)
    pipe, unet = _load(cfg)  # pipe None: a bare U-Net folder (data-free methods; no grids, no additivity report)
    modules = pipe.modules() if pipe is not None else {"unet": unet}
    sizes = {k: sum(t.numel() for t in (*m.parameters(), *m.buffers())) for k, m in modules.items()}
    if counts is None:
        _check_memory(cfg, sizes)
    # The output folder is written last, in float32 (SDXL's pipeline: 9 GB even pruned); the dense one's size bounds it.
    check_fits(f"--out {cfg.out}", disk=4 * sum(sizes.values()), folder=cfg.out, prefix="[prune] ")
    if pipe is not None:
        pp.check_pipeline(pipe, spec, cfg.model, cfg.data, cfg.prompts)
        if cfg.num_samples:
            pp.check_grid_steps(pipe, cfg.sample_steps)
    try:
        if layer:
            check_target(unet, spec)  # unreachable targets, a BK-SDM architecture of another topology
        schedule = None if pipe is None else \
            training_schedule(pipe.scheduler, "mean", source=f"--model {cfg.model} (scheduler)")
    except ValueError as e:
        raise (_target_error(spec, e) if layer else UserError(str(e))) from None
    example = unet.example_inputs()
    macs_before = count_macs(unet, example)
    cache = Path(cfg.out).parent / "cache"  # train.py's latent cache (runs/cache)
    latents, cond, record = (None, None, {"data": None, "note": BARE_UNET_NOTE}) if pipe is None else \
        pp.calibration(pipe, spec, data=cfg.data, data_root=cfg.data_root, prompts=cfg.prompts, cache_dir=cache,
                       device=cfg.device)
    data = None
    if not layer and spec.gradient:
        data, record = (pp.gradient_batch(latents, cond), record) if latents is not None else \
            pp.self_sampled(pipe, spec, data=cfg.data, prompts=cfg.prompts)
    if not layer:
        try:
            check_prune(unet, example, spec, data)
        except ValueError as e:
            raise UserError(str(e)) from None
    prompts = [] if pipe is None else pp.grid_conditions(pipe, pp.grid_prompts(cfg.data, cfg.prompts, cfg.num_samples))
    t_grids = time.perf_counter()
    grid = dict(steps=cfg.sample_steps, seed=spec.seed)
    before = pp.sample_grid(pipe, unet, prompts, **grid) if prompts else None
    t_grids = time.perf_counter() - t_grids
    additivity = None
    if layer:
        small, report = prune_layers(unet, spec, latents, cond=cond, schedule=schedule)
        if cfg.additivity_subsets and spec.architecture is None and latents is not None:
            additivity = additivity_for_run(unet, report, spec, latents, schedule=schedule,
                                            per_size=cfg.additivity_subsets, cond=cond)
    else:
        small, report = prune(unet, example, spec, data, schedule=schedule)
    t_after = time.perf_counter()
    after = pp.sample_grid(pipe, small, prompts, **grid) if prompts else None
    report.seconds["sample_grids"] = t_grids + time.perf_counter() - t_after
    macs_after = count_macs(small, small.example_inputs())
    macs = {"params_before": macs_before.params, "params_after": macs_after.params,
            "macs_paper_before": macs_before.macs_paper, "macs_paper_after": macs_after.macs_paper,
            "macs_full_before": macs_before.macs_full, "macs_full_after": macs_after.macs_full}
    seconds = time.perf_counter() - start
    label = f"layer-{spec.criterion}" if layer else spec.method
    run = new_run_dir(cfg.out, f"{pp.pipeline_name(cfg.model)}-{label}")
    with RunLock(run, "writing this prune run") as lock:
        pruned = small.eval() if pipe is None else dataclasses.replace(pipe, unet=small.eval())
        _write(cfg, run, pruned, report, macs=macs, record=record,
               additivity=additivity, grids=(prompts, before, after), seconds=seconds)
        lock.path.unlink()
    _print_summary(cfg, run, report, macs, additivity, seconds)
    return run


def _write(cfg, run: Path, pruned, report, *, macs: dict, record: dict, additivity: dict | None, grids: tuple,
           seconds: float) -> None:
    """Every file of the module docstring; the pipeline folder is written whole or not at all (save_pipeline)."""
    from common.images import save_grid
    from models.checkpoint import environment
    from models.pipelines import Pipeline, save_component, save_pipeline
    from reports.plots import plot_additivity, plot_timestep_losses
    from reports.widths import width_table

    layer = isinstance(cfg.spec, LayerPruning)
    spec = {"pipeline": "layer" if layer else "channel", "spec": cfg.spec.to_dict()}
    applied = ({"removed": report.removed, "params_after": report.params_after, "macs_paper_after": report.macs_after}
               if layer else report.applied())
    if isinstance(pruned, Pipeline):
        save_pipeline(pruned.to("cpu"), run / "pipeline")
    else:  # a bare U-Net folder's run: the pruned U-Net alone, as a component folder
        save_component(pruned.to("cpu"), run / "unet")
    write_json(run / SPEC_FILE, {**spec, "settings": cfg.settings(), "applied": applied, "source_model": cfg.model})
    summary = report.summary()
    write_json(run / "report.json", {**summary, **macs, "calibration": record, "settings": cfg.settings(),
                                     "environment": environment(), "source_model": cfg.model,
                                     "seconds_total": seconds})
    if layer:
        write_text(run / "units.txt", report.table() + "\n")
    else:
        write_text(run / "groups.txt", report.groups_text + "\n")
        write_text(run / "widths.txt", width_table(report.widths_before, report.widths_after))
    prompts, before, after = grids
    if before is not None:
        write_text(run / "grid_prompts.txt", "".join(p + "\n" for p in prompts))
        save_grid(before, run / "samples_before.png", nrow=min(8, len(prompts)))
        save_grid(after, run / "samples_after.png", nrow=min(8, len(prompts)))
    if not layer and report.timesteps is not None:
        plot_timestep_losses(report.timesteps, run / "timestep_losses.png")
    if additivity is not None:
        write_json(run / "additivity.json", additivity)
        plot_additivity(additivity, run / "additivity.png")


def _print_summary(cfg, run: Path, report, macs: dict, additivity: dict | None, seconds: float) -> None:
    from metrics.macs import format_count
    from reports.widths import stage_summary

    f, q = format_count, shlex.quote
    if isinstance(cfg.spec, LayerPruning):
        from pruning.layers.additivity import format_report

        print(report.table())
        if additivity is not None:
            print("\nadditivity: measured output loss L(S) of random unit subsets against the summed single-unit scores")
            print(format_report(additivity))
    else:
        print(stage_summary(report.widths_before, report.widths_after) + f"\n(every layer: {run / 'widths.txt'})")
    print(f"\nU-Net #params {f(macs['params_before'])} -> {f(macs['params_after'])}   MACs (paper convention) "
          f"{f(macs['macs_paper_before'])} -> {f(macs['macs_paper_after'])}")
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    listing = ", ".join(sorted(p.name for p in run.iterdir() if not p.name.startswith(".")))
    pipe, src = q(str(run / "pipeline")), q(cfg.model)
    print(f"time: {seconds:.1f}s in all ({timing})\n\nwrote {run}/: {listing}")
    if not (run / "pipeline").is_dir():  # a bare U-Net folder's run
        print(f"\n{BARE_UNET_NOTE}\nnext:\n  python prune.py --replay {q(str(run))}")
        return
    print(f"\nnext:\n  python train.py --model {pipe} --distill feature-normalized --teacher {src} --steps 1000 "
          f"--lr 1e-4 --batch-size 32     # fine-tune with distillation from the dense pipeline")
    # the hints follow what the pipeline reads (text, a class, or nothing), not the grid's first line
    from models.pipelines.text_to_image import folder_info

    info = folder_info(run / "pipeline")
    if info.has_text:
        print(f"  python generate.py --model {pipe} --prompt {q(_first_prompt(run))}")
        print(f"  python evaluate.py --model {pipe} --prompts data/prompts/shapes_heldout.txt     # the shapes world")
    elif info.num_classes:
        print(f"  python generate.py --model {pipe} --class-label 0")
        print(f"  python evaluate.py --model {pipe} --class-labels {info.num_classes} --num-images-per-prompt 32")
    else:
        print(f"  python generate.py --model {pipe} --guidance 1     # unconditional: no prompt or label")
    print(f"  python prune.py --replay {q(str(run))}")


def _first_prompt(run: Path) -> str:
    path = run / "grid_prompts.txt"
    return path.read_text().splitlines()[0] if path.is_file() else pp.FIXED_PROMPTS[0]

