"""benchmarks/latency.py on the tiny preset, CPU, 1 warm-up and 1 repetition: the table's structure, the MAC
ratios of magnitude-pruned networks, and the refusals (fp16 on a CPU, an existing result file, a failed
compile). Nothing here is timed: the figures' values are never asserted, only how they relate."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import latency
from benchmarks.latency_report import COLUMNS

BASE = ["--device", "cpu", "--models", "tiny", "--warmup", "1", "--repeats", "1", "--threads", "1"]


def fail_to_compile(model, **kwargs):
    """Stands in for torch.compile: a forward that fails at its first call, as a broken compiler would."""
    def forward(*args):
        raise RuntimeError("inductor: no C++ compiler found\nsecond line")
    return forward


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    mp = pytest.MonkeyPatch()
    mp.setattr(torch, "compile", fail_to_compile)
    try:
        result = latency.main(BASE + ["--batch-sizes", "1", "2", "--dtypes", "fp32", "fp16",
                                      "--compile", "none", "default", "--out-dir", str(out)])
    finally:
        mp.undo()
    return result, out


def test_rows_cover_every_model_and_batch_and_relate_to_the_dense_row(run):
    result, _ = run
    rows = result["rows"]
    assert {(r["model"], r["batch"]) for r in rows} == {(m, b) for m in ("dense", "ratio 0.3", "ratio 0.5")
                                                        for b in (1, 2)}
    assert len(rows) == 6  # fp32 eager only: fp16 is refused, the compiled setting failed
    for r in rows:
        assert (r["dtype"], r["channels_last"], r["compile"], r["sdpa"]) == ("fp32", False, "none", "auto")
        assert r["median_ms"] > 0 and r["iqr_ms"] == 0  # one repetition: no spread
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
        dense = next(d for d in rows if d["model"] == "dense" and d["batch"] == r["batch"])
        assert r["speed_up"] == pytest.approx(dense["median_ms"] / r["median_ms"])
        assert r["speed_up_over_mac_ratio"] == pytest.approx(r["speed_up"] / r["mac_ratio"])
    assert all(r["speed_up"] == 1.0 and r["mac_ratio"] == 1.0 for r in rows if r["model"] == "dense")


def test_mac_ratios_of_the_pruned_tiny_preset(run):
    result, _ = run
    models = result["groups"]["tiny"]["models"]
    # Known answers: the tiny preset has 259.09M MACs in the paper's convention (284.78M with its attention
    # products), and the local rule at ratio 0.3 keeps 145.19M, as `python prune.py` reports for the
    # embedded default (README; docs/PERFORMANCE.md: "259.09M -> 145.19M MACs"). Widths under the local rule
    # do not depend on the criterion, so magnitude on random weights gives the same network.
    assert round(models["dense"]["macs_paper"] / 1e6, 2) == 259.09
    assert round(models["ratio 0.3"]["macs_paper"] / 1e6, 2) == 145.19
    assert round(models["dense"]["params"] / 1e6, 2) == 1.11 and round(models["ratio 0.3"]["params"] / 1e6, 3) == 0.617
    for name, m in models.items():
        assert m["mac_ratio"] == pytest.approx(models["dense"]["macs"] / m["macs"])
    assert models["ratio 0.3"]["mac_ratio"] == pytest.approx(1.749, abs=1e-3)
    assert models["ratio 0.5"]["mac_ratio"] == pytest.approx(3.626, abs=1e-3)


def test_fp16_on_cpu_and_a_failed_compile_are_notes(run):
    result, _ = run
    notes = result["notes"]
    assert sum(n.startswith("fp16 refused on cpu") for n in notes) == 1
    failed = [n for n in notes if "compile default" in n]
    assert len(failed) == 6 and all("skipped, RuntimeError: inductor: no C++ compiler found" in n for n in failed)
    assert not any("second line" in n for n in notes)  # one line per note


def test_json_and_markdown_are_written_with_machine_load_and_command(run):
    result, out = run
    saved = json.loads((out / "latency_cpu.json").read_text())
    assert saved["rows"] == result["rows"]
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["torch"] == torch.__version__
    assert len(saved["groups"]["tiny"]["loadavg_before"]) == 3
    assert saved["command"].startswith("python -m benchmarks.latency --device cpu")
    md = (out / "latency_cpu.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in md
    assert sum(line.startswith("| tiny | ") for line in md.splitlines()) == 3 + 6  # MAC table + latency table
    assert "fp16 refused on cpu" in md and saved["command"] in md


def test_fp16_alone_on_cpu_is_refused_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="no --dtypes entry runs on cpu: fp16 refused on cpu"):
        latency.main(BASE + ["--dtypes", "fp16", "--out-dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_an_existing_result_is_never_overwritten(tmp_path):
    (tmp_path / "latency_cpu_quiet.md").write_text("kept")
    with pytest.raises(SystemExit, match="latency_cpu_quiet.md exists; pass another --tag"):
        latency.main(BASE + ["--tag", "quiet", "--out-dir", str(tmp_path)])
    assert (tmp_path / "latency_cpu_quiet.md").read_text() == "kept"
    assert not (tmp_path / "latency_cpu_quiet.json").exists()


def test_the_sd_family_has_bk_sdm_and_a_layer_pruned_half_of_sd_v15():
    """MACs only, on the meta device: the BK-SDM sizes are exact (BK-SDM's paper) and the layer-pruned variant
    (LAPTOP-Diff's 50% size; random units on random weights) keeps at most half of SD-v1.5's parameters."""
    variants = {v.name: v for v in latency.sd_group(torch.device("cpu"), 0, meta=True)}
    assert list(variants) == ["dense", "bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny", latency.SD_LAYER_50]
    assert [variants[n].params for n in latency.SD_PRUNED] == [579_384_964, 482_346_884, 323_384_964]
    dense, half = variants["dense"], variants[latency.SD_LAYER_50]
    assert dense.params == 859_520_964
    assert half.params <= 0.5 * dense.params and half.params > 0.3 * dense.params
    assert half.macs < dense.macs


class CompiledLike:
    """Stands in for what torch.compile returns: it calls the module, and like torch's OptimizedModule it has no
    truth value (``len()`` raises TypeError), so code that writes ``compiled or model`` fails on it."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args):
        return self.model(*args)

    def __len__(self):
        raise TypeError(f"{type(self.model).__name__} does not support len()")


def test_a_successful_compile_is_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: CompiledLike(model))
    result = latency.main(BASE + ["--batch-sizes", "1", "--compile", "default", "--ratios", "0.5",
                                  "--out-dir", str(tmp_path)])
    rows = result["rows"]
    assert {(r["model"], r["compile"]) for r in rows} == {("dense", "default"), ("ratio 0.5", "default")}
    assert not [n for n in result["notes"] if "compile" in n]
