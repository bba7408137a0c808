"""Training scalars also as plain files next to TensorBoard: ``scalars.jsonl`` and ``scalars.csv`` in the run folder.

    run.writer = ScalarLog(SummaryWriter(run_dir / "tb"), run_dir)
    run.writer.add_scalar("train/loss", 0.05, 100)    # -> TensorBoard AND one line in each file

Every ``add_scalar`` becomes one row (step, tag, value, wall time), so each distillation term that train.py logs
under its own tag (``train/<term>``) is its own series, readable without TensorBoard
(``pandas.read_csv(run / "scalars.csv").pivot_table(index="step", columns="tag", values="value")``).
Other writer methods (add_image, close, ...) go to the wrapped writer unchanged. Rows are appended and
flushed at once, so a resumed run continues the same files (steps logged after the last checkpoint of an
interrupted run appear twice: the later row is the resumed run's).
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

FIELDS = ("step", "tag", "value", "wall_time")


class ScalarLog:
    """A TensorBoard writer whose scalars are also appended to ``folder/scalars.jsonl`` and ``scalars.csv``."""

    def __init__(self, writer: Any, folder: str | os.PathLike):
        self.writer = writer
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl_path, self.csv_path = folder / "scalars.jsonl", folder / "scalars.csv"
        new_csv = not self.csv_path.exists()
        self._jsonl = open(self.jsonl_path, "a")
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_csv:
            self._csv.writerow(FIELDS)

    def add_scalar(self, tag: str, value: float, step: int, *args, **kwargs) -> None:
        value = float(value)
        self.writer.add_scalar(tag, value, step, *args, **kwargs)
        row = {"step": int(step), "tag": tag, "value": value, "wall_time": round(time.time(), 3)}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._csv.writerow([row[f] for f in FIELDS])
        self._csv_file.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        self.writer.close()

    def __getattr__(self, name: str) -> Any:  # add_image, add_text, flush, ...: the wrapped writer's
        return getattr(self.writer, name)
