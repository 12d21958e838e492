"""Regions per second of lcfast.geometry.partition on the grok MNIST MLP
(784-200x4-10 ReLU, ``lcfast.zoo.build_model("mnist-mlp", seed=...)``, random init),
sliced through three MNIST training points (``lcfast.zoo.build_points("mnist", 3)``;
uniform random points when MNIST is not installed, reported as ``data``), default
extent (``--margin``: a larger one), float64, 1 thread by default.

    python docs/studies/geometry_mlp_bench.py --seed 0 --points 0 1 2 --threads 1

The first forward-AD op of a process imports ``torch._dynamo``: a warm-up partition of
a tiny slice runs first and is not timed.
"""
import argparse
import json
import os
import time

import torch

from lcfast import geometry as G
from lcfast import zoo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, nargs=3, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--margin", type=float, default=0.25, help="Plane.default_extent margin (0.25: the default)")
    ap.add_argument("--reference", action="store_true", help="run the forward from the input at every switch")
    ap.add_argument("--profile", default=None, help="write a cProfile dump here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.build_model("mnist-mlp", seed=args.seed).eval()
    x, data = zoo.build_points("mnist", max(args.points) + 1)
    plane = G.Plane.through(*x[list(args.points)])
    G.partition(model, plane, (-1e-3, 1e-3, -1e-3, 1e-3))   # warm-up (torch._dynamo import)
    ext = plane.default_extent(args.margin)
    if args.reference:   # the engine's reference path (no carried maps)
        run = G.engine.run
        G.engine.run = lambda *a, **k: run(*a, **k, chain=False)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if args.profile:
        import cProfile  # noqa: PLC0415
        prof = cProfile.Profile()
        part = prof.runcall(G.partition, model, plane, ext)
        prof.dump_stats(args.profile)
    else:
        part = G.partition(model, plane, ext)
    secs = time.perf_counter() - t0
    area = float(part.areas.sum())
    out = dict(regions=part.n_regions, seconds=round(secs, 2), regions_per_s=round(part.n_regions / secs),
               load_before=[round(v, 2) for v in load0], load_after=[round(v, 2) for v in os.getloadavg()],
               threads=args.threads, seed=args.seed, margin=args.margin, reference=args.reference, points=args.points, data=data,
               area_error=abs(area - (ext[1] - ext[0]) * (ext[3] - ext[2])) / area)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
