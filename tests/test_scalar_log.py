"""training/scalar_log.ScalarLog: every scalar reaches TensorBoard AND scalars.jsonl / scalars.csv."""
from __future__ import annotations

import csv
import json

from training.scalar_log import ScalarLog


class _Writer:
    def __init__(self):
        self.calls, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))

    def add_image(self, *a, **k):
        self.calls.append(("image",))

    def close(self):
        self.closed = True


def test_scalars_go_to_both_and_resume_appends(tmp_path):
    w = _Writer()
    log = ScalarLog(w, tmp_path)
    for step, terms in ((10, {"loss": 0.5, "kd_out": 0.2, "kd_feat": 0.1}), (20, {"loss": 0.4, "kd_out": 0.1})):
        for name, v in terms.items():
            log.add_scalar(f"train/{name}", v, step)
    log.add_image("samples", None, 20)  # delegated
    log.close()
    assert w.closed and len(w.calls) == 6
    log = ScalarLog(_Writer(), tmp_path)  # a resumed run appends, no second header
    log.add_scalar("train/loss", 0.3, 30)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tag"]) for r in rows][:3] == [(10, "train/loss"), (10, "train/kd_out"), (10, "train/kd_feat")]
    with open(tmp_path / "scalars.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and table[-1] == {**table[-1], "step": "30", "tag": "train/loss", "value": "0.3"}
    assert {r["tag"] for r in table} == {"train/loss", "train/kd_out", "train/kd_feat"}


def test_train_writes_scalars_beside_tensorboard(tmp_path):
    import train
    from tests.test_train import base_config, small_checkpoint

    run = train.main(base_config(tmp_path, small_checkpoint(tmp_path / "init.pt"), steps=2, ckpt_every=2))
    with open(run / "scalars.csv") as f:
        table = list(csv.DictReader(f))
    tags = {r["tag"] for r in table}
    assert {"train/loss", "train/grad_norm", "train/lr"} <= tags
    assert sorted({int(r["step"]) for r in table if r["tag"] == "train/loss"}) == [1, 2]
    assert any((run / "tb").iterdir())


def test_short_fine_tune_logs_raw_and_ema_heldout_and_warns(tmp_path, capsys):
    import train
    from tests.test_train import base_config, small_checkpoint
    from training.recipe import ema_horizon_warning

    run = train.main(base_config(tmp_path, small_checkpoint(tmp_path / "init.pt"), steps=2, ckpt_every=2,
                                 ema_decay=0.999, lr=1e-2))
    out = capsys.readouterr().out
    assert "held-out eps-MSE EMA" in out and ", raw " in out
    assert "far below the EMA horizon 1/(1-0.999) = 1000 steps" in out
    with open(run / "scalars.csv") as f:
        rows = {r["tag"]: float(r["value"]) for r in csv.DictReader(f) if r["tag"].startswith("eval/")}
    assert set(rows) == {"eval/heldout_loss_ema", "eval/heldout_loss_raw"} and rows["eval/heldout_loss_ema"] != rows["eval/heldout_loss_raw"]
    assert ema_horizon_warning(300, 0.99, True) is None  # 300 steps >= 100 / 4
