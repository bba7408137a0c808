"""benchmarks/stats.py on constructed data: Welch's test against its formula, Holm on a known example, the
bootstrap interval, and the verdict rule (no spurious "significant" from a deterministic configuration)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from benchmarks import stats


def test_welch_matches_the_formula():
    a, b = [20.1, 22.4, 19.8, 25.0, 21.7], [26.3, 24.9, 30.2, 28.8, 27.1, 25.5]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = 2 * sps.t.sf(abs(t), df)
    w = stats.welch(a, b)
    assert w["t"] == pytest.approx(t, rel=1e-9) and w["df"] == pytest.approx(df, rel=1e-9)
    assert w["p"] == pytest.approx(p, rel=1e-6)
    assert w["p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-6)  # scipy's own
    assert 0.001 < w["p"] < 0.01  # a clear difference at n = 5 and 6


def test_holm_known_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]


def test_deterministic_criterion_is_not_spuriously_significant():
    """A = [10, 10, 10] (std 0, e.g. magnitude pruning), B = [11, 11.5, 16]: the old rule ("mean +- std
    intervals do not overlap": 2.83 > 0 + 2.75) calls A better; Welch's test (a one-sample test of B against
    10 with 2 degrees of freedom) does not: p = 0.22."""
    a, b = [10.0, 10.0, 10.0], [11.0, 11.5, 16.0]
    assert abs(np.mean(a) - np.mean(b)) > np.std(a, ddof=1) + np.std(b, ddof=1)  # the old rule's "better"
    c = stats.compare(a, b, lower_is_better=True)
    assert c["df"] == pytest.approx(2.0)
    assert c["p"] == pytest.approx(sps.ttest_1samp(b, 10.0).pvalue, rel=1e-9)
    assert c["p"] > 0.2
    v = stats.claim_verdict({"A vs B": c})
    assert v["comparisons"]["A vs B"]["outcome"] == "not resolved" and v["verdict"] == "not supported at this scale"


def test_no_spread_in_either_group_is_untestable():
    c = stats.compare([1.0, 1.0], [2.0, 2.0], lower_is_better=True)
    assert c["p"] is None
    assert stats.claim_verdict({"x": c})["comparisons"]["x"]["outcome"].startswith("untestable")


def test_bootstrap_interval_covers_the_difference_and_shrinks_with_n():
    g = np.random.default_rng(1)
    small = stats.bootstrap_diff(g.normal(0, 1, 6), g.normal(2, 1, 6))
    large = stats.bootstrap_diff(g.normal(0, 1, 600), g.normal(2, 1, 600))
    assert large[0] < -2 < large[1] and large[1] - large[0] < 0.4
    assert small[1] - small[0] > large[1] - large[0]
    assert stats.bootstrap_diff([3.0, 3.0], [1.0, 1.0]) == (2.0, 2.0)


def test_claim_verdicts_and_holm_across_the_claim():
    g = np.random.default_rng(0)
    good = list(g.normal(0.0, 1.0, 6))
    far = [list(g.normal(5.0, 1.0, 6)) for _ in range(3)]
    assert stats.claim_verdict({f"vs {i}": stats.compare(good, f, lower_is_better=True)
                                for i, f in enumerate(far)})["verdict"] == "supported"
    # one comparison goes the other way, significantly: contradicted
    mixed = {"vs far": stats.compare(good, far[0], lower_is_better=True),
             "vs better": stats.compare(good, list(g.normal(-5.0, 1.0, 6)), lower_is_better=True)}
    assert stats.claim_verdict(mixed)["verdict"] == "contradicted"
    # p = 0.03 alone passes; with two more comparisons Holm multiplies it by 3 and it no longer does
    c = {"p": 0.03, "a_better": True}
    assert stats.outcome(c) == "better"
    assert stats.outcome({**c, "p_holm": stats.holm([0.03, 0.5, 0.6])[0]}) == "not resolved"
    assert stats.claim_verdict({})["verdict"] == "untested"
    text = stats.describe(stats.claim_verdict({"x": stats.compare(good, far[0], lower_is_better=True)})
                          ["comparisons"]["x"])
    assert "95% CI" in text and "Holm p" in text and text.endswith("better")


def test_a_claim_with_one_seed_per_row_is_untested_not_unsupported():
    one = {f"a vs {b}": stats.compare([60.0], [x], lower_is_better=True) for b, x in (("b", 38.0), ("c", 59.0))}
    v = stats.claim_verdict(one)
    assert v["verdict"] == "untested (fewer than 2 seeds in a group)"
    assert all(c["outcome"] == "untestable (fewer than 2 seeds in a group)" for c in v["comparisons"].values())
    # with seeds the same comparison is tested again
    assert stats.claim_verdict({"a vs b": stats.compare([60.0, 62.0, 61.0], [38.0, 40.0, 39.0], lower_is_better=True)}
                            )["verdict"] == "contradicted"
