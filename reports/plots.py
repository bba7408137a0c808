"""The figures of a pruning run: L_t against t (the gradient methods) and the additivity scatter (layer pruning).

Kept out of the algorithm packages: pruning/ computes, the scripts and these helpers draw and write.
matplotlib is imported by the first figure, not at start-up.
"""
from __future__ import annotations

import numpy as np

from common.runs import atomic_path
from pruning.importance import TimestepReport


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display; safe on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def plot_timestep_losses(report: TimestepReport, path) -> str:
    """Save a PNG of L_t against t (log y): the threshold thr * L_max as a horizontal line, the kept
    timesteps shaded, the first rejected t marked. Returns the path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ts = list(range(len(report.losses)))
    ax.plot(ts, report.losses, lw=1.2, label="$L_t$")
    if report.kept:
        ax.axvspan(report.kept[0] - 0.5, report.kept[-1] + 0.5, color="tab:green", alpha=0.15,
                   label=f"kept t = {report.kept[0]}..{report.kept[-1]} ({len(report.kept)})")
    if report.thr > 0:
        ax.axhline(report.threshold, color="tab:red", ls="--", lw=1, label=f"thr * $L_{{max}}$ (thr = {report.thr:g})")
    if report.stopped_at is not None:
        ax.plot([report.stopped_at], [report.losses[report.stopped_at]], "x", color="tab:red", ms=8,
                label=f"stop at t = {report.stopped_at}")
    if report.losses and min(report.losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("$L_t$ (sum over C,H,W; batch mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return str(path)


def plot_additivity(report: dict, path) -> str:
    """One scatter per criterion: measured L(S) against the summed scores, coloured by |S|. The output-loss
    panel has the diagonal y = x (exact additivity); other panels the least-squares line (own units)."""
    plt = _pyplot()
    names = list(report["criteria"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    measured = np.array(report["measured"])
    size_of = np.array([len(s) for s in report["subsets"]])
    for ax, name in zip(axes[0], names):
        pred = np.array(report["criteria"][name]["predicted"])
        for k in report["sizes"]:
            sel = size_of == k
            ax.scatter(pred[sel], measured[sel], s=14, label=f"|S| = {k}")
        st = report["criteria"][name]["stats"]["all"]
        lo, hi = float(min(pred.min(), 0)), float(pred.max())
        if name == "output-loss":
            top = max(hi, float(measured.max()))
            ax.plot([0, top], [0, top], "k--", lw=1, label="y = x (additive)")
        elif st["slope"] is not None:
            ax.plot([lo, hi], [st["slope"] * lo + st["intercept"], st["slope"] * hi + st["intercept"]], "k:", lw=1,
                    label="least squares")
        r = "-" if st["pearson"] is None else f"{st['pearson']:.3f}"
        rho = "-" if st["spearman"] is None else f"{st['spearman']:.3f}"
        ax.set_title(f"{name}: r = {r}, rho = {rho}", fontsize=10)
        ax.set_xlabel(f"sum of single-unit {name} scores")
        ax.set_ylabel("measured output loss L(S)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return str(path)
