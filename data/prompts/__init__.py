"""Prompt files that ship with the repository: one caption per line, read by ``evaluate.py --prompts``.

    shapes_heldout.txt   captions of held-out shapes images (test split, never trained on), written by
                         ``python -m data.prompts.shapes_heldout`` (deterministic; tests check the file equals it)
"""
