"""What evaluate.py checks once its models are loaded, before drawing a single sample, and what a run folder
must match to be resumed.

    check_loaded(models, reference, num_samples, out)   every model usable, the reference's images comparable,
                                                         the request's disk and memory within reach
    identity(cfg, keys)                                 what makes two evaluations the same one
    claim_run(run_dir, ident, resume=...)               a new folder records it; a resume must match it

A model with a NaN or inf weight samples black images that FD and KID would score as if real, so it is
refused here, naming the tensor (``models/integrity.py``). ``--resume`` continues the SAME evaluation only:
the same models by the SHA-256 of their weights (not by file name), the same sampling and metric settings;
anything else is a one-line refusal, and a finished run (report.json written) is never rewritten.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

from common.errors import UserError
from common.resources import check_fits
from common.runs import write_json
from metrics.evaluation import claim_sample_folder
from models.integrity import check_weights

IDENTITY_FILE = "evaluation.json"
REPORT_FILE = "report.json"
# Settings that change how a run gets its numbers, never which numbers: free to differ on resume.
FREE_ON_RESUME = ("models", "reference", "out", "device", "batch_size", "protocol")


def _shape(model) -> tuple[int, int, int]:
    c = model.config
    return c.in_channels, c.image_size, c.image_size


def check_loaded(models: Mapping[str, Any], reference: str | None, num_samples: int, out: str | os.PathLike) -> None:
    """One-line UserErrors before any sampling: a model on the meta device or with a non-finite weight; a
    ``reference`` whose images have another shape than a model's (SSIM compares them pixel by pixel); more
    samples than the disk can hold or the metrics can keep in memory. A large request is announced."""
    for src, model in models.items():
        check_weights(model, f"model {src}")
    if reference is not None:
        for src, model in models.items():
            if src != reference and _shape(model) != _shape(models[reference]):
                raise UserError(f"--reference {reference} draws {_shape(models[reference])} images but {src} draws "
                                f"{_shape(model)}: SSIM compares images of one shape; give a reference of the "
                                f"models' resolution (or none)")
    values = [c * h * w for c, h, w in map(_shape, models.values())]
    # The PNGs: at most one byte per value; scoring holds a model's and the reference's samples as float32.
    check_fits(f"--num-samples {num_samples}", disk=num_samples * sum(values), memory=2 * num_samples * max(values) * 4,
               folder=out, prefix="[evaluate] ")


def identity(cfg: Any, keys: Mapping[str, dict]) -> dict[str, Any]:
    """What makes two evaluations the same: each model's and the reference's sampling key (weights SHA-256,
    image shape, sampler settings) in order, and every setting that changes a number."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_ON_RESUME}
    return {"models": [keys[src] for src in cfg.models],
            "reference": keys[cfg.reference] if cfg.reference else None, "settings": settings}


def _differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    diffs = []
    old_models, new_models = saved.get("models", []), new["models"]
    if [m.get("weights_sha256") for m in old_models] != [m["weights_sha256"] for m in new_models]:
        diffs.append(f"the models (weights SHA-256 {[m.get('weights_sha256', '?')[:12] for m in old_models]} vs "
                     f"{[m['weights_sha256'][:12] for m in new_models]})")
    elif json.dumps(old_models, sort_keys=True) != json.dumps(new_models, sort_keys=True):
        diffs.append("the sampling settings")
    if (saved.get("reference") or {}).get("weights_sha256") != (new["reference"] or {}).get("weights_sha256"):
        diffs.append("the reference model")
    old, cur = saved.get("settings", {}), new["settings"]
    diffs += [f"{k} {old.get(k)!r} vs {cur.get(k)!r}" for k in sorted(set(old) | set(cur))
              if json.dumps(old.get(k), sort_keys=True) != json.dumps(cur.get(k), sort_keys=True)]
    return diffs


def claim_run(run_dir: Path, ident: Mapping[str, Any], names: Mapping[str, str], keys: Mapping[str, dict], *,
              resume: bool) -> bool:
    """Record ``ident`` in a new run folder; for a resume, check it, and every model's sample folder
    (``names[src]/samples``) against its sampling key. Returns True when the resumed run is already finished
    (its report stands as written: nothing is redone or rewritten). Raises a one-line UserError when the
    resumed folder holds another evaluation."""
    path = Path(run_dir) / IDENTITY_FILE
    if not resume:
        write_json(path, ident)
        return False
    for src, name in names.items():  # samples of other weights or settings under a model's folder name
        claim_sample_folder(Path(run_dir) / name / "samples", keys[src], write=False)
    finished = (Path(run_dir) / REPORT_FILE).is_file()
    if not path.is_file():
        if finished:
            raise UserError(f"--resume {run_dir}: the run is finished and records no {IDENTITY_FILE} to compare "
                            f"with; its {REPORT_FILE} is not rewritten: evaluate into a new folder (no --resume)")
        write_json(path, ident)  # an interrupted run of an older evaluate.py: its sample folders still check
        return False
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"--resume {run_dir}: {path} is unreadable ({err})") from None
    diffs = _differences(saved, ident)
    if diffs:
        raise UserError(f"--resume {run_dir} continues the same evaluation only, but these differ: "
                        f"{'; '.join(diffs)}; evaluate into a new folder (no --resume)")
    if finished:
        print(f"[evaluate] {run_dir} already finished: its {REPORT_FILE} stands as written")
    return finished
