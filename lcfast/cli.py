"""The ``lcfast`` command line.

``lcfast measure`` (default when no subcommand is given) measures LC of a model on a
set of points, prints the per-site table, writes JSON and a PNG bar plot.  Models and
points come from :mod:`lcfast.zoo` (the same definitions the benchmarks use); a
random-init model is built under ``torch.manual_seed(--seed)``, so a command prints
the same counts on every run and on every rank.  ``lcfast
bench``, ``lcfast grok`` and ``lcfast plot`` come from :mod:`lcfast.bench` and
:mod:`lcfast.train.cli`.

``lcfast measure`` always goes through :func:`lcfast.measure_dataset`, whatever the
size: one code path for 16 points and for ImageNet, and nothing is lost for small
inputs (up to ``--block-size`` points it is one :func:`lcfast.local_complexity` call;
the fingerprint is computed only with ``--resume`` or under ranks).  Under ``torchrun``
it shards the blocks over the ranks (:func:`_process_group`) and rank 0 writes the
result.  Counts do not depend on the number of processes: frames depend only on
``(seed, id)``, a random-init model is seeded by ``--seed`` on every rank, and chunk
sizes, which follow free memory, never change a count (docs/design.md#api-contract).
Threads are left to the launcher (``torchrun`` sets ``OMP_NUM_THREADS=1`` per rank).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time

import torch

from ._resolve import load_object
from .plot import plot_sites
from .scale import measure_dataset
from .zoo import build_model

# build_model (lcfast.zoo) is named here too: `lcfast measure --model NAME --weights F`
# builds exactly lcfast.cli.build_model(NAME, F, seed=--seed)
__all__ = ["main", "build_parser", "run_parsed", "build_model"]

# Subcommands contributed by other modules: (module, function adding parsers).
_EXTENSIONS = (("lcfast.bench", "add_parser"), ("lcfast.train.cli", "add_parsers"),
               ("lcfast.geometry.cli", "add_parsers"))


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
    p.add_argument("--points", type=int, default=None,
                   help="number of points N (default 16; every image of a folder --data)")
    p.add_argument("--size", type=int, default=224, help="image side for images/random/folder data")
    p.add_argument("--radius", type=float, default=0.005, help="cross-polytope radius r")
    p.add_argument("--dirs", type=int, default=25, help="directions per point P")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model's random init, of random points and of the frames (default 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "native", "triton"])
    p.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--certified", action="store_true",
                   help="counts equal to float64's: the offsets engine, its points within its own rounding band "
                        "recomputed in float64 (with --backend auto; see lcfast.local_complexity)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--out", default="result.json", help="JSON output (default result.json)")
    p.add_argument("--plot", default=None, help="PNG bar plot (default: --out with .png)")
    p.add_argument("--no-progress", action="store_true")
    _add_scale_options(p)
    p.set_defaults(func=_measure)
    return p


def _add_scale_options(p) -> None:
    g = p.add_argument_group("whole data sets, many processes, checkpoint series")
    g.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes decoding a folder --data (default 0: in this process)")
    g.add_argument("--block-size", type=int, default=1024,
                   help="points per block: the unit of --resume and of sharing work between torchrun ranks")
    g.add_argument("--resume", default=None, metavar="PREFIX",
                   help="keep finished blocks in PREFIX.rank<r>.jsonl and skip them when rerun")
    g.add_argument("--checkpoints", default=None, metavar="GLOB",
                   help="measure every checkpoint file matching GLOB (e.g. 'ckpt/step*.pt', the step is the "
                        "last number in the name) on the same points; --out gets the table (.csv or .json), "
                        "the plot shows LC over steps")


def _measure(args) -> int:
    """``lcfast measure``: single process, or one rank of ``torchrun`` (see :func:`_process_group`)."""
    if args.points is not None and args.points < 1:
        raise ValueError(f"--points must be >= 1, got {args.points}")
    if args.checkpoints and args.weights:
        raise ValueError("--checkpoints and --weights exclude each other (every checkpoint gives the weights)")
    with _process_group(args.device) as (rank, world, device):
        t0 = time.perf_counter()
        model = build_model(args.model, args.weights, seed=args.seed).to(device)
        data, described = _points(args)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        kw = dict(radius=args.radius, n_dirs=args.dirs, seed=args.seed, backend=args.backend, dtype=dtype,
                  chunk_size=args.chunk_size, certified=args.certified, block_size=args.block_size,
                  workers=args.workers, progress=rank == 0 and not args.no_progress,
                  forward=_forward_from(args.forward))
        init = f"weights from {args.weights}" if args.weights else f"random init under torch.manual_seed({args.seed})"
        if args.checkpoints:
            return _measure_series(args, model, data, described, kw, rank)
        res = measure_dataset(model, data, checkpoint=args.resume, **kw)
        seconds = time.perf_counter() - t0
        if rank != 0:  # every rank holds the whole result; rank 0 writes it
            return 0
        res.meta.update(model=args.model, data=args.data, data_description=described, model_init=init,
                        model_seed=args.seed, weights=args.weights, forward=args.forward, processes=world,
                        threads_per_process=torch.get_num_threads(), seconds=seconds)
        print(f"model {args.model}: {init}; points: {described}")
        print(res.summary())
        print(f"backend={res.meta['backend']} device={res.meta['device']} dtype={res.meta['dtype']} "
              f"{'certified ' if res.meta.get('certified') else ''}processes={world} x "
              f"{torch.get_num_threads()} threads, LC time {seconds:.2f}s (with loading)")
        res.save(args.out)
        png = args.plot or os.path.splitext(args.out)[0] + ".png"
        plot_sites(res, png)
        print(f"wrote {args.out} and {png}")
    return 0


@contextlib.contextmanager
def _process_group(device_arg: str | None):
    """``(rank, world, device)`` of this process.  Under ``torchrun`` (``WORLD_SIZE``
    and ``RANK`` in the environment) the default process group is initialised from the
    environment (``env://``: gloo on CPU, nccl on CUDA, each rank on ``cuda:LOCAL_RANK``)
    and destroyed on exit; :func:`lcfast.measure_dataset` then deals blocks to the
    ranks.  Otherwise one process, nothing initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        yield 0, 1, torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
        return
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()
    # Leave without finalising the interpreter.  A gloo worker thread may still hold the
    # last collective's work, whose tensors hold Python objects; released while Python
    # finalises, that aborts the rank (SIGABRT, "terminate called without an active
    # exception": the thread's GIL acquire exits it inside a destructor; gdb on a core,
    # torch 2.14.1; upstream: pytorch PR #179291).  Measured on the 2-core VM, 2 gloo ranks
    # under torchrun at nice 19 beside other work: 4 of 25 launches failed (with a barrier
    # before the teardown still 2 of 25, and 1 of 11).  Here the rank's results are
    # written and closed.  (After an exception the process fails anyway: normal exit.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _points(args) -> tuple:
    """``(data, description)``: a tensor ``(N, *S)`` from :func:`lcfast.zoo.build_points`,
    or for a folder ``--data`` an :class:`lcfast.image_folder.ImageFiles` data set (first
    ``--points`` images, decoded by ``--workers`` DataLoader processes while measuring)."""
    from . import zoo
    if os.path.isdir(args.data):
        from .image_folder import ImageFiles
        ds = ImageFiles(args.data, size=args.size)
        n = len(ds) if args.points is None else min(args.points, len(ds))
        data = ds if n == len(ds) else torch.utils.data.Subset(ds, range(n))
        return data, f"image folder {args.data} ({n} of {len(ds)} files, {args.workers} loader workers)"
    n = 16 if args.points is None else args.points
    return zoo.build_points(args.data, n, zoo.input_shape(args.model, args.size), seed=args.seed, size=args.size)


def _measure_series(args, model, data, described: str, kw: dict, rank: int) -> int:
    """``lcfast measure --checkpoints GLOB``: the tidy table (:mod:`lcfast.series`) to
    ``--out`` (CSV for ``.csv``, else JSON) and LC over steps to ``--plot``."""
    from .plot import plot_series
    from .series import measure_series, save_table
    name = os.path.basename(os.path.normpath(args.data)) if os.path.sep in args.data else args.data
    rows = measure_series(model, args.checkpoints, {name: data}, **kw)
    if rank != 0:
        return 0
    print(f"model {args.model}, checkpoints {args.checkpoints}; points: {described}")
    for r in rows:
        if r["site"] == "total":
            print(f"step {r['step']:>9}  {r['points']}: LC {r['mean']:.3f} (99% CI {r['ci_low']:.3f}-{r['ci_high']:.3f})")
    save_table(rows, args.out)
    png = args.plot or os.path.splitext(args.out)[0] + ".png"
    plot_series(rows, png, title=f"{args.model}: LC over checkpoints (r={args.radius:g}, P={args.dirs})")
    print(f"wrote {args.out} and {png}")
    return 0


def _forward_from(spec: str | None):
    """``--forward module:attr`` as the callable it names (``None`` when not given)."""
    if spec is None:
        return None
    fn = load_object(spec, "--forward")  # also the current folder, like --model
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
