"""``lcfast bench`` (and ``python -m lcfast.bench``): run workloads without pytest
and print the table."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..cli import run_parsed
from .baselines import BASELINES
from .report import format_report
from .runner import run_workloads
from .workloads import SIZE_ENV, SIZES, default_size, load_workloads

__all__ = ["add_parser", "main"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "bench", help="time LC backends against the baselines on a benchmark workload",
        description="Run benchmark workloads (lcfast/bench/workloads.toml, shipped with the package) without pytest: bare forward, "
                    "reference, torch.compile, the paper's method and every available lcfast backend, "
                    "checked against the reference, then timed; prints the same table as benchmarks/report.py.")
    p.add_argument("--workload", nargs="+", default=["mnist-mlp"],
                   help="workload name(s), or 'all' (default: mnist-mlp)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--backends", nargs="*", default=None,
                   help="lcfast backends to time besides the reference (default: all available here)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-paper", action="store_true", help="skip the paper-method baseline")
    p.add_argument("--size", choices=SIZES, default=None,
                   help=f"size column of the workload file (default: ${SIZE_ENV} or from the device)")
    p.add_argument("--n", type=int, default=None, help="override the number of points")
    p.add_argument("--rounds", type=int, default=None, help="override the timed rounds")
    p.add_argument("--check-only", action="store_true", help="check every method against the reference, no timing")
    p.add_argument("--config", default=None, help="workload file (default: the packaged lcfast/bench/workloads.toml)")
    p.add_argument("--json", default=None, help="also write the results as JSON (readable by benchmarks/report.py)")
    p.add_argument("--list", action="store_true", help="list the workloads at the chosen size and exit")
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or default_size(device)
    if args.list:
        for w in load_workloads(args.config, size).values():
            print(f"{w.name:16s} model={w.model:10s} N={w.n:<6d} chunk={w.chunk:<5d} data={w.data}"
                  + (f"  (skipped: {w.skip})" if w.skip else ""))
        return 0
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    baselines = tuple(b for b in BASELINES if not ((b == "torch.compile" and args.no_compile)
                                                   or (b == "paper" and args.no_paper)))
    data = run_workloads(args.workload, device, size=size, backends=args.backends, baselines=baselines,
                         rounds=args.rounds, n=args.n, config=args.config, check_only=args.check_only,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_report(data))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 1 if data["lcfast_failures"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcfast.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        argv = ["bench", *argv]
    return run_parsed(parser.parse_args(argv), "lcfast bench")
