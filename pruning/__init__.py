"""Structural pruning: trace -> coupling groups -> importance -> selection -> surgery.

``pruning.prune(model, example_inputs, spec, data)`` is the one-call API (pruning/api.py); the spec,
``ChannelPruning`` (pruning/spec.py), holds every option with its one default and checks. A conditional latent
U-Net's gradient batch is a ``ConditionalBatch`` (pruning/conditional.py): latents with their conditions.
"""
from pruning.api import METHODS, PruneReport, prune  # noqa: F401
from pruning.conditional import ConditionalBatch  # noqa: F401
from pruning.spec import ChannelPruning  # noqa: F401
