"""``lcfast partition`` and ``lcfast deform``: :func:`add_parsers` plugs them into the
``lcfast`` command line."""
from __future__ import annotations

import json
import os
import time

import torch

__all__ = ["add_parsers"]


def _model_and_points(args, n):
    from ..zoo import build_model, build_points, input_shape  # noqa: PLC0415
    model = build_model(args.model, args.weights, seed=args.seed)
    x = build_points(args.data, n, input_shape(args.model, args.size), seed=args.seed, size=args.size)[0]
    return model, x


def _partition(args) -> int:
    from . import Plane, partition  # noqa: PLC0415
    from .plotting import _plt, plot_layerwise, plot_lc_grid  # noqa: PLC0415
    if len(set(args.points)) != 3 or min(args.points) < 0:
        raise ValueError(f"--points: three distinct indices >= 0, got {args.points}")
    model, x = _model_and_points(args, max(args.points) + 1)
    x = x[list(args.points)]
    plane = Plane.through(*x)
    extent = args.extent or plane.default_extent(args.margin)
    t0 = time.perf_counter()
    part = partition(model, plane, extent, max_regions=args.max_regions)
    secs = time.perf_counter() - t0
    png = args.out
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 7))
    part.plot(ax=ax)
    ax.set_title(f"{args.model}: {part.n_regions} regions, points {tuple(args.points)}", fontsize=9)
    fig.savefig(png, dpi=args.dpi, bbox_inches="tight")
    counts = dict(model=args.model, weights=args.weights, points=list(args.points), extent=list(extent),
                  regions=part.n_regions, seconds=round(secs, 3),
                  knots={k: int(v.shape[0]) for k, v in part.knots.items()}, crossed=part.crossed,
                  boundary_segments=int(part.boundary.shape[0]))
    print(f"{part.n_regions} regions in {secs:.1f} s ({part.n_regions / secs:.0f} regions/s)")
    print("neurons crossing the slice per site:", json.dumps(part.crossed))
    written = [png]
    base = os.path.splitext(png)[0]
    if args.layerwise:
        plot_layerwise(part, base + "-layers.png")
        written.append(base + "-layers.png")
    if args.lc_grid:
        _, lc = plot_lc_grid(part, model, args.radius, n=args.lc_grid, n_dirs=args.dirs, seed=args.seed,
                             path=base + "-lc.png")
        counts["lc_grid_mean"] = {f"{r:g}": float(v.mean()) for r, v in zip(args.radius, lc)}
        written.append(base + "-lc.png")
    with open(base + ".json", "w") as f:
        json.dump(counts, f, indent=1)
    written.append(base + ".json")
    print("wrote", " ".join(written))
    return 0


def _deform(args) -> int:
    from . import deformation  # noqa: PLC0415
    from .plotting import plot_deformation  # noqa: PLC0415
    model, x = _model_and_points(args, args.points)
    ecc, dia, sites = [], [], None
    for r in args.radius:
        d = deformation(model, x, radius=r, n_dirs=args.dirs, seed=args.seed)
        ecc.append(d.eccentricity.mean(0)), dia.append(d.diameter.mean(0))
        sites = d.sites
    ecc, dia = torch.stack(ecc), torch.stack(dia)
    plot_deformation(args.radius, ecc, dia, sites, path=args.out,
                     title=f"{args.model} ({args.weights or 'init'}), {args.points} points, P = {args.dirs}")
    base = os.path.splitext(args.out)[0]
    with open(base + ".json", "w") as f:
        json.dump(dict(radii=list(args.radius), sites=sites, eccentricity=ecc.tolist(), diameter=dia.tolist()), f,
                  indent=1)
    for j, s in enumerate(sites):
        print(f"{s:>20s}  " + "  ".join(f"r={r:g}: ecc {e:.3g} diam {d:.3g}"
                                         for r, e, d in zip(args.radius, ecc[:, j].tolist(), dia[:, j].tolist())))
    print("wrote", args.out, base + ".json")
    return 0


def _common(p):
    p.add_argument("--model", default="mnist-mlp", help="mnist-mlp, paper-cnn, a torchvision name, or module:attr")
    p.add_argument("--weights", default=None, help="state_dict file (e.g. a `lcfast grok` weights/step-*.pt)")
    p.add_argument("--data", default="mnist", help="mnist, images, random, or a path (as `lcfast measure`)")
    p.add_argument("--size", type=int, default=32, help="image side for images/random/folder data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dirs", type=int, default=25, help="directions P")


def add_parsers(subparsers) -> None:
    """Add ``partition`` and ``deform`` to an argparse ``subparsers`` object; each sets
    ``func`` (``args -> exit code``)."""
    p = subparsers.add_parser(
        "partition", help="exact partition of the slice through three points (the paper's Figures 1, 3, 15, 16)",
        description="Exact linear regions of a piecewise-linear model on the plane through three data points: "
                    "PNG (knots black, decision boundary red, regions coloured by slope) and counts (JSON).")
    _common(p)
    p.add_argument("--points", type=int, nargs=3, default=[0, 1, 2], metavar=("I", "J", "K"),
                   help="indices of the three data points (default 0 1 2)")
    p.add_argument("--extent", type=float, nargs=4, metavar=("S0", "S1", "T0", "T1"),
                   help="slice window (default: the points' bounding box + --margin)")
    p.add_argument("--margin", type=float, default=0.25, help="margin around the points (fraction of their span)")
    p.add_argument("--max-regions", type=int, default=5_000_000)
    p.add_argument("--layerwise", action="store_true", help="also draw each layer's knots (Figure 15)")
    p.add_argument("--lc-grid", type=int, default=0, metavar="N",
                   help="also measure LC on an N x N grid of the slice (Figure 16)")
    p.add_argument("--radius", type=float, nargs="+", default=[0.005], help="radii for --lc-grid")
    p.add_argument("--dpi", type=int, default=200)
    p.add_argument("--out", default="partition.png", help="PNG (counts go to the same name .json)")
    p.set_defaults(func=_partition)

    d = subparsers.add_parser(
        "deform", help="neighbourhood deformation per layer vs radius (the paper's Figures 8, 11)",
        description="Mean eccentricity and diameter of the embedded cross-polytope graph per site vs radius.")
    _common(d)
    d.add_argument("--points", type=int, default=100, help="number of data points N")
    d.add_argument("--radius", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05, 0.1, 0.5])
    d.add_argument("--out", default="deform.png", help="PNG (numbers go to the same name .json)")
    d.set_defaults(func=_deform)
