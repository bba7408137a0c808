"""What the scripts write about a run, kept out of the algorithm packages: figures (plots.py).

pruning/ computes and returns reports; prune.py's ``write_run`` and these helpers turn them into files.
"""
