"""The ``lcfast`` command line.

``lcfast measure`` (default when no subcommand is given) measures LC of a model on a
set of points, prints the per-site table, writes JSON and a PNG bar plot.  Models and
points come from :mod:`lcfast.zoo` (the same definitions the benchmarks use); a
random-init model is built under ``torch.manual_seed(--seed)``, so a command prints
the same counts on every run and on every rank.  ``lcfast
bench``, ``lcfast grok`` and ``lcfast plot`` come from :mod:`lcfast.bench` and
:mod:`lcfast.train.cli`.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time

import torch

from .zoo import build_model

# build_model (lcfast.zoo) is named here too: `lcfast measure --model NAME --weights F`
# builds exactly lcfast.cli.build_model(NAME, F, seed=--seed)
__all__ = ["main", "build_parser", "run_parsed", "build_model"]

# Subcommands contributed by other modules: (module, function adding parsers).
_EXTENSIONS = (("lcfast.bench", "add_parser"), ("lcfast.train.cli", "add_parsers"))


def _add_measure(sub):
    p = sub.add_parser("measure", help="measure LC of a model on points (the default command)",
                       description="Measure the local complexity of a model on a set of points.")
    p.add_argument("--model", default="resnet18",
                   help="torchvision model name (random init), mnist-mlp, paper-cnn, or module:attr "
                        "(default: resnet18)")
    p.add_argument("--weights", default=None, help="local state_dict file to load into the model")
    p.add_argument("--forward", default=None, metavar="MODULE:ATTR",
                   help="callable (model, batch) -> output used to call the model on a vertex batch, e.g. "
                        "for a model whose forward takes keyword inputs (default: model(batch))")
    p.add_argument("--data", default="images",
                   help="images (natural photos shipped offline), mnist, random, or a path "
                        "(.pt/.npy tensor or an image folder); default: images")
    p.add_argument("--points", type=int, default=16, help="number of points N (default 16)")
    p.add_argument("--size", type=int, default=224, help="image side for images/random/folder data")
    p.add_argument("--radius", type=float, default=0.005, help="cross-polytope radius r")
    p.add_argument("--dirs", type=int, default=25, help="directions per point P")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model's random init, of random points and of the frames (default 0)")
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
    from . import zoo
    from .api import local_complexity
    from .plot import plot_sites
    if args.points < 1:
        raise ValueError(f"--points must be >= 1, got {args.points}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    model = build_model(args.model, args.weights, seed=args.seed).to(device)
    x, data = zoo.build_points(args.data, args.points, zoo.input_shape(args.model, args.size), seed=args.seed,
                               size=args.size)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    forward = _forward_from(args.forward)
    res = local_complexity(model, x, radius=args.radius, n_dirs=args.dirs, seed=args.seed,
                           backend=args.backend, dtype=dtype, chunk_size=args.chunk_size,
                           progress=not args.no_progress, forward=forward)
    init = f"weights from {args.weights}" if args.weights else f"random init under torch.manual_seed({args.seed})"
    res.meta.update(model=args.model, data=args.data, data_description=data, model_init=init, model_seed=args.seed,
                    weights=args.weights, forward=args.forward)
    print(f"model {args.model}: {init}; points: {data}")
    print(res.summary())
    print(f"backend={res.meta['backend']} device={res.meta['device']} dtype={res.meta['dtype']} "
          f"LC time {res.meta['seconds']:.2f}s, total {time.perf_counter() - t0:.2f}s")
    res.save(args.out)
    png = args.plot or os.path.splitext(args.out)[0] + ".png"
    plot_sites(res, png)
    print(f"wrote {args.out} and {png}")
    return 0


def _forward_from(spec: str | None):
    """``--forward module:attr`` as the callable it names (``None`` when not given)."""
    if spec is None:
        return None
    if ":" not in spec:
        raise ValueError(f"--forward must be module:attr, got {spec!r}")
    module, _, attr = spec.partition(":")
    try:
        fn = functools.reduce(getattr, attr.split("."), importlib.import_module(module))
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--forward {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"--forward {spec!r} is not callable")
    return fn


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
    return run_parsed(parser.parse_args(argv))


def run_parsed(args: argparse.Namespace, prog: str = "lcfast") -> int:
    """Run a parsed subcommand (``args.func``): its exit code, or 2 after a one-line
    ``prog: error: ...`` on stderr for bad input (no traceback)."""
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
