"""Sampling protocols: named, recorded sampler settings, so that an evaluation means the same however it is run.

    protocol = resolve("paper", steps=50)       # -> Protocol(name="paper", overrides={"steps": 50}, sampler=...)
    protocol.describe()                          # 'paper (DDIM, 100 -> 50 steps, quad, eta 0, no x0 clipping)'

``evaluate.py`` takes ``--protocol NAME`` (default ``DEFAULT``, whatever models are named, so the no-argument
run and the explicit command it stands for measure the same thing); ``--steps``, ``--skip-type``, ``--eta``,
``--sampler`` and ``--clip-x0`` override single fields and are recorded as overrides. report.json stores
the protocol's name, the overrides and the resolved settings; the table is printed under ``describe()``.

  embedded  DDIM-100, uniform spacing, x0 clipped to [-1, 1]: the shipped small teacher needs the clipping
            (64 samples, FD-shapes 97.7 clipped vs 149.8 unclipped).
  paper     DDIM-100, quad spacing, no clipping: the sampler of Diff-Pruning (Fang et al. 2023, Table 1: DDIM
            100 steps; VainF/Diff-Pruning's ddpm_exp samples with --skip_type quad and no x0 clipping), as
            metrics/probe.STUDY.
  fast      DDIM-50, uniform spacing, x0 clipped: half the model calls of ``embedded``, for quick looks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from metrics.evaluation import SamplerConfig

PROTOCOLS: dict[str, SamplerConfig] = {
    "embedded": SamplerConfig(sampler="ddim", steps=100, skip_type="uniform", eta=0.0, clip_x0=True),
    "paper": SamplerConfig(sampler="ddim", steps=100, skip_type="quad", eta=0.0, clip_x0=False),
    "fast": SamplerConfig(sampler="ddim", steps=50, skip_type="uniform", eta=0.0, clip_x0=True),
}
DEFAULT = "embedded"
FIELDS = ("sampler", "steps", "skip_type", "eta", "clip_x0")


@dataclass(frozen=True)
class Protocol:
    """A named protocol, the fields the caller overrode, and the resulting sampler settings (seed included)."""

    name: str
    sampler: SamplerConfig
    overrides: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        s = self.sampler
        what = "ancestral DDPM, all steps" if s.sampler == "ddpm" else \
            f"DDIM, {s.steps} steps, {s.skip_type}, eta {s.eta:g}"
        extra = f"; overridden: {', '.join(f'{k}={v}' for k, v in self.overrides.items())}" if self.overrides else ""
        return f"{self.name} ({what}, {'x0 clipped to [-1, 1]' if s.clip_x0 else 'no x0 clipping'}, seed {s.seed}{extra})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": dict(self.overrides), "settings": dataclasses.asdict(self.sampler)}

    def flags(self) -> str:
        """Command-line flags that reproduce this protocol in evaluate.py (empty for the plain default)."""
        out = [] if self.name == DEFAULT else [f"--protocol {self.name}"]
        for key, value in self.overrides.items():
            if key == "clip_x0":
                out.append("--clip-x0" if value else "--no-clip-x0")
            else:
                out.append(f"--{key.replace('_', '-')} {value}")
        return " ".join(out)


def resolve(name: str = DEFAULT, *, seed: int = 0, **overrides: Any) -> Protocol:
    """The protocol ``name`` with ``overrides`` (fields of FIELDS; None = not given) applied; an unknown name
    or field is a ValueError naming it and the known ones. Overrides equal to the protocol's value are dropped."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown sampling protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown protocol field(s) {unknown}; known: {list(FIELDS)}")
    base = PROTOCOLS[name]
    given = {k: overrides[k] for k in FIELDS  # in FIELDS order, so a record does not depend on argument order
             if overrides.get(k) is not None and getattr(base, k) != overrides[k]}
    return Protocol(name, dataclasses.replace(base, seed=seed, **given), given)
