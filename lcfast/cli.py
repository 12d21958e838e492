"""The ``lcfast`` command line.

``lcfast measure`` (default when no subcommand is given) measures LC of a model on a
set of points, prints the per-site table, writes JSON and a PNG bar plot.  ``lcfast
bench``, ``lcfast grok`` and ``lcfast plot`` come from :mod:`lcfast.bench` and
:mod:`lcfast.train.cli`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

__all__ = ["main", "build_model", "build_data"]

# Subcommands contributed by other modules: (module, function adding parsers).
_EXTENSIONS = (("lcfast.bench", "add_parser"), ("lcfast.train.cli", "add_parsers"),
               ("lcfast.geometry.cli", "add_parsers"))


def build_model(spec: str, weights: str | None = None) -> torch.nn.Module:
    """A model from a name.

    * a torchvision classification model (``resnet18``, ``resnet50``, ``vit_b_16``,
      ...), random init (no weights are downloaded; ``weights`` loads a local
      state_dict file);
    * ``mnist-mlp`` / ``paper-cnn``: the paper's models (:mod:`lcfast.train.models`);
    * ``package.module:attr``: an ``nn.Module`` instance or a callable returning one.
    """
    if ":" in spec:
        mod, attr = spec.split(":", 1)
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        model = obj if isinstance(obj, torch.nn.Module) else obj()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"--model {spec!r} did not give an nn.Module")
    elif spec in ("mnist-mlp", "paper-cnn"):
        from .train import models as tm
        model = torch.nn.Sequential(torch.nn.Flatten(), tm.mlp()) if spec == "mnist-mlp" else tm.paper_cnn()
    else:
        import torchvision
        try:
            model = torchvision.models.get_model(spec, weights=None)
        except ValueError as e:
            raise ValueError(f"--model: unknown model {spec!r} (a torchvision model name, mnist-mlp, "
                             f"paper-cnn, or module:attr)") from e
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model


def build_data(spec: str, n: int, size: int, model_spec: str, seed: int) -> torch.Tensor:
    """Points ``(n, *S)`` for ``--data`` (images | mnist | random | a path)."""
    from . import datasets
    if spec == "images":
        return datasets.natural_images(n, size=size)
    if spec == "mnist":
        from .train.data import load_mnist
        x, _ = load_mnist(train=True, n=n)
        return x
    if spec == "random":
        shape = (1, 28, 28) if model_spec == "mnist-mlp" else (3, 32, 32) if model_spec == "paper-cnn" \
            else (3, size, size)
        return datasets.random_points(n, shape, seed=seed)
    return datasets.load_path(spec, n=n, size=size)


def _add_measure(sub):
    p = sub.add_parser("measure", help="measure LC of a model on points (the default command)",
                       description="Measure the local complexity of a model on a set of points.")
    p.add_argument("--model", default="resnet18",
                   help="torchvision model name (random init), mnist-mlp, paper-cnn, or module:attr "
                        "(default: resnet18)")
    p.add_argument("--weights", default=None, help="local state_dict file to load into the model")
    p.add_argument("--data", default="images",
                   help="images (natural photos shipped offline), mnist, random, or a path "
                        "(.pt/.npy tensor or an image folder); default: images")
    p.add_argument("--points", type=int, default=16, help="number of points N (default 16)")
    p.add_argument("--size", type=int, default=224, help="image side for images/random/folder data")
    p.add_argument("--radius", type=float, default=0.005, help="cross-polytope radius r")
    p.add_argument("--dirs", type=int, default=25, help="directions per point P")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "native", "triton"])
    p.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--out", default="result.json", help="JSON output (default result.json)")
    p.add_argument("--plot", default=None, help="PNG bar plot (default: --out with .png)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_measure)
    return p


def _measure(args) -> int:
    from .api import local_complexity
    from .plot import plot_sites
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    model = build_model(args.model, args.weights).to(device)
    x = build_data(args.data, args.points, args.size, args.model, args.seed)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    res = local_complexity(model, x, radius=args.radius, n_dirs=args.dirs, seed=args.seed,
                           backend=args.backend, dtype=dtype, chunk_size=args.chunk_size,
                           progress=not args.no_progress)
    res.meta.update(model=args.model, data=args.data)
    print(res.summary())
    print(f"backend={res.meta['backend']} device={res.meta['device']} dtype={res.meta['dtype']} "
          f"LC time {res.meta['seconds']:.2f}s, total {time.perf_counter() - t0:.2f}s")
    res.save(args.out)
    png = args.plot or os.path.splitext(args.out)[0] + ".png"
    plot_sites(res, png)
    print(f"wrote {args.out} and {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcfast", description="Fast local complexity of deep networks.")
    sub = parser.add_subparsers(dest="command")
    _add_measure(sub)
    for mod, fn in _EXTENSIONS:
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            if e.name != mod:  # the module exists but something it needs is missing: say so
                raise
            continue
        getattr(module, fn)(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["measure", *argv]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"lcfast: error: {e}", file=sys.stderr)
        return 2
