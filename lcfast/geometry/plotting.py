"""Pictures of partitions (the paper's Figures 1, 3, 15, 16) and deformation curves
(Figures 8, 11).  Matplotlib is imported on use."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["plot_partition", "plot_layerwise", "plot_lc_grid", "plot_deformation"]


def _plt():
    import matplotlib  # noqa: PLC0415
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # pragma: no cover - an interactive backend is already running
            pass
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _polys(part) -> list[np.ndarray]:
    v, nv = part.verts.numpy(), part.nv.numpy()
    return [v[i, : nv[i]] for i in range(v.shape[0])]


def _frame(ax, part):
    p = part.polygon.numpy()
    ax.set_xlim(p[:, 0].min(), p[:, 0].max())
    ax.set_ylim(p[:, 1].min(), p[:, 1].max())
    ax.set_aspect("equal")
    ax.set_xticks([]), ax.set_yticks([])
    if part.plane.anchors is not None:
        a = part.plane.anchors.numpy()
        ax.scatter(a[:, 0], a[:, 1], s=30, c="white", edgecolors="black", zorder=5)


def _segments(ax, segs: torch.Tensor, color, lw):
    from matplotlib.collections import LineCollection  # noqa: PLC0415
    if segs.shape[0]:
        ax.add_collection(LineCollection(segs.numpy(), colors=color, linewidths=lw, zorder=3))


def plot_partition(part, ax=None, color: str | None = "slope", knots: bool = True, boundary: bool = True,
                   sites: Sequence[str] | None = None, cmap: str = "viridis"):
    """Draw a :class:`~lcfast.geometry.Partition`: regions coloured by ``color``
    (``"slope"``: the norm of the region's affine map, like the paper; ``"random"``;
    ``None``: white), knots black (of ``sites``, default all switches), decision
    boundary red.  Returns the axes."""
    from matplotlib.collections import PolyCollection  # noqa: PLC0415
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    if color not in ("slope", "random", None):
        raise ValueError(f"color must be 'slope', 'random' or None, got {color!r}")
    pc = PolyCollection(_polys(part), linewidths=0, zorder=1)
    if color == "slope":
        pc.set_array(part.slopes.numpy())
        pc.set_cmap(cmap)
    elif color == "random":
        pc.set_facecolor(np.random.default_rng(0).random((part.n_regions, 3)) * 0.6 + 0.4)
    else:
        pc.set_facecolor("white")
    ax.add_collection(pc)
    if knots:
        names = list(part.knots) if sites is None else list(sites)
        unknown = [s for s in names if s not in part.knots]
        if unknown:
            raise ValueError(f"sites: unknown switch names {unknown} (known: {list(part.knots)})")
        segs = [part.knots[s] for s in names]
        if segs:
            _segments(ax, torch.cat(segs), "black", 0.3)
    if boundary:
        _segments(ax, part.boundary, "red", 1.2)
    _frame(ax, part)
    return ax


def plot_layerwise(part, path=None, cols: int = 4):
    """One panel per switch with that switch's knots only (the paper's Figure 15).
    Returns the figure (saved to ``path`` if given)."""
    plt = _plt()
    names = list(part.knots)
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, min(cols, len(names)), figsize=(3.2 * min(cols, len(names)), 3.2 * rows),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        _segments(ax, part.knots[name], "black", 0.4)
        _frame(ax, part)
        ax.set_title(f"{name}: {part.knots[name].shape[0]} segments", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def plot_lc_grid(part, model, radii: Sequence[float], n: int = 300, n_dirs: int = 25, seed: int = 0,
                 path=None, chunk: int = 2048):
    """LC measured by :func:`lcfast.local_complexity` on an ``n x n`` grid of the slice,
    one panel per radius, knots overlaid (the paper's Figure 16).  Returns
    ``(figure, lc (len(radii), n, n))``."""
    from ..api import local_complexity  # noqa: PLC0415
    plt = _plt()
    p = part.polygon
    s = torch.linspace(float(p[:, 0].min()), float(p[:, 0].max()), n, dtype=torch.float64)
    t = torch.linspace(float(p[:, 1].min()), float(p[:, 1].max()), n, dtype=torch.float64)
    ss, tt = torch.meshgrid(s, t, indexing="xy")
    pts = part.plane.at(torch.stack([ss.flatten(), tt.flatten()], 1)).float()
    dtype = next(model.parameters()).dtype
    lcs = []
    for r in radii:
        res = local_complexity(model, pts.to(dtype), radius=float(r), n_dirs=n_dirs, seed=seed, chunk_size=chunk)
        lcs.append(res.total.reshape(n, n).float())
    fig, axes = plt.subplots(1, len(radii), figsize=(5 * len(radii), 5), squeeze=False)
    ext = (float(s[0]), float(s[-1]), float(t[0]), float(t[-1]))
    for ax, r, lc in zip(axes[0], radii, lcs):
        im = ax.imshow(lc.numpy(), origin="lower", extent=ext, cmap="magma", zorder=1)
        _segments(ax, torch.cat(list(part.knots.values())), (0.3, 0.8, 1.0, 0.6), 0.3)
        _frame(ax, part)
        ax.set_title(f"LC on a {n}x{n} grid, r = {r:g}, P = {n_dirs}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig, torch.stack(lcs)


def plot_deformation(radii: Sequence[float], ecc: torch.Tensor, dia: torch.Tensor, sites: Sequence[str],
                     path=None, title: str | None = None):
    """Mean eccentricity and diameter per site vs radius (the paper's Figures 8, 11):
    ``ecc, dia (len(radii), L)`` averaged over points, normalised by the radius."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    r = np.asarray(radii, dtype=float)
    for ax, val, name in ((axes[0], ecc, "eccentricity"), (axes[1], dia, "diameter")):
        for j, s in enumerate(sites):
            ax.plot(r, val[:, j].numpy() / r, marker="o", label=s)
        ax.set_xscale("log")
        ax.set_xlabel("radius r")
        ax.set_ylabel(f"mean {name} / r")
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
