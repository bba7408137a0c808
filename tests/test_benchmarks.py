"""Smoke test of benchmarks/speed.py: every section on the tiny preset with one repeat (not timed: the test
checks that each figure is produced, consistent and written, never how fast anything is)."""
from __future__ import annotations

import json

import pytest

from benchmarks import speed as speed_benchmark
from benchmarks import speed_report


def load_speed():
    return speed_benchmark


@pytest.mark.slow
def test_speed_benchmark_runs_every_section_on_the_tiny_preset(tmp_path):
    speed = load_speed()
    out, doc = tmp_path / "speed.json", tmp_path / "PERFORMANCE.md"
    begin, end = speed_report.DOC_BEGIN, speed_report.DOC_END
    doc.write_text(f"# Performance\n\nHand-written analysis.\n\n{begin}\nold\n{end}\n\nMore text.\n")
    # compile is left out here (tens of seconds of compilation); tests/test_fast_unet.py covers it.
    args = speed.parse_args(["--presets", "tiny", "--batch-sizes", "2", "--modes", "eager", "channels_last", "diffusers",
                             "--pruned-preset", "tiny", "--sampling-preset", "tiny", "--sampling-steps", "2",
                             "--sampling-batch", "2", "--gradient-batch", "2", "--gradient-timesteps", "2",
                             "--fid-batch", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
                             "--out", str(out), "--doc", str(doc)])
    results = speed.main(args)
    assert set(results) == set(speed.SECTIONS)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    for section in results.values():
        assert section["load_before"] and section["threads"] == 1 and section["command"]

    unet = results["unet"]["result"]["tiny/b2"]
    assert set(unet["modes"]) >= {"eager", "channels_last"}
    if "diffusers" in unet["modes"]:  # same network, same weights: the comparison is like for like
        assert float(unet["notes"]["diffusers"].rsplit("=", 1)[1]) < 1e-4
    else:
        assert "not importable" in unet["notes"]["diffusers"]
    eager = unet["modes"]["eager"]
    assert eager["forward_gflops"] == pytest.approx(2 * unet["macs_full"] * eager["forward_images_per_s"] / 1e9)

    pruned = results["pruned"]["result"]
    fwd = pruned["forward/b2"]
    assert fwd["dense"]["speedup"] == 1.0 and fwd["dense"]["mac_ratio_full"] == 1.0
    # Ratio 0.5 removes more than 0.3: larger MAC ratio, fewer parameters.
    assert fwd["ratio 0.5"]["mac_ratio_full"] > fwd["ratio 0.3"]["mac_ratio_full"] > 1.5
    assert pruned["widths"]["ratio 0.5"]["params"] < pruned["widths"]["ratio 0.3"]["params"] < pruned["widths"]["dense"]["params"]
    assert "ddim2/tiny/b2" in pruned

    assert results["prune"]["result"]["total_s"]["median_s"] > 0
    grad = next(iter(results["gradient"]["result"].values()))
    assert grad["timesteps"] == 2 and grad["s_per_timestep"] > 0 and len(results["gradient"]["result"]) == 2
    assert results["fid"]["result"]["images_per_s"] > 0

    text = doc.read_text()
    assert text.startswith("# Performance\n\nHand-written analysis.") and text.rstrip().endswith("More text.")
    assert "\nold\n" not in text and "| tiny | 2 | eager |" in text


def test_speed_benchmark_names_an_unknown_mode(tmp_path):
    speed = load_speed()
    with pytest.raises(SystemExit, match="fast"):
        speed.main(speed.parse_args(["--modes", "fast", "--out", str(tmp_path / "s.json"), "--doc", ""]))


def test_round_to_variants_are_built_and_change_widths():
    # The variants were once skipped because pruning.prune takes its options as **kwargs and a signature check
    # found no round_to: the benchmark then "measured" round-to as the unrounded model.
    speed = load_speed()
    models, notes = speed.pruned_models(speed.PRESETS["tiny"], [0.3], [8])
    assert not notes and set(models) == {"dense", "ratio 0.3", "ratio 0.3, round-to 8"}
    plain, rounded = models["ratio 0.3"].widths(), models["ratio 0.3, round-to 8"].widths()
    channels = [k for k in plain if not k.endswith(".heads") and plain[k] > 3]  # not head counts, not RGB
    assert plain["temb.dense.0"] == 89 and plain["mid.attn_1.q"] == 44  # widths the rounding is for
    assert all(rounded[k] % 8 == 0 for k in channels) and rounded != plain


def test_round_to_quality_never_writes_over_a_finished_table(tmp_path, monkeypatch):
    import argparse

    from benchmarks import round_to_quality

    monkeypatch.setattr(round_to_quality, "RESULTS", tmp_path)
    (tmp_path / "round_to_quality_mine.json").write_text("kept")
    args = argparse.Namespace(tag="mine", ratios=[0.3], round_to=[8], methods=["magnitude"], threads=1)
    with pytest.raises(SystemExit, match="round_to_quality_mine.json exists; pass another --tag"):
        round_to_quality.main(args)
    assert (tmp_path / "round_to_quality_mine.json").read_text() == "kept"
