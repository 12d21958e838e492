"""Figures (matplotlib, headless: ``Figure`` objects, no pyplot global state).

* :func:`plot_sites`: a measurement's mean LC per site (``lcfast measure``'s PNG).
* :func:`plot_records` / :func:`plot_log`: a training log of
  :class:`lcfast.train.LCTracker` (``lcfast grok``, ``lcfast plot``).
* :func:`plot_series`: LC over training checkpoints (:func:`lcfast.series.measure_series`
  rows, ``lcfast measure --checkpoints``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import LCResult

__all__ = ["plot_sites", "plot_records", "plot_log", "plot_series"]


def plot_sites(result: "LCResult", path: str | os.PathLike | None = None, title: str | None = None):
    """Bar plot of the mean LC per site with 99% confidence intervals.

    Args:
        result: a measurement (``counts`` ``(N, L)``).
        path: where to save a PNG (``None``: do not save).
        title: figure title (default: points, radius, P).

    Returns:
        The matplotlib ``Figure`` (one bar per site, ``L`` bars).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = [r for r in result.summary().rows if r["site"] != "total"]
    L = len(rows)
    fig = Figure(figsize=(max(6.0, 0.35 * L + 2), 4.2), layout="constrained")
    ax = fig.subplots()
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


_SET_COLORS = {"train": "tab:blue", "test": "tab:orange", "random": "tab:green"}


def plot_records(meta: dict[str, Any], records: list[dict[str, Any]], path: str | os.PathLike,
                 radius: str | float | None = None, title: str | None = None, sites: bool = False) -> Path:
    """Draw tracker ``records`` (see :mod:`lcfast.train.tracker`) to a PNG at ``path``,
    laid out like the paper's Figure 1.

    Top: accuracy of each labelled set and adversarial (PGD) accuracy per eps.
    Bottom: mean LC of each point set with its 99% confidence band.  All panels share a
    log-scaled step axis (symlog, so step 0 is shown).

    Args:
        meta: the log's meta dict (title and settings).
        records: step records.
        path: output file (``.png``, or any format matplotlib knows by suffix).
        radius: which radius to draw (default the first in the log).
        title: figure title (default ``meta["title"]``).
        sites: add a third panel with per-site LC of each set.

    Returns:
        the written path.
    """
    import matplotlib  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no GUI backend, no global state)

    recs = sorted((r for r in records if "step" in r), key=lambda r: r["step"])
    if not recs:
        raise ValueError("the log holds no step record to plot")
    radii = list(recs[0]["lc"][next(iter(recs[0]["lc"]))].keys())
    rkey = radii[0] if radius is None else (f"{float(radius):g}")
    if rkey not in radii:
        raise ValueError(f"radius={radius!r} is not in the log (radii: {radii})")
    steps = [r["step"] for r in recs]
    has_acc = any("acc" in r or "adv_acc" in r for r in recs)
    n_rows = (2 if has_acc else 1) + (1 if sites else 0)
    fig = Figure(figsize=(7.5, 3.0 * n_rows + 0.6))
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)
    axes = axes[:, 0]
    ai = 0
    if has_acc:
        ax = axes[ai]
        ai += 1
        names = sorted({k for r in recs for k in r.get("acc", {})}, key=lambda k: (k != "train", k))
        for k in names:
            xs = [r["step"] for r in recs if k in r.get("acc", {})]
            ys = [100 * r["acc"][k] for r in recs if k in r.get("acc", {})]
            ax.plot(xs, ys, color=_SET_COLORS.get(k), lw=2, label=f"{k} accuracy")
        adv_sets = sorted({k for r in recs for k in r.get("adv_acc", {})})
        cmap = matplotlib.colormaps["Reds"]
        for k in adv_sets:
            eps = sorted({e for r in recs for e in r.get("adv_acc", {}).get(k, {})}, key=float)
            for j, e in enumerate(eps):
                xs = [r["step"] for r in recs if e in r.get("adv_acc", {}).get(k, {})]
                ys = [100 * r["adv_acc"][k][e] for r in recs if e in r.get("adv_acc", {}).get(k, {})]
                ax.plot(xs, ys, color=cmap(0.45 + 0.5 * j / max(1, len(eps) - 1)), lw=1.6, ls="--",
                        label=f"{k} adv. acc. eps={e}")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2)
    ax = axes[ai]
    ai += 1
    for k in recs[0]["lc"]:
        pts = [(r["step"], r["lc"][k][rkey]) for r in recs if k in r["lc"] and rkey in r["lc"][k]]
        xs = [s for s, _ in pts]
        ax.plot(xs, [d["mean"] for _, d in pts], color=_SET_COLORS.get(k), lw=2, label=f"{k}")
        ax.fill_between(xs, [d["ci_low"] for _, d in pts], [d["ci_high"] for _, d in pts],
                        color=_SET_COLORS.get(k), alpha=0.25, lw=0)
    ax.set_ylabel(f"local complexity\n(r={rkey}, P={meta.get('n_dirs', '?')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="LC at", title_fontsize=8)
    if sites:
        ax = axes[ai]
        for k in recs[0]["lc"]:
            site_names = list(recs[0]["lc"][k][rkey].get("sites", {}))
            for j, sname in enumerate(site_names):
                xs = [r["step"] for r in recs if sname in r["lc"].get(k, {}).get(rkey, {}).get("sites", {})]
                ys = [r["lc"][k][rkey]["sites"][sname][0] for r in recs
                      if sname in r["lc"].get(k, {}).get(rkey, {}).get("sites", {})]
                ax.plot(xs, ys, color=_SET_COLORS.get(k), lw=1.2, ls=["-", "--", ":", "-."][j % 4],
                        label=f"{k} {sname}")
        ax.set_ylabel("LC per site")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=3)
    for a in axes:
        a.set_xscale("symlog", linthresh=1)
        a.set_xlim(0, max(steps) * 1.05 if max(steps) > 0 else 1)
    axes[-1].set_xlabel("optimization step")
    fig.suptitle(title if title is not None else meta.get("title", ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def plot_log(log: str | os.PathLike, path: str | os.PathLike | None = None, **kw) -> Path:
    """Read a tracker JSONL file and draw it (``path`` default: the log with ``.png``).
    Keyword arguments go to :func:`plot_records`."""
    from .train import read_log  # noqa: PLC0415  (the tracker imports the engine)

    meta, records = read_log(log)
    if path is None:
        path = Path(log).with_suffix(".png")
    return plot_records(meta, records, path, **kw)


def plot_series(rows: list[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw LC over checkpoint steps to a PNG at ``path``, like the tracker's figures.

    Top: mean LC (site ``"total"``) of each point set with its 99% confidence band.
    Bottom: mean LC per site, one line per (point set, site).  Both share a log-scaled
    step axis (symlog, so step 0 is shown).

    Args:
        rows: :func:`lcfast.series.measure_series` rows (keys ``step``, ``points``,
            ``site``, ``mean``, ``ci_low``, ``ci_high``).
        path: output file (``.png``, or any format matplotlib knows by suffix).
        title: figure title.

    Returns:
        the written path.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    if not rows:
        raise ValueError("rows: no measurement to plot")
    sets = list(dict.fromkeys(r["points"] for r in rows))
    sites = list(dict.fromkeys(r["site"] for r in rows if r["site"] != "total"))
    steps = sorted({r["step"] for r in rows})
    fig = Figure(figsize=(7.5, 6.6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for k in sets:
        tot = sorted((r for r in rows if r["points"] == k and r["site"] == "total"), key=lambda r: r["step"])
        xs = [r["step"] for r in tot]
        top.plot(xs, [r["mean"] for r in tot], color=_SET_COLORS.get(k), lw=2, marker="o", ms=3, label=k)
        top.fill_between(xs, [r["ci_low"] for r in tot], [r["ci_high"] for r in tot], color=_SET_COLORS.get(k),
                         alpha=0.25, lw=0)
        for j, site in enumerate(sites):
            per = sorted((r for r in rows if r["points"] == k and r["site"] == site), key=lambda r: r["step"])
            bottom.plot([r["step"] for r in per], [r["mean"] for r in per], color=_SET_COLORS.get(k), lw=1.2,
                        ls=["-", "--", ":", "-."][j % 4], label=f"{k} {site}")
    top.set_ylabel("local complexity (total)")
    top.legend(fontsize=8, title="LC at", title_fontsize=8)
    bottom.set_ylabel("LC per site")
    bottom.legend(fontsize=6, ncol=3)
    for a in (top, bottom):
        a.set_xscale("symlog", linthresh=1)
        a.set_xlim(0, max(steps) * 1.05 if max(steps) > 0 else 1)
        a.grid(alpha=0.3)
    bottom.set_xlabel("checkpoint step")
    fig.suptitle(title or "", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path
