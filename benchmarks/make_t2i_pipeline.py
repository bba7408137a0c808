"""Assemble the embedded text-to-image pipeline folder, checkpoints/t2i_shapes (diffusers layout).

    python -m benchmarks.make_t2i_pipeline --parts                          # text_encoder/ + scheduler/ (before training)
    python -m benchmarks.make_t2i_pipeline --ship runs/train/<run>/pipeline  # unet/ + model_index.json (after)

Another CLIP (a new text encoder) means a new folder: ``--from OLD --clip CLIP --folder NEW`` copies OLD's
tokenizer/, vae/ and scheduler/, takes clip/ from CLIP and writes text_encoder/ from it; with ``--warm-start``
also OLD's unet/ and model_index.json, a pipeline whose U-Net train.py fine-tunes against the new text encoder
(a training start, not a teacher: its U-Net was trained on the old text states):

    python -m benchmarks.make_t2i_pipeline --from checkpoints/t2i_shapes --clip checkpoints/t2i_clip_negatives \
        --folder runs/t2i_v2_init --warm-start                              # train.py --model runs/t2i_v2_init
    python -m benchmarks.make_t2i_pipeline --from checkpoints/t2i_shapes --clip checkpoints/t2i_clip_negatives \
        --folder checkpoints/t2i_shapes_v2 --ship runs/train/<run>/pipeline  # the release: parts, then unet/

The class-conditional twin (training/class_conditioning.py: label = shape kind, a class token read by
cross-attention) starts from a text folder's U-Net: ``--from OLD --class-token --folder NEW`` writes unet/, vae/
and scheduler/ of OLD with the fixed class table as class_embedder/ (an "ldm" pipeline, the ImageNet LDM's
layout); train.py fine-tunes it to read the class token instead of the caption:

    python -m benchmarks.make_t2i_pipeline --from checkpoints/t2i_shapes --class-token --folder runs/class_init

The folder's parts and where they come from:

    tokenizer/     BPE vocabulary of the captions (data/bpe_vocab.py)                 shipped before
    clip/          the tiny CLIP, both towers (benchmarks/train_t2i_clip.py): the CLIP-shapes scorer, not a
                   pipeline component (model_index.json does not list it)
    text_encoder/  the tiny CLIP's text tower as a CLIPTextModel: the teacher's frozen text encoder, as CLIP's
                   text tower is SD-1's (Rombach et al. 2022, Sec. 4.3)                 --parts
    vae/           the 16x16x4 AutoencoderKL (benchmarks/train_t2i_vae.py)              shipped before
    scheduler/     SD's training schedule (scaled_linear, beta 0.00085..0.012, T 1000, eps prediction), sampled
                   by DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095) by default   --parts
    unet/          the EMA U-Net of a train.py --model t2i-shapes run (RUN/pipeline/unet)  --ship

Nothing is overwritten: a part that exists is left as it is and said so.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common.cli import UserError
from common.runs import write_text

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "checkpoints" / "t2i_shapes"
SCHEDULER = {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "solver_order": 2,
             "algorithm_type": "dpmsolver++", "steps_offset": 1, "timestep_spacing": "leading"}


def write_parts(folder: Path) -> list[str]:
    """text_encoder/ (from clip/) and scheduler/ when missing; returns what was written."""
    from models.clip.load import load_clip, text_encoder_of
    from models.pipelines.save import component_config
    from safetensors.torch import save_file

    done = []
    if not (folder / "text_encoder").exists():
        text = text_encoder_of(load_clip(folder / "clip"))
        config, weights = component_config(text)
        (folder / "text_encoder").mkdir()
        write_text(folder / "text_encoder" / "config.json", json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in text.state_dict().items()}, folder / "text_encoder" / weights)
        done.append("text_encoder")
    if not (folder / "scheduler").exists():
        (folder / "scheduler").mkdir()
        write_text(folder / "scheduler" / "scheduler_config.json", json.dumps(SCHEDULER, indent=2))
        done.append("scheduler")
    return done


def ship(run_pipeline: Path, folder: Path) -> None:
    """unet/ and model_index.json from a run's released pipeline, whose frozen parts must be the folder's own."""
    for name in ("unet", "model_index.json"):
        if (folder / name).exists():
            raise UserError(f"{folder / name} exists; it is not overwritten (remove it first to ship another U-Net)")
    from safetensors.torch import load_file

    for name, weights in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = load_file(run_pipeline / name / weights), load_file(folder / name / weights)
        if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
            raise UserError(f"{run_pipeline / name} differs from {folder / name}: the run had other frozen parts")
    shutil.copytree(run_pipeline / "unet", folder / "unet")
    index = json.loads((run_pipeline / "model_index.json").read_text())
    write_text(folder / "model_index.json", json.dumps(index, indent=2))


def new_clip_folder(old: Path, clip: Path, folder: Path, *, warm_start: bool) -> None:
    """``folder`` (new) from ``old``'s tokenizer, VAE and scheduler and ``clip`` as CLIP and text encoder (module
    docstring); every input is checked before anything is written, and nothing existing is overwritten."""
    if folder.exists():
        raise UserError(f"--folder {folder} exists; a folder with another CLIP is always a new one")
    needed = [old / n for n in ("tokenizer", "vae", "scheduler")] + [clip / "config.json"]
    needed += [old / "unet", old / "model_index.json"] if warm_start else []
    for path in needed:
        if not path.exists():
            raise UserError(f"{path} is missing: --from must be a t2i pipeline folder, --clip a CLIPModel folder")
    from models.clip import CLIPModel
    from models.clip.load import load_clip
    with_clip = load_clip(clip)  # a folder that is not a CLIPModel fails here, before anything is copied
    if not isinstance(with_clip, CLIPModel):
        raise UserError(f"--clip {clip}: holds a {type(with_clip).__name__}, not a CLIPModel with both towers "
                        "(benchmarks/train_t2i_clip.py --ship writes one)")
    old_text = json.loads((old / "text_encoder" / "config.json").read_text()) if (old / "text_encoder").is_dir() else {}
    if old_text and old_text.get("hidden_size") != with_clip.config.text.hidden_size:
        raise UserError(f"--clip {clip}: text width {with_clip.config.text.hidden_size}, but {old}'s U-Net reads "
                        f"{old_text.get('hidden_size')}-wide text states")
    folder.mkdir(parents=True)
    for name in ("tokenizer", "vae", "scheduler") + (("unet",) if warm_start else ()):
        shutil.copytree(old / name, folder / name)
    if warm_start:
        shutil.copy2(old / "model_index.json", folder / "model_index.json")
    shutil.copytree(clip, folder / "clip")
    write_parts(folder)


def class_token_folder(old: Path, folder: Path) -> None:
    """``folder`` (new): ``old``'s U-Net, VAE and scheduler with the class-shapes table as class_embedder/."""
    import dataclasses

    from models.pipelines import load_latent
    from models.pipelines.save import save_pipeline
    from training.class_conditioning import SHAPES_CLASS_DIM, shapes_class_embedder

    if folder.exists():
        raise UserError(f"--folder {folder} exists; the class-token pipeline is always a new folder")
    if not (old / "model_index.json").is_file():
        raise UserError(f"--from {old}: not a pipeline folder (no model_index.json)")
    pipe = load_latent(old)
    width = pipe.unet.config.cross_attention_dim  # one per level in the config
    if set(width if isinstance(width, (tuple, list)) else [width]) != {SHAPES_CLASS_DIM}:
        raise UserError(f"--from {old}: its U-Net reads {width}-wide states, the class table is {SHAPES_CLASS_DIM} wide")
    save_pipeline(dataclasses.replace(pipe, kind="ldm", text_encoder=None, tokenizer=None,
                                      class_embedder=shapes_class_embedder()), folder)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=FOLDER)
    p.add_argument("--parts", action="store_true", help="write text_encoder/ and scheduler/")
    p.add_argument("--ship", type=Path, help="a run's pipeline folder: copy its unet/ and model_index.json")
    p.add_argument("--from", dest="source", type=Path, help="with --clip: make --folder (new) from this folder's "
                                                             "tokenizer/vae/scheduler and the CLIP of --clip")
    p.add_argument("--clip", type=Path, help="a CLIPModel folder (benchmarks/train_t2i_clip.py --ship)")
    p.add_argument("--warm-start", action="store_true", help="with --from: copy its unet/ and model_index.json too")
    p.add_argument("--class-token", action="store_true", help="with --from: its U-Net, VAE and scheduler with the "
                                                                "shapes' class table, a class-conditional start")
    a = p.parse_args(argv)
    if a.class_token:
        if a.source is None or a.clip or a.ship or a.parts or a.warm_start:
            p.error("--class-token goes with --from and --folder only")
        return a
    if (a.source is None) != (a.clip is None):
        p.error("--from and --clip go together")
    if a.warm_start and (a.source is None or a.ship):
        p.error("--warm-start needs --from/--clip and makes a training start, not a release (no --ship)")
    return a


def main(args: argparse.Namespace) -> None:
    if args.class_token:
        class_token_folder(args.source, args.folder)
        print(f"[make_t2i_pipeline] made {args.folder}: the U-Net of {args.source} with the class table")
        return
    if args.source is not None:
        new_clip_folder(args.source, args.clip, args.folder, warm_start=args.warm_start)
        print(f"[make_t2i_pipeline] made {args.folder} from {args.source} with the CLIP of {args.clip}")
    if args.parts:
        print(f"[make_t2i_pipeline] wrote {write_parts(args.folder) or 'nothing (all parts exist)'}")
    if args.ship:
        ship(args.ship, args.folder)
        print(f"[make_t2i_pipeline] shipped {args.ship / 'unet'} to {args.folder}")


if __name__ == "__main__":
    import sys

    from common import cli

    sys.exit(cli.run(main, parse_args))
