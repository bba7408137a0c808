"""The statistics behind the study's verdicts: Welch's t-test, a bootstrap interval, Holm's correction.

One comparison is two configurations measured over seeds (a: values of A, b: values of B, one per seed,
seeds pooled across runs). For it we report

- the effect: the difference of means d = mean(a) - mean(b), also relative to mean(b);
- its 95% bootstrap interval (percentile method, resampling each group independently with replacement;
  Efron & Tibshirani 1993, ch. 13). With 3 to 6 seeds a group's resamples take few values, so the interval
  is rough: it is a description of the spread, the test below is what decides;
- Welch's t-test of equal means without assuming equal variances (Welch 1947; the same statistic as
  scipy.stats.ttest_ind with equal_var=False), two-sided. A deterministic configuration (every seed gives
  the same value, std 0) is handled correctly: the test reduces to a one-sample test of the other group
  against that constant, with its n - 1 degrees of freedom, so a std of 0 does not make a difference
  "significant" the way it loosens a "mean +- std intervals do not overlap" rule. When both groups have no
  spread the test is undefined (p = None), and the comparison is reported as untestable;
- Holm's step-down correction (Holm 1979) across the comparisons of ONE claim (e.g. Diff-Pruning against
  random, magnitude and Taylor): the adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) for the sorted
  p-values, which controls the family-wise error at alpha without assuming independence.

A claim's verdict (``claim_verdict``): "supported" when every comparison is in the claimed direction with
Holm-adjusted p < alpha; "contradicted" when any is significant in the opposite direction; otherwise "not
supported at this scale" (the data do not separate the configurations at these seeds); "untested" when a
configuration is missing or no comparison can be tested (fewer than 2 seeds in a group, or no spread at all).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ALPHA = 0.05


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Welch's two-sided t-test of mean(a) = mean(b): {"t", "df", "p"} (None where undefined)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "df": None, "p": None}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # no spread in either group: no test
        return {"t": None, "df": None, "p": None}
    from scipy import stats  # lazily: the report's other paths need no scipy

    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom; a group without spread contributes nothing to them
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0))
    return {"t": float(t), "df": float(df), "p": float(2 * stats.t.sf(abs(t), df))}


def bootstrap_diff(a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b), each group resampled independently."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    g = np.random.default_rng(seed)
    da = a[g.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    db = b[g.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values in the given order; None (untestable) stays None and does not count in m."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def compare(a: Sequence[float], b: Sequence[float], *, lower_is_better: bool, seed: int = 0) -> dict:
    """One comparison of A against B (uncorrected): effect, interval, Welch test, and whether A is better."""
    a, b = list(map(float, a)), list(map(float, b))
    d = float(np.mean(a) - np.mean(b))
    w = welch(a, b)
    lo, hi = bootstrap_diff(a, b, seed=seed)
    mb = float(np.mean(b))
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(np.mean(a)), "mean_b": mb,
            "std_a": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
            "std_b": float(np.std(b, ddof=1)) if len(b) > 1 else 0.0,
            "diff": d, "relative": d / abs(mb) if mb else None, "ci95": [lo, hi], **w,
            "a_better": (d < 0) == lower_is_better and d != 0}


def _no_test_reason(c: dict) -> str:
    """Why a comparison has no p-value (welch returned None)."""
    return "fewer than 2 seeds in a group" if min(c["n_a"], c["n_b"]) < 2 else "no spread in either group"


def outcome(c: dict, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (A against B, Holm-adjusted p < alpha), 'not resolved', or 'untestable'."""
    p = c.get("p_holm", c["p"])
    if p is None:
        return f"untestable ({_no_test_reason(c)})"
    if p >= alpha:
        return "not resolved"
    return "better" if c["a_better"] else "worse"


def claim_verdict(comparisons: dict[str, dict], alpha: float = ALPHA) -> dict:
    """Holm across the claim's comparisons ({label: compare(...)}, every one "A is claimed better"), each
    comparison's outcome, and the claim's verdict (module docstring)."""
    labels = list(comparisons)
    adjusted = holm([comparisons[k]["p"] for k in labels])
    out = {}
    for k, p in zip(labels, adjusted):
        out[k] = {**comparisons[k], "p_holm": p}
        out[k]["outcome"] = outcome(out[k], alpha)
    results = [v["outcome"] for v in out.values()]
    if not results:
        verdict = "untested"
    elif all(p is None for p in adjusted):  # e.g. one seed per row so far: nothing was tested
        verdict = "untested (" + "; ".join(sorted({_no_test_reason(v) for v in out.values()})) + ")"
    elif any(r == "worse" for r in results):
        verdict = "contradicted"
    elif all(r == "better" for r in results):
        verdict = "supported"
    else:
        verdict = "not supported at this scale"
    return {"verdict": verdict, "alpha": alpha, "correction": f"Holm over {sum(p is not None for p in adjusted)}",
            "comparisons": out}


def describe(c: dict, spec: str = ".4g") -> str:
    """'d = -120 (-31%), 95% CI [-250, -10], Welch t = -2.1, df 8.3, p 0.07, Holm p 0.14: not resolved'."""
    rel = "" if c["relative"] is None or not math.isfinite(c["relative"]) else f" ({c['relative']:+.0%})"
    lo, hi = c["ci95"]
    if c["p"] is None:
        test = f"Welch: {_no_test_reason(c)}"
    else:
        test = f"Welch t = {c['t']:.2f}, df {c['df']:.1f}, p {c['p']:.3g}"
        if "p_holm" in c and c["p_holm"] is not None:
            test += f", Holm p {c['p_holm']:.3g}"
    tail = f": {c['outcome']}" if "outcome" in c else ""
    return (f"{c['mean_a']:{spec}} vs {c['mean_b']:{spec}} (n {c['n_a']}, {c['n_b']}): d = {c['diff']:{spec}}{rel}, "
            f"95% CI [{lo:{spec}}, {hi:{spec}}], {test}{tail}")
