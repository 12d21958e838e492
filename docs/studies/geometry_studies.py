"""Validation studies of lcfast.geometry on a `lcfast grok mnist-mlp` run (docs/geometry.md).

    python docs/studies/geometry_studies.py exact RUN_DIR --points 500 --every 2   # (a) Figure 26
    python docs/studies/geometry_studies.py slices RUN_DIR --steps 0 8500 100000   # (b), (c) Figures 17, 1
    python docs/studies/geometry_studies.py plot                                    # figures from the JSON

RUN_DIR is the output folder of `lcfast grok mnist-mlp` (its weights/step-*.pt).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

import lcfast
from lcfast import geometry as G
from lcfast.cli import build_model
from lcfast.train.data import load_mnist

OUT = Path(__file__).resolve().parent


def _weights(run: Path):
    files = sorted((run / "weights").glob("step-*.pt"))
    return [(int(re.findall(r"\d+", f.stem)[0]), f) for f in files]


def exact(args):
    x, _ = load_mnist(train=True, n=args.points)
    ids = torch.arange(args.points)
    frames = lcfast.random_frames(x.shape[1:], 25, 0, ids)
    path = OUT / "exact_vs_vertex.jsonl"
    done = set()
    if path.exists():
        done = {json.loads(line)["step"] for line in path.read_text().splitlines()}
    for i, (step, f) in enumerate(_weights(Path(args.run))):
        if i % args.every or step in done:
            continue
        model = build_model("mnist-mlp", str(f)).eval()
        rec = dict(step=step)
        t0 = time.perf_counter()
        for r in args.radius:
            cnt, regions = G.exact_local_complexity(model, x, radius=r, directions=frames[:, :2], return_regions=True)
            v2 = lcfast.local_complexity(model, x, radius=r, directions=frames[:, :2]).counts
            v25 = lcfast.local_complexity(model, x, radius=r, directions=frames).counts
            rec[f"{r:g}"] = dict(regions=regions.tolist(), exact=cnt.sum(1).tolist(), vertex2=v2.sum(1).tolist(),
                                 vertex25=v25.sum(1).tolist(), exact_sites=cnt.float().mean(0).tolist(),
                                 vertex2_sites=v2.float().mean(0).tolist())
        rec["seconds"] = time.perf_counter() - t0
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(step, f"{rec['seconds']:.1f}s", {r: (sum(v["regions"]) / len(v["regions"]), sum(v["vertex25"]) / len(
            v["vertex25"])) for r, v in rec.items() if isinstance(v, dict)}, flush=True)


def _boundary_distance(part):
    """Distance from each region's interior point to the nearest decision-boundary segment."""
    c = part.interior
    seg = part.boundary
    if seg.shape[0] == 0:
        return torch.full((part.n_regions,), float("inf"), dtype=torch.float64)
    a, b = seg[:, 0], seg[:, 1]
    out = []
    for chunk in c.split(4096):
        ab = b - a
        tt = (((chunk[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-300)).clamp(0, 1)
        p = a[None] + tt[..., None] * ab[None]
        out.append((chunk[:, None] - p).norm(dim=-1).amin(1))
    return torch.cat(out)


def slices(args):
    x, _ = load_mnist(train=True, n=max(args.points) + 1)
    plane = G.Plane.through(*x[list(args.points)])
    weights = dict(_weights(Path(args.run)))
    full = Path(args.cache) / "slices.json"   # per-region data (large): kept beside the cached partitions
    res = json.loads(full.read_text()) if full.exists() else {}
    for want in args.steps:
        step = min(weights, key=lambda s: abs(s - want))
        model = build_model("mnist-mlp", str(weights[step])).eval()
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        part = G.partition(model, plane)
        secs = time.perf_counter() - t0
        d = _boundary_distance(part)
        res[str(step)] = dict(regions=part.n_regions, seconds=secs, load=open("/proc/loadavg").read().split()[:3],
                              threads=args.threads, crossed=part.crossed,
                              knots={k: int(v.shape[0]) for k, v in part.knots.items()},
                              area=part.areas.tolist() if part.n_regions < 300_000 else None,
                              boundary_distance=d.tolist())
        print(step, part.n_regions, f"{secs:.1f}s", f"{part.n_regions / secs:.0f} regions/s", res[str(step)]["load"],
              flush=True)
        torch.save(dict(verts=part.verts, nv=part.nv, slopes=part.slopes, boundary=part.boundary,
                        knots=part.knots, anchors=plane.anchors, polygon=part.polygon),
                   Path(args.cache) / f"slice-{step}.pt")
        full.write_text(json.dumps(res))


def plot(args):
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from scipy.stats import spearmanr  # noqa: PLC0415
    recs = [json.loads(line) for line in (OUT / "exact_vs_vertex.jsonl").read_text().splitlines()]
    recs.sort(key=lambda r: r["step"])
    radii = [k for k in recs[0] if k not in ("step", "seconds")]
    fig, axes = plt.subplots(1, len(radii) + 1, figsize=(5 * (len(radii) + 1), 4))
    steps = [max(r["step"], 1) for r in recs]
    summary = {}
    for ax, rad in zip(axes, radii):
        mean = lambda key: [sum(r[rad][key]) / len(r[rad][key]) for r in recs]  # noqa: E731
        for key, lab in (("regions", "exact regions in the P=2 diamond"), ("exact", "exact LC (P=2)"),
                         ("vertex2", "vertex LC P=2"), ("vertex25", "vertex LC P=25")):
            ax.plot(steps, mean(key), marker=".", label=lab)
        ax.set_xscale("log"), ax.set_xlabel("step"), ax.set_title(f"500 train points, r = {rad}", fontsize=9)
        ax.legend(fontsize=7)
        summary[rad] = {k: spearmanr(mean("regions"), mean(k)).statistic for k in ("exact", "vertex2", "vertex25")}
        summary[rad]["per_point_regions_vs_vertex25"] = [
            spearmanr(r[rad]["regions"], r[rad]["vertex25"]).statistic for r in recs]
    ax = axes[-1]
    rad = radii[0]
    for key in ("vertex2", "vertex25"):
        ax.plot(steps, summary[rad]["per_point_regions_vs_vertex25"] if key == "vertex25" else
                [spearmanr(r[rad]["regions"], r[rad]["vertex2"]).statistic for r in recs], marker=".",
                label=f"per point: regions vs {key}")
    ax.set_xscale("log"), ax.set_xlabel("step"), ax.set_ylabel("Spearman (over the points)")
    ax.set_title(f"rank correlation at each checkpoint, r = {rad}", fontsize=9), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "exact_vs_vertex.png", dpi=130)
    (OUT / "exact_vs_vertex_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)} for k, v in summary.items()}))


def plot_slices(args):
    import types  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from lcfast.geometry.plotting import plot_partition  # noqa: PLC0415
    res = json.loads((Path(args.cache) / "slices.json").read_text())
    steps = sorted(res, key=int)
    fig, axes = plt.subplots(1, len(steps), figsize=(6 * len(steps), 6), squeeze=False)
    for ax, step in zip(axes[0], steps):
        c = torch.load(Path(args.cache) / f"slice-{step}.pt", weights_only=False)
        part = types.SimpleNamespace(verts=c["verts"], nv=c["nv"], slopes=c["slopes"], boundary=c["boundary"],
                                     knots=c["knots"], polygon=c["polygon"], n_regions=c["verts"].shape[0],
                                     plane=types.SimpleNamespace(anchors=c["anchors"]))
        plot_partition(part, ax=ax)
        ax.set_title(f"step {step}: {part.n_regions} regions", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "slices.png", dpi=80)
    # (b) region density vs distance from the decision boundary
    summary = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for step in steps:
        d = torch.tensor(res[step]["boundary_distance"], dtype=torch.float64)
        a = torch.tensor(res[step]["area"], dtype=torch.float64)
        if not torch.isfinite(d).any():
            continue
        edges = torch.quantile(d, torch.linspace(0, 1, 11, dtype=torch.float64))
        b = torch.bucketize(d, edges[1:-1])
        dens = [float((b == i).sum() / a[b == i].sum()) for i in range(10)]
        mid = [float(d[b == i].median()) for i in range(10)]
        ax.plot(mid, dens, marker="o", label=f"step {step}")
        summary[step] = dict(regions=res[step]["regions"], seconds=res[step]["seconds"], load=res[step]["load"],
                             crossed=res[step]["crossed"], knots=res[step]["knots"],
                             decile_median_distance=mid, decile_density=dens)
    ax.set_xlabel("distance of the region to the decision boundary (input units)")
    ax.set_ylabel("regions per unit area")
    ax.set_yscale("log"), ax.legend(fontsize=8)
    ax.set_title("region density vs distance to the decision boundary (deciles)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "density_vs_boundary.png", dpi=130)
    (OUT / "slices_summary.json").write_text(json.dumps(summary, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exact")
    e.add_argument("run")
    e.add_argument("--points", type=int, default=500)
    e.add_argument("--every", type=int, default=1)
    e.add_argument("--radius", type=float, nargs="+", default=[0.005, 0.05])
    e.set_defaults(func=exact)
    s = sub.add_parser("slices")
    s.add_argument("run")
    s.add_argument("--steps", type=int, nargs="+", required=True)
    s.add_argument("--points", type=int, nargs=3, default=[0, 1, 2])
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--cache", default="/tmp")
    s.set_defaults(func=slices)
    p = sub.add_parser("plot")
    p.set_defaults(func=plot)
    q = sub.add_parser("plot-slices")
    q.add_argument("--cache", default="/tmp")
    q.set_defaults(func=plot_slices)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
