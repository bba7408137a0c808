"""``ChannelPruning``: the one frozen, self-checking description of a channel-pruning run.

    spec = ChannelPruning(method="diff-pruning", ratio=0.3, thr=0.05, batch_size=128)
    model, report = prune(model, model.example_inputs(), spec, data=x0)      # pruning/api.py

Every option has ONE default, defined here (``DEFAULTS``). ``__post_init__`` checks the whole spec once, before
any work, with one-line errors, and fills in the defaults the chosen method uses; an option the method does
not read is an error rather than silently ignored (``--method magnitude --thr 0.9`` would otherwise look like
a threshold run). What it holds is what was asked; ``PruneReport`` says what that came to (the ratio a target
reached). ``to_dict`` / ``from_dict`` round-trip through JSON: prune.py writes the spec into the pruned
checkpoint and the run folder, and ``prune.py --replay`` rebuilds it.

Methods (the paper's names, Fang, Ma & Wang 2023, arXiv 2305.10924, Table 1, and its code
VainF/Diff-Pruning ``ddpm_exp/prune.py``):

    random               i.i.d. uniform scores (seeded)
    magnitude            squared L2 norm of each channel's weight slices
    taylor               the paper's Taylor row: the Diff-Pruning score sum (W G)^2 with G summed over ALL
                         timesteps (diff-pruning at thr 0; the reference's ``--pruner taylor``)
    taylor-first-order   first-order Taylor per slice, |sum_k w_k G_k| (Molchanov et al. 2019), G over all
                         timesteps (what the reference's LDM script calls taylor with ``multivariable=True``)
    diff-pruning         the paper: (W G)^2 with G summed over t up to the first L_t < thr * L_max
    scratch              random pruning, then the pruned structure re-initialised

Recipes (``recipe``): the settings of one of the paper's scripts as ONE option. None is the DDPM script
(``ddpm_exp/prune.py``): x0 is a batch of training images, one noise draw for every t. "ldm-script" is its
ImageNet-LDM script (VainF/Diff-Pruning ``ldm_exp/prune_ldm.py``), for the gradient methods only:

    x0           latents the model itself samples: DDIM (eta 0) with classifier-free guidance for random class
                 labels (or random captions of a text model), ``pruning/self_sampled.py`` draws them;
                 x0_steps 20, x0_guidance 3.0, batch_size 6 samples (the script's n_samples_per_class)
    thr          0.1 (diff-pruning)
    head_mode    "channels": q/k/v grouped by heads, every head loses the same channels (its
                 channel_groups[to_q/to_k/to_v] = heads); round_to 2
    ignored      the output conv, conv_out (its ignored_layers = [diffusion_model.out]: latent-diffusion's
                 GroupNorm-SiLU-conv output; the network output is protected here in any case)

Each filled value is a default: an explicit thr, head_mode, round_to or batch_size wins. The script's
"taylor" is method "taylor-first-order" here, its "diff0" method "taylor". Differences that remain
(docs/PRUNING.md): the script redraws its 6 classes, latents and noise at EVERY t, while here ONE sampled batch
and one noise draw serve all t (the paper's DDPM loop); its attention keeps the dense softmax scale after
pruning; and Torch-Pruning, which drops every group holding an ignored layer's output channels, also keeps the
width of the last decoder level (the output GroupNorm's channels), which is pruned here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from common.cli import check_seed
from diffusion.guidance import check_guidance_scale
from models.sd.attention import BasicTransformerBlock
from pruning.select import HEAD_MODES
from pruning.trace.record import ATTN_GROUPINGS

METHODS = ("random", "magnitude", "taylor", "taylor-first-order", "diff-pruning", "scratch")
GRADIENT_METHODS = ("taylor", "taylor-first-order", "diff-pruning")
SCOPES = ("local", "global")
# "sequential": the paper's code, each group scored on the partly pruned network, in its visiting order.
# "dense": every group scored on the dense network, so the result does not depend on any order.
SCORINGS = ("sequential", "dense")
ATTN_SCALES = ("pruned", "dense")  # models/ddpm/config.py's attn_scale

# One default per option. Options in GRADIENT_ONLY take theirs only for a gradient method; thr only for
# diff-pruning (taylor's G runs over every timestep by definition).
DEFAULTS: dict[str, Any] = {
    "ratio": 0.3,        # the paper's per-group channel sparsity (ch_sparsity)
    "thr": 0.05,         # the paper's CIFAR-10 threshold
    "batch_size": 128,   # images of the ONE gradient batch: the paper's code uses 128 CIFAR-10 images
    "micro_batch": 64,   # samples per forward/backward of the gradient pass (memory only: same result)
}
GRADIENT_ONLY = ("batch_size", "micro_batch", "max_timesteps")
RECIPES = ("ldm-script",)
RECIPE_ONLY = ("x0_steps", "x0_guidance")  # options of the self-sampled x0: an error without a recipe
# The LDM script's settings (VainF/Diff-Pruning ldm_exp/prune_ldm.py; module docstring), filled where None.
LDM_SCRIPT: dict[str, Any] = {
    "thr": 0.1,              # its diff-pruning threshold (diff0: 0)
    "batch_size": 6,         # n_samples_per_class: latents sampled per gradient batch
    "x0_steps": 20,          # ddim_steps, eta 0
    "x0_guidance": 3.0,      # its unconditional_guidance_scale
    "head_mode": "channels",  # channel_groups = heads for to_q / to_k / to_v
    "round_to": 2,
}
OUTPUT_LAYERS = ("conv_out",)  # its ignored diffusion_model.out (GroupNorm, SiLU, conv): see the docstring


def check_fraction(name: str, value: Any, *, closed_low: bool = False) -> None:
    """``value`` is a finite number in (0, 1) ([0, 1) with ``closed_low``); else a one-line ValueError."""
    low_ok = (lambda v: v >= 0.0) if closed_low else (lambda v: v > 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low_ok(value) or not value < 1.0:
        raise ValueError(f"{name} must be a fraction in {'[0' if closed_low else '(0'}, 1), got {value!r}")


def check_whole(name: str, value: Any, minimum: int = 1) -> None:
    """``value`` is None or an int >= ``minimum``; else a one-line ValueError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _fill(spec: Any, name: str, value: Any) -> None:
    object.__setattr__(spec, name, value)  # a frozen dataclass completes itself once, in __post_init__


def one_target(spec: Any) -> tuple[str, float] | None:
    """("params" | "macs", fraction) of a spec's target, None without one; both at once is an error."""
    if spec.target_params is not None and spec.target_macs is not None:
        raise ValueError("give target_params or target_macs, not both")
    for kind in ("params", "macs"):
        value = getattr(spec, f"target_{kind}")
        if value is not None:
            check_fraction(f"target_{kind}", value)
            return kind, float(value)
    return None


def spec_dict(spec: Any) -> dict[str, Any]:
    """The spec as plain JSON values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


def spec_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)`` with a one-line error naming unknown keys (a spec.json of another version)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no option(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class ChannelPruning:
    """What to prune and how (see the module docstring for the methods). ``None`` means "the default where the
    method uses the option"; after construction every used option holds its value, unused ones None."""

    method: str = "diff-pruning"
    ratio: float | None = None          # per-group sparsity (local) or global fraction; default 0.3 without a target
    target_params: float | None = None  # fraction of the parameters to remove instead of a ratio (bisection) ...
    target_macs: float | None = None    # ... or of the MACs (paper convention)
    thr: float | None = None            # diff-pruning: stop at the first t with L_t < thr * L_max; default 0.05
    scope: str = "local"                # local (the paper) | global ranking
    scoring: str = "sequential"         # sequential (the paper's code) | dense
    attn_grouping: str = "joint"        # joint (q, k, v and proj_out's input: the paper's code) | split
    head_mode: str | None = None        # channels | heads (whole attention heads); None: the model's (head_mode_for)
    attn_scale: str | None = None       # pruned | dense softmax scale after pruning (None: the model's own)
    round_to: int | None = None         # keep pruned widths multiples of this (local rule, channels)
    ignored: tuple[str, ...] = ()       # module paths whose output channels are kept
    batch_size: int | None = None       # gradient methods: images of the one gradient batch; default 128
    micro_batch: int | None = None      # gradient methods: samples per forward/backward; default 64
    max_timesteps: int | None = None    # gradient methods: cap on the timesteps of the gradient pass
    seed: int = 0                       # random scores, the noise draw eps, scratch's re-init
    recipe: str | None = None           # None (the DDPM script: x0 = training images) | "ldm-script" (docstring)
    x0_steps: int | None = None         # ldm-script: DDIM steps of the self-sampled x0; default 20
    x0_guidance: float | None = None    # ldm-script: their classifier-free guidance scale; default 3.0

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        self._fill_recipe()
        for name, choices in (("scope", SCOPES), ("scoring", SCORINGS), ("attn_grouping", ATTN_GROUPINGS)):
            check_choice(name, getattr(self, name), choices)
        if self.head_mode is not None:
            check_choice("head_mode", self.head_mode, HEAD_MODES)
        if self.attn_scale is not None:
            check_choice("attn_scale", self.attn_scale, ATTN_SCALES)
        if self.ratio is not None and (self.target_params is not None or self.target_macs is not None):
            raise ValueError(f"give ratio or a target (target_params / target_macs), not both: the target sets the "
                             f"ratio, got ratio={self.ratio!r}")
        if one_target(self) is None:
            _fill(self, "ratio", DEFAULTS["ratio"] if self.ratio is None else self.ratio)
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                    or not math.isfinite(self.ratio) or not 0.0 <= self.ratio < 1.0:
                raise ValueError(f"ratio (the pruning ratio) must be in [0, 1), got {self.ratio!r}")
        if self.method == "diff-pruning":
            _fill(self, "thr", DEFAULTS["thr"] if self.thr is None else self.thr)
            if isinstance(self.thr, bool) or not isinstance(self.thr, (int, float)) or not math.isfinite(self.thr):
                raise ValueError(f"thr must be a finite number in [0, 1], got {self.thr!r}")
            if not 0.0 <= self.thr <= 1.0:
                raise ValueError(f"thr must be in [0, 1], got {self.thr}: the gradient loop stops at the first t with "
                                 f"L_t < thr * L_max, so thr > 1 would stop at t = 0 before any gradient")
        elif self.thr is not None:
            why = ("uses every timestep (it is diff-pruning at thr 0)" if self.method in GRADIENT_METHODS
                   else "reads no gradient")
            raise ValueError(f"thr applies to method 'diff-pruning' only: {self.method!r} {why}; got thr={self.thr!r}")
        for name in GRADIENT_ONLY:
            value = getattr(self, name)
            if self.method not in GRADIENT_METHODS:
                if value is not None:
                    raise ValueError(f"{name} applies to the gradient methods {GRADIENT_METHODS} only; method "
                                     f"{self.method!r} reads no gradient, got {name}={value!r}")
                continue
            if value is None and name in DEFAULTS:
                _fill(self, name, DEFAULTS[name])
            check_whole(name, getattr(self, name))
        check_whole("round_to", self.round_to)
        if self.round_to and self.round_to > 1 and (self.scope != "local" or self.head_mode == "heads"):
            raise ValueError(f"round_to applies to the local rule with head_mode 'channels', got scope={self.scope!r}, "
                             f"head_mode={self.head_mode!r}")
        if isinstance(self.ignored, str) or not all(isinstance(p, str) for p in self.ignored):
            raise ValueError(f"ignored must be a sequence of module paths, got {self.ignored!r}")
        _fill(self, "ignored", tuple(self.ignored))
        if self.recipe == "ldm-script":  # the output layers join the caller's ignored paths
            _fill(self, "ignored", self.ignored + tuple(p for p in OUTPUT_LAYERS if p not in self.ignored))
        check_seed(self.seed)

    def _fill_recipe(self) -> None:
        """Check ``recipe`` and its options, and fill the recipe's defaults where the spec says None."""
        if self.recipe is None:
            for name in RECIPE_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} configures the self-sampled x0 of recipe 'ldm-script' only; without "
                                     f"a recipe x0 is given as data, got {name}={getattr(self, name)!r}")
            return
        check_choice("recipe", self.recipe, RECIPES)
        if self.method not in GRADIENT_METHODS:
            raise ValueError(f"recipe {self.recipe!r} samples the gradient batch x0 from the model: it applies to "
                             f"the gradient methods {GRADIENT_METHODS}, got method {self.method!r}")
        for name, value in LDM_SCRIPT.items():
            if name == "thr" and self.method != "diff-pruning":
                continue  # taylor / taylor-first-order read every t (the script's diff0 / taylor)
            if name == "round_to" and (self.head_mode == "heads" or self.scope != "local"):
                continue  # rounding is a rule of the local selection with head_mode channels (select.py)
            if getattr(self, name) is None:
                _fill(self, name, value)
        check_whole("x0_steps", self.x0_steps)
        if isinstance(self.x0_guidance, bool) or not isinstance(self.x0_guidance, (int, float)):
            raise ValueError(f"x0_guidance must be a number >= 1, got {self.x0_guidance!r}")
        try:
            _fill(self, "x0_guidance", check_guidance_scale(self.x0_guidance))
        except ValueError as e:
            raise ValueError(f"x0_guidance: {e}") from None

    def head_mode_for(self, model: nn.Module) -> str:
        """The head mode applied to ``model``: the spec's, or where it says None, "heads" for a network of
        transformer blocks (the latent U-Net's ``BasicTransformerBlock``: its head count is a config width,
        ``<...>.attnN.heads``, and whole heads go, as in structured transformer pruning) and "channels"
        elsewhere (the DDPM U-Net, as the paper's code prunes it). That attention's softmax scale is always
        1/sqrt(its current head width), so narrower heads with attn_scale "dense" are refused here."""
        transformer = any(isinstance(m, BasicTransformerBlock) for m in model.modules())
        mode = self.head_mode or ("heads" if transformer else "channels")
        if transformer and mode == "channels" and self.attn_scale == "dense":
            raise ValueError("attn_scale 'dense' cannot hold for transformer blocks pruned channel by channel: their "
                             "attention scales by 1/sqrt(the current head width); use head_mode 'heads' (whole "
                             "heads, the head width unchanged) or attn_scale 'pruned'")
        return mode

    @property
    def gradient(self) -> bool:
        return self.method in GRADIENT_METHODS

    @property
    def gradient_thr(self) -> float:
        """The threshold the gradient pass applies: thr for diff-pruning, 0 (every timestep) for both taylors."""
        return float(self.thr) if self.method == "diff-pruning" else 0.0

    @property
    def target(self) -> tuple[str, float] | None:
        return one_target(self)

    def to_dict(self) -> dict[str, Any]:
        return spec_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ChannelPruning":
        return spec_from_dict(cls, data)

    @classmethod
    def applicable(cls, **options: Any) -> "ChannelPruning":
        """The spec of ``options`` less those the method does not read (a sweep over methods passes one set of
        options to all of them); only this explicit call drops options instead of refusing them."""
        method = options.get("method", "diff-pruning")
        unused = (() if method == "diff-pruning" else ("thr",)) \
            + (() if method in GRADIENT_METHODS else GRADIENT_ONLY + RECIPE_ONLY + ("recipe",))
        return cls(**{k: v for k, v in options.items() if k not in unused})
