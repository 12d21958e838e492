"""Plots of measurements (matplotlib, headless)."""
from __future__ import annotations

from .result import LCResult

__all__ = ["plot_sites"]


def plot_sites(result: LCResult, path: str | None = None, title: str | None = None):
    """Bar plot of the mean LC per site with 99% confidence intervals.

    Args:
        result: a measurement.
        path: where to save a PNG (``None``: do not save).
        title: figure title (default: points, radius, P).

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in result.summary().rows if r["site"] != "total"]
    L = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * L + 2), 4.2), layout="constrained")
    means = [r["mean"] for r in rows]
    err = [[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]]
    ax.bar(range(L), means, yerr=err, capsize=2, color="#4C72B0", ecolor="#333333")
    ax.set_xticks(range(L))
    ax.set_xticklabels([r["site"] for r in rows], rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("mean crossed neurons (LC)")
    ax.set_xlabel("site")
    ax.set_title(title or f"LC per site: {len(result)} points, r={result.radius:g}, P={result.n_dirs}, "
                          f"total {float(result.total.double().mean()) if len(result) else 0:.2f}")
    ax.grid(axis="y", alpha=0.3)
    if path:
        fig.savefig(path, dpi=120)
    return fig
