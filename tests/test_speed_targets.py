"""benchmarks/speed_targets.py's page from a constructed result (nothing is timed here): the fraction of peak
is throughput / peak, each pruned cell is speed-up / MAC ratio, and prune.py's wall time is set against the
floor the run computed."""
from __future__ import annotations

import pytest

from benchmarks import speed_targets


def result() -> dict:
    rows = []
    for b in (16, 64):
        rows += [{"model": "dense", "batch": b, "median_ms": 1000.0 * b / 16, "iqr_ms": 1.0, "speed_up": 1.0,
                  "mac_ratio": 1.0, "speed_up_over_mac_ratio": 1.0},
                 {"model": "ratio 0.5", "batch": b, "median_ms": 300.0 * b / 16, "iqr_ms": 1.0, "speed_up": 3.2,
                  "mac_ratio": 4.0, "speed_up_over_mac_ratio": 0.8}]
    flops = 200e9
    return {"command": "python -m benchmarks.speed_targets --pruned", "started": "now", "load_before": [0.5],
            "load_after": [2.0], "machine": {"cpu": "cpu", "threads": 2, "torch": "2"},
            "matmul": {"gflops_by_size": {1024: 250.0, 2048: 400.0}, "peak_gflops": 400.0},
            "pruned": {"default": rows, "deployment": rows}, "flops_per_timestep": flops,
            "modes": {"after": {"seconds_per_timestep": [1.0, 1.0], "median_s": 1.0, "gflops": 200.0,
                                "fraction_of_peak": 0.5},
                      "compiled": {"seconds_per_timestep": [0.8], "median_s": 0.8, "gflops": 250.0,
                                   "fraction_of_peak": 0.625, "warmup_s": 160.0}},
            "same_output": {"timesteps": 4, "layers_compared": 10, "layers_differing": [], "same": True},
            "end_to_end": {"wall_s": 300.0, "inside_script_s": 290.0, "user_s": 500, "system_s": 2,
                           "peak_rss_gb": 1.0, "timesteps_computed": 100, "timesteps_kept": 99,
                           "arithmetic_floor_s": 150.0, "wall_over_floor": 2.0, "startup_import_torch_s": 1.5}}


def test_the_page_states_each_target_figure():
    page = speed_targets.render(result())
    assert "fp32 peak: 400 GFLOP/s" in page
    # a result saved before the warm-up column existed renders '-' there
    assert "| after | 1.000 | 1.000, 1.000 | 200 | 50% | - |" in page
    assert "| compiled | 0.800 | 0.800 | 250 | 62% | 160.0 |" in page
    assert "| ratio 0.5 | 4.000 | 0.80 (3.20x) | 0.80 (3.20x) | 0.80 (3.20x) | 0.80 (3.20x) |" in page
    assert "**2.00x the floor**" in page and "identical in all 10 layer roles" in page


def test_a_run_without_the_optional_sections_renders_without_them():
    r = result()
    for key in ("pruned", "end_to_end"):
        del r[key]
    page = speed_targets.render(r)
    assert "Pruned cifar10" not in page and "python prune.py" not in page


def test_counts_below_one_are_refused_before_any_work():
    with pytest.raises(SystemExit):
        speed_targets.parse_args(["--rounds", "0"])
    with pytest.raises(SystemExit):
        speed_targets.parse_args(["--timesteps", "-2"])
    assert speed_targets.parse_args(["--rounds", "1"]).rounds == 1


def test_the_compiled_mode_is_opt_in_and_otherwise_the_after_mode():
    assert not speed_targets.parse_args([]).compile and speed_targets.parse_args(["--compile"]).compile
    assert speed_targets.MODES["compiled"] == speed_targets.MODES["after"][:2] + (True,)
    assert not any(compiled for name, (_, _, compiled) in speed_targets.MODES.items() if name != "compiled")
