"""Structural pruning: trace -> coupling groups -> importance -> selection -> surgery.

``pruning.prune(model, example_inputs, method=..., ratio=...)`` is the one-call API (pruning/api.py).
"""
from pruning.api import METHODS, PruneReport, prune  # noqa: F401
