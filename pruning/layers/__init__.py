"""Layer pruning (LAPTOP-Diff, Zhang et al. 2024, arXiv 2404.11098): remove whole residual branches of the U-Net.

spec.py        ``LayerPruning``: the one frozen, self-checking description of a run (options, defaults)
units.py       the removable units, per-sample masking (batched scoring) and building the smaller network
sd.py          the SD family's U-Net: its units (ResNets, Transformer2Ds or their blocks), stages, schedule, condition
bksdm.py       BK-SDM's handcrafted architectures (base / small / tiny) and weight copy from an SD-v1 U-Net
criteria.py    the criteria registry: output-loss, random, handcrafted, taylor; the calibration set
knapsack.py    selection to a target: exact knapsack DP, greedy, ranked
exhaustive.py  the exhaustive search of the measured L(S) over the subsets that reach the target
additivity.py  the additivity report: measured L(S) against summed single-unit scores
api.py         ``prune_layers(model, spec, images)``: the one call prune.py --method layer is a shell over
"""
from pruning.layers.api import LayerReport, check_target, prune_layers
from pruning.layers.criteria import LAYER_CRITERIA, make_calibration, output_losses
from pruning.layers.spec import LayerPruning
from pruning.layers.units import find_units, mask_units, remove_units

__all__ = ["prune_layers", "LayerPruning", "LayerReport", "check_target", "LAYER_CRITERIA", "make_calibration",
           "output_losses", "find_units", "mask_units", "remove_units"]
