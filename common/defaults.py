"""Where the embedded default lives: the shipped tiny teacher and the run folders."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The tiny U-Net trained on the procedural shapes data (README: "The tiny teacher").
TEACHER_CHECKPOINT = REPO_ROOT / "checkpoints" / "tiny_shapes.pt"
# The embedded text-to-image pipeline (README: "The embedded text-to-image teacher"): generate.py's default.
T2I_PIPELINE = REPO_ROOT / "checkpoints" / "t2i_shapes"
RUNS_DIR = Path("runs")


def latest_pruned_checkpoint(runs_dir: Path = RUNS_DIR) -> Path | None:
    """The pruned.pt of the highest-numbered runs/prune/NNNNN-* folder, if any."""
    found = sorted((runs_dir / "prune").glob("*/pruned.pt"))
    return found[-1] if found else None
