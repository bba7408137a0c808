"""Small utilities shared by train.py, prune.py and evaluate.py (run folders, seeding, image grids, EMA)."""
