"""Layer pruning (LAPTOP-Diff, Zhang et al. 2024, arXiv 2404.11098): remove whole residual branches of the U-Net.

units.py       the removable units, per-sample masking (batched scoring) and building the smaller network
criteria.py    the criteria registry: output-loss, random, handcrafted, taylor; the calibration set
knapsack.py    selection to a target: exact knapsack DP, greedy, ranked
additivity.py  the additivity report: measured L(S) against summed single-unit scores
api.py         ``prune_layers``: the one call prune.py --method layer is a shell over
"""
from pruning.layers.api import LayerReport, check_layer_arguments, check_target, prune_layers
from pruning.layers.criteria import LAYER_CRITERIA, make_calibration, output_losses
from pruning.layers.units import find_units, mask_units, remove_units

__all__ = ["prune_layers", "LayerReport", "check_layer_arguments", "check_target", "LAYER_CRITERIA", "make_calibration",
           "output_losses", "find_units", "mask_units", "remove_units"]
