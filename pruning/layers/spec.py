"""``LayerPruning``: the one frozen, self-checking description of a layer-pruning run (LAPTOP-Diff,
Zhang et al. 2024, arXiv 2404.11098).

    spec = LayerPruning(criterion="output-loss", target_params=0.3)
    small, report = prune_layers(model, spec, images)                     # pruning/layers/api.py

As ``pruning.spec.ChannelPruning``: one default per option (here or in the registries it names), checked
once in ``__post_init__`` with one-line errors, the defaults the criterion uses filled in, an option the
criterion does not read an error. ``architecture`` (criterion handcrafted only) names a fixed architecture
instead of a target: BK-SDM's from an SD-v1 U-Net (``pruning/layers/bksdm.py``). ``granularity`` says what an SD
U-Net's attention unit is (``pruning/layers/sd.py``). The calibration set (``calib_size`` triples, ``calib_timesteps``, ``seed``)
is always part of the spec: output-loss scores on it, the exhaustive solver measures L(S) on it and
prune.py's additivity report reads it, whatever the criterion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from common.cli import check_seed
from pruning.layers import bksdm, knapsack, sd
from pruning.layers.criteria import DEFAULT_CALIB_SIZE, DEFAULT_CALIB_TIMESTEPS, DEFAULT_SOLVER, LAYER_CRITERIA
from pruning.spec import DEFAULTS, check_choice, check_whole, one_target, spec_dict, spec_from_dict

CALIB_TIMESTEPS = ("stratified", "uniform")
# Options of the taylor criterion's gradient pass (pruning/importance.py accumulate_gradients), with the
# channel spec's defaults: the same pass.
TAYLOR_ONLY = ("thr", "batch_size", "micro_batch", "max_timesteps")


def _fill(spec: Any, name: str, value: Any) -> None:
    object.__setattr__(spec, name, value)


@dataclass(frozen=True)
class LayerPruning:
    """Which units to remove: ``criterion`` scores them, ``solver`` chooses to reach exactly one target."""

    criterion: str = "output-loss"      # output-loss (LAPTOP-Diff) | random | handcrafted | taylor
    target_params: float | None = None  # fraction of the parameters to remove ...
    target_macs: float | None = None    # ... or of the MACs (paper convention): exactly one
    solver: str | None = None           # knapsack | greedy | ranked | exhaustive; None: the criterion's own
    calib_size: int = DEFAULT_CALIB_SIZE           # (x0, t, eps) calibration triples
    calib_timesteps: str = DEFAULT_CALIB_TIMESTEPS  # stratified | uniform
    thr: float | None = None            # taylor: Diff-Pruning's threshold of the gradient pass; default 0.05
    batch_size: int | None = None       # taylor: images of its one gradient batch; default 128
    micro_batch: int | None = None      # taylor: samples per forward/backward; default 64
    max_timesteps: int | None = None    # taylor: cap on the timesteps
    seed: int = 0                       # calibration draw, random scores, taylor's noise
    architecture: str | None = None     # handcrafted: bk-sdm-base | bk-sdm-small | bk-sdm-tiny (no target then)
    granularity: str = "transformer"    # SD attention unit: a whole Transformer2D | each BasicTransformerBlock

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, tuple(LAYER_CRITERIA))
        sd.check_granularity(self.granularity)
        if self.architecture is not None:
            bksdm.check_architecture(self.architecture)
            if self.criterion != "handcrafted":
                raise ValueError(f"architecture {self.architecture!r} applies to criterion 'handcrafted', got {self.criterion!r}")
            if self.target_params is not None or self.target_macs is not None or self.solver is not None:
                raise ValueError(f"architecture {self.architecture!r} is fixed: give no target_params / "
                                 "target_macs / solver with it")
        if self.solver is None and self.architecture is None:
            _fill(self, "solver", DEFAULT_SOLVER[self.criterion])
        if self.architecture is None:
            check_choice("solver", self.solver, knapsack.SOLVERS)  # read now: solvers added later are known
        if self.architecture is None and ((self.target_params is None) == (self.target_macs is None) or one_target(self) is None):
            raise ValueError("give exactly one of target_params / target_macs (the fraction to remove)")
        check_whole("calib_size", self.calib_size)
        check_choice("calib_timesteps", self.calib_timesteps, CALIB_TIMESTEPS)
        for name in TAYLOR_ONLY:
            value = getattr(self, name)
            if self.criterion != "taylor":
                if value is not None:
                    raise ValueError(f"{name} applies to criterion 'taylor' only (its gradient pass); criterion "
                                     f"{self.criterion!r} reads no gradient, got {name}={value!r}")
                continue
            if value is None and name in DEFAULTS:
                _fill(self, name, DEFAULTS[name])
        if self.criterion == "taylor":
            if isinstance(self.thr, bool) or not isinstance(self.thr, (int, float)) or not 0.0 <= self.thr <= 1.0:
                raise ValueError(f"thr must be a number in [0, 1], got {self.thr!r}")
            for name in ("batch_size", "micro_batch", "max_timesteps"):
                check_whole(name, getattr(self, name))
        check_seed(self.seed)

    @property
    def target(self) -> tuple[str, float] | None:
        """("params" | "macs", fraction); None with an architecture."""
        return one_target(self)

    @property
    def needs_images(self) -> int:
        """How many clean images the run needs: the calibration set's and taylor's gradient batch."""
        return max(self.calib_size, self.batch_size or 0)

    def to_dict(self) -> dict[str, Any]:
        return spec_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerPruning":
        return spec_from_dict(cls, data)

    @classmethod
    def applicable(cls, **options: Any) -> "LayerPruning":
        """The spec of ``options`` less those the criterion does not read (a sweep over criteria)."""
        unused = () if options.get("criterion", "output-loss") == "taylor" else TAYLOR_ONLY
        return cls(**{k: v for k, v in options.items() if k not in unused})
