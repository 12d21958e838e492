"""``lcfast grok`` and ``lcfast plot`` subcommands.

:func:`add_parsers` plugs them into the ``lcfast`` CLI; ``python -m lcfast.train.cli``
runs them standalone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parsers", "main"]


def _grok(args) -> int:
    from .experiments import preset, run_grok  # noqa: PLC0415

    try:
        cfg = preset(args.preset, quick=args.quick, steps=args.steps, init_scale=args.init_scale, seed=args.seed,
                     n_logs=args.n_logs, device=args.device, backend=args.backend, data_root=args.data_root,
                     radius=args.radius, n_dirs=args.n_dirs, optimizer=args.optimizer,
                     weight_decay=args.weight_decay, lr=args.lr, loss=args.loss,
                     train_threads=args.train_threads, threads=args.threads)
    except ValueError as e:
        print(f"lcfast grok: {e}", file=sys.stderr)
        return 2
    out = args.out or f"runs/grok-{args.preset}{'-quick' if args.quick else ''}" + \
        (f"-init{cfg.init_scale:g}" if cfg.init_scale != 1 else "")
    try:
        summ = run_grok(cfg, out, resume=args.resume, plot=not args.no_plot, progress=not args.no_progress)
    except FileNotFoundError as e:
        print(f"lcfast grok: {e}", file=sys.stderr)
        return 1
    fin = summ["final"] or {}
    print(f"log:  {summ['log']}")
    if summ["png"]:
        print(f"plot: {summ['png']}")
    print(f"wall {summ['wall_seconds']:.1f} s (training {summ['train_seconds']:.1f} s, "
          f"LC/accuracy/PGD logging {summ['log_seconds']:.1f} s)")
    if fin:
        print("final step", fin["step"], json.dumps({k: fin.get(k) for k in ("acc", "adv_acc")}))
        print("final LC", json.dumps({k: round(next(iter(v.values()))["mean"], 3) for k, v in fin["lc"].items()}))
    return 0


def _plot(args) -> int:
    from ..plot import plot_log  # noqa: PLC0415

    if not Path(args.log).is_file():
        print(f"lcfast plot: no such file: {args.log}", file=sys.stderr)
        return 2
    try:
        p = plot_log(args.log, args.output, radius=args.radius, title=args.title, sites=args.sites)
    except ValueError as e:
        print(f"lcfast plot: {e}", file=sys.stderr)
        return 1
    print(p)
    return 0


def add_parsers(subparsers) -> None:
    """Add ``grok`` and ``plot`` to an argparse ``subparsers`` object; each sets
    ``func`` (``args -> exit code``)."""
    g = subparsers.add_parser(
        "grok", help="train a grokking preset with LC tracking and plot it (the paper's Figure 1)",
        description="Train a preset with LC tracking; writes log.jsonl, ckpt.pt and a PNG into --out.")
    g.add_argument("preset", choices=["mnist-mlp", "modadd-transformer"])
    g.add_argument("--quick", action="store_true", help="a short variant (a few minutes on 2 CPU cores)")
    g.add_argument("--out", help="output folder (default runs/grok-<preset>[-quick])")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument("--steps", type=int, help="optimization steps")
    g.add_argument("--init-scale", type=float, help="multiply the initial parameters (paper Fig. 3: 8)")
    g.add_argument("--seed", type=int)
    g.add_argument("--n-logs", type=int, help="about this many log-spaced measurements")
    g.add_argument("--radius", type=float, help="LC neighbourhood radius r")
    g.add_argument("--n-dirs", type=int, help="LC directions P")
    g.add_argument("--optimizer", choices=["adamw", "adam"])
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--loss", choices=["ce", "mse"])
    g.add_argument("--device", help="e.g. cpu, cuda")
    g.add_argument("--threads", type=int, help="CPU threads for the whole run (default: torch's)")
    g.add_argument("--train-threads", type=int, help="CPU threads for the training steps only")
    g.add_argument("--backend", help="LC backend (default auto)")
    g.add_argument("--data-root", help="local MNIST folder (raw IDX files)")
    g.add_argument("--no-plot", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=_grok)

    p = subparsers.add_parser("plot", help="redraw a tracker log (JSONL) as a PNG",
                              description="Redraw a tracker log: accuracy/adversarial accuracy and LC vs step.")
    p.add_argument("log", help="the JSONL log")
    p.add_argument("-o", "--output", help="output image (default: LOG with .png)")
    p.add_argument("--radius", type=float, help="which radius to draw (default the first)")
    p.add_argument("--title")
    p.add_argument("--sites", action="store_true", help="add a per-site LC panel")
    p.set_defaults(func=_plot)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lcfast.train.cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parsers(sub)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
