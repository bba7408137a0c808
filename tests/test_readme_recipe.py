"""The full-scale recipe (docs/RECIPES.md, linked from the README) is checked against the code:
every command parses with its script's own argument parser (so every flag exists and every value is valid),
every `python -c` snippet imports names that exist, and every path a command reads is written by an earlier
command. Nothing is run: the recipe needs a GPU, real data and downloads."""
from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

import evaluate
import prune
import train

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "RECIPES.md"
TITLE = "# Reproducing the papers at full scale (GPU)"
PARSERS = {"prune.py": prune.parse_args, "train.py": train.parse_args, "evaluate.py": evaluate.parse_args}
# What each script writes into its numbered run folder (tests/test_*_script.py check the scripts do): a DDPM
# checkpoint, or for an SD-family pipeline the pipeline folder RUN/pipeline (tests/test_prune_pipeline.py).
WRITES = {"prune.py": ("runs/prune/NNNNN-*/pruned.pt", "runs/prune/NNNNN-*/pipeline"),
          "train.py": ("runs/train/NNNNN-*/model.pt", "runs/train/NNNNN-*/pipeline")}


def recipe_commands() -> list[str]:
    text = RECIPES.read_text()
    assert text.startswith(TITLE), f"docs/RECIPES.md does not start with {TITLE!r}"
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_recipe_has_both_papers_and_both_datasets():
    commands = recipe_commands()
    joined = "\n".join(commands)
    for needle in ("--method diff-pruning", "--method layer", "--distill feature-normalized", "--data celeba",
                   "--preset celeba64", "--data cifar10", "fid-stats"):
        assert needle in joined, needle


def check_python_snippet(code: str) -> list[str]:
    """Compile the snippet, check that its imports resolve; return the output folders it names."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
    return [c.args[1].value for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") ==
            "export_png" and len(c.args) == 2 and isinstance(c.args[1], ast.Constant)]


def test_full_scale_sd_section_has_both_runs_and_their_sizes():
    text = RECIPES.read_text()
    section = text[text.index("## Stable Diffusion at full scale"):]
    joined = "\n".join(c for c in recipe_commands() if c in section)
    for needle in ("--model stable-diffusion-v1-5/stable-diffusion-v1-5 --method layer --criterion output-loss "
                   "--target-params 0.43882", "--model stabilityai/stable-diffusion-xl-base-1.0 --method layer",
                   "--target-params 0.5 --granularity block", "--distill feature-normalized", "--pickscore",
                   "--prompts data/coco30k.txt", "--architecture bk-sdm-small", "--recipe ldm-script",
                   "--model runs/prune/NNNNN-*/pipeline --teacher", "--model runs/train/NNNNN-*/pipeline --prompts"):
        assert needle in joined, needle
    assert "unmeasured (no GPU was lent)" in section
    # the fraction reaches BK-SDM-Small's size: at least 859,520,964 - 482,346,884 parameters removed
    # (pruning/layers/api.py target_cost rounds the fraction's saving up)
    assert -(-0.43882 * 859_520_964 // 1) >= 859_520_964 - 482_346_884
    assert -(-0.43881 * 859_520_964 // 1) < 859_520_964 - 482_346_884  # and is the least 5-digit one


def test_every_recipe_command_parses_and_reads_only_what_an_earlier_step_wrote(capsys):
    written: set[str] = set()
    commands = recipe_commands()
    assert len(commands) >= 10
    for line in commands:
        argv = shlex.split(line)
        if argv[:2] == ["python", "-c"]:
            written.update(check_python_snippet(argv[2]))
            continue
        script = next((a for a in argv if a.endswith(".py")), None)
        assert script in PARSERS, f"unknown command in the recipe: {line}"
        args = argv[argv.index(script) + 1:]
        # --device cuda is checked against this machine's torch build; the recipe's machine has a GPU.
        args = ["cpu" if i and args[i - 1] == "--device" else a for i, a in enumerate(args)]
        try:
            PARSERS[script](args)
        except SystemExit as e:
            pytest.fail(f"{script} rejects the recipe's arguments ({capsys.readouterr().err.strip()}): {line} [{e}]")
        for token in args:
            if token.startswith("runs/"):
                assert token in written, f"{token} is read before any step writes it: {line}"
        if script == "evaluate.py" and args[0] == "fid-stats":
            assert args[1] in written, f"{args[1]} is read before any step writes it: {line}"
            written.add(args[args.index("--out") + 1])
        elif "--fid-stats" in args:
            stats = args[args.index("--fid-stats") + 1]
            assert stats in written, f"{stats} is read before any step writes it: {line}"
        if script in WRITES:
            written.update(WRITES[script])
